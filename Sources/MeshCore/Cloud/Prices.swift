/// Money in millionths of a US dollar: integer arithmetic, so caps compare exactly and sums never
/// drift.
public typealias MicroUSD = Int64

extension MicroUSD {
    /// From dollars, rounded up (a cost is never under-counted).
    public static func usd(_ d: Double) -> MicroUSD { MicroUSD((d * 1_000_000).rounded(.up)) }
    /// As dollars.
    public var usd: Double { Double(self) / 1_000_000 }
}

/// Price of one model in USD per million tokens.
public struct ModelPrice: Sendable, Hashable, Codable {
    public var input: Double
    public var output: Double
    /// Price of prompt tokens served from the provider's cache (defaults to `input`).
    public var cachedInput: Double?
    /// Largest output the model can produce: the worst case when a request sets no limit.
    public var maxOutputTokens: Int?

    public init(input: Double, output: Double, cachedInput: Double? = nil, maxOutputTokens: Int? = nil) {
        self.input = input
        self.output = output
        self.cachedInput = cachedInput
        self.maxOutputTokens = maxOutputTokens
    }

    static func nanoPerToken(_ usdPerMillion: Double) -> Int64 { Int64((max(0, usdPerMillion) * 1000).rounded()) }

    /// Cost of a request with these token counts, rounded up to the micro-dollar.
    public func cost(promptTokens: Int, cachedPromptTokens: Int = 0, completionTokens: Int) -> MicroUSD {
        let prompt = Int64(max(0, promptTokens))
        let cached = max(0, min(Int64(cachedPromptTokens), prompt))
        // USD per 1M tokens = micro-USD per token; prices are taken to the thousandth of that
        // (nano-USD per token) and summed as integers, so no floating-point residue rounds a
        // cost up by a whole micro-dollar.
        let nano = (prompt - cached) * Self.nanoPerToken(input) + cached * Self.nanoPerToken(cachedInput ?? input)
            + Int64(max(0, completionTokens)) * Self.nanoPerToken(output)
        return (nano + 999) / 1000
    }
}

/// The price table (`Config/prices.yaml`, overridable in the main config): model → price, with an
/// optional `provider/model` entry taking precedence for one provider.
public struct PriceTable: Sendable, Equatable {
    public var models: [String: ModelPrice]
    /// Output tokens assumed for a request with no `max_tokens` when the model has no
    /// `max_output_tokens` in the table.
    public var defaultMaxOutputTokens: Int

    public init(models: [String: ModelPrice] = [:], defaultMaxOutputTokens: Int = 8192) {
        self.models = models
        self.defaultMaxOutputTokens = defaultMaxOutputTokens
    }

    /// The price for `model` at `provider`, if known. A model without a price is never sent to
    /// the cloud: its cost could not be capped.
    public func price(provider: String, model: String) -> ModelPrice? {
        models["\(provider)/\(model)"] ?? models[model]
    }

    /// Entries of `other` replace ours (main config over prices file).
    public func merging(_ other: PriceTable) -> PriceTable {
        PriceTable(models: models.merging(other.models) { _, new in new }, defaultMaxOutputTokens: other.defaultMaxOutputTokens)
    }

    /// Worst-case cost reserved at admission: the prompt's estimated tokens (never fewer than
    /// the real count, see ``estimatePromptTokens(utf8Bytes:messages:)``) at the full input price,
    /// plus `maxTokens` (or the model's maximum output) at the output price.
    public func worstCase(provider: String, model: String, estimatedPromptTokens: Int, maxTokens: Int?) -> MicroUSD? {
        guard let p = price(provider: provider, model: model) else { return nil }
        let out = maxTokens.map { max(0, $0) } ?? p.maxOutputTokens ?? defaultMaxOutputTokens
        return p.cost(promptTokens: estimatedPromptTokens, completionTokens: out)
    }

    /// An over-estimate of a prompt's tokens: one token per 2 UTF-8 bytes (BPE tokenizers average
    /// about 4 bytes a token on English, rarely below 2 even on code or CJK) plus 8 per message for
    /// the chat template.
    public static func estimatePromptTokens(utf8Bytes: Int, messages: Int) -> Int {
        (utf8Bytes + 1) / 2 + 8 * max(1, messages)
    }
}
