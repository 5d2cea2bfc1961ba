/// How far providers bill more prompt tokens than meshd estimates, learned from their answers
/// (issue 17): image URLs, tool definitions and a provider's own system prompt are billed but not
/// in meshd's byte-based estimate. Per provider and model, the worst ratio (billed ÷ estimated)
/// and the worst excess (billed − estimated) seen; a reservation counts the prompt as
/// `estimate × ratio + excess`, which covers every answer seen so far, whether the overshoot
/// scales with the prompt or is a fixed amount. Pure; the caller serialises access.
public struct PromptOvershoot: Sendable, Equatable {
    public struct Seen: Sendable, Equatable {
        /// Worst billed ÷ estimated (at least 1).
        public var ratio: Double
        /// Worst billed − estimated, tokens (at least 0).
        public var excess: Int
        public var answers: Int

        /// Prompt tokens to reserve for an estimate of `estimated`.
        public func reserve(_ estimated: Int) -> Int {
            Int((Double(estimated) * ratio).rounded(.up)) + excess
        }
    }

    private var pairs: [String: Seen] = [:]

    public init() {}

    static func key(_ provider: String, _ model: String) -> String { provider + "\u{0}" + model }

    /// What `provider` billed (`billed` prompt tokens) for a prompt meshd estimated at `estimated`.
    public mutating func learn(provider: String, model: String, estimated: Int, billed: Int) {
        guard estimated > 0, billed >= 0 else { return }
        let ratio = max(1, Double(billed) / Double(estimated))
        let excess = max(0, billed - estimated)
        let k = Self.key(provider, model)
        if var s = pairs[k] {
            s.ratio = max(s.ratio, ratio)
            s.excess = max(s.excess, excess)
            s.answers += 1
            pairs[k] = s
        } else {
            pairs[k] = Seen(ratio: ratio, excess: excess, answers: 1)
        }
    }

    /// Everything learned: (provider, model, what was seen), sorted.
    public var all: [(provider: String, model: String, seen: Seen)] {
        pairs.map { k, v in
            let parts = k.split(separator: "\u{0}", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "", v)
        }.sorted { ($0.provider, $0.model) < ($1.provider, $1.model) }
    }

    /// What was learned of `provider`'s `model`; nil before its first answer.
    public func seen(provider: String, model: String) -> Seen? { pairs[Self.key(provider, model)] }

    /// The worst overshoot seen of any provider and model (nil: no answer yet).
    public var worstAnywhere: Seen? {
        guard !pairs.isEmpty else { return nil }
        return Seen(ratio: pairs.values.map(\.ratio).max() ?? 1, excess: pairs.values.map(\.excess).max() ?? 0,
                    answers: pairs.values.reduce(0) { $0 + $1.answers })
    }

    /// How to admit a request to `provider`'s `model`: the prompt tokens to reserve, or, for a
    /// model no answer has taught anything yet and no other either, `nil`: then one request goes
    /// alone (a probe) and the others wait for its answer, since no reservation could be known
    /// to cover them. A model not yet answered, when others were, reserves at the worst seen.
    public func promptTokensToReserve(provider: String, model: String, estimated: Int) -> Int? {
        if let s = seen(provider: provider, model: model) { return s.reserve(estimated) }
        return worstAnywhere?.reserve(estimated)
    }
}
