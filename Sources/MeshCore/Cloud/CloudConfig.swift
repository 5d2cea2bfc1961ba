/// One cloud provider of the gateway (`cloud.providers[]`).
public struct CloudProviderConfig: Sendable, Hashable, Codable {
    /// Name used in budgets, prices (`name/model`), logs and `meshctl`.
    public var name: String
    public var kind: ProviderKind
    /// API base URL; nil uses the provider's public endpoint (required for Azure: the deployment URL).
    public var baseURL: String?
    /// File holding the API key (mode 0600), or
    public var keyFile: String?
    /// environment variable holding it. Keys are never written in the YAML.
    public var keyEnv: String?
    /// PEM CA bundle to trust for this provider (self-hosted or test endpoints).
    public var caFile: String?
    /// Azure `api-version`.
    public var apiVersion: String?
    /// Bedrock: the AWS region (`us-east-1`), which names the endpoint and signs the requests.
    public var region: String?
    /// Bedrock: the AWS access key ID; the secret access key is the provider's key (`key_file` or `key_env`).
    public var accessKeyID: String?
    /// Bedrock: a file holding the session token of temporary credentials (mode 0600), or
    public var sessionTokenFile: String?
    /// the environment variable holding it.
    public var sessionTokenEnv: String?
    /// Models this provider serves; empty means the models priced for it (`name/model`) and the
    /// priced models of its family (`claude-*`, `gemini-*`, any other for OpenAI-compatible).
    public var models: [String] = []

    public init(name: String, kind: ProviderKind) {
        self.name = name
        self.kind = kind
    }

    /// Public endpoints when `base_url` is not set (Bedrock's, in its region).
    public var effectiveBaseURL: String? {
        baseURL ?? (kind == .bedrock ? region.map(BedrockDialect.baseURL(region:)) : kind.defaultBaseURL)
    }
}

/// `cloud:` section: when and where to escalate beyond the mesh.
public struct CloudConfig: Sendable, Hashable, Codable {
    /// Escalate when every mesh candidate's expected wait exceeds this.
    public var escalateAfterMs: Int = 2000
    public var providers: [CloudProviderConfig] = []
    /// Price table file (per model: input, output, cached input, USD per 1M tokens).
    public var pricesFile: String = "/etc/meshd/prices.yaml"
    /// Prices that override the file's, by model (or `provider/model`).
    public var prices: [String: ModelPrice] = [:]
    /// Model name → the name it may be served under elsewhere (`gpt-4o-mini: "llama3.1:8b"` lets a
    /// local model answer for a cloud one; the reverse entry lets the cloud stand in).
    public var aliases: [String: String] = [:]
    /// Models never sent to the cloud.
    public var localOnlyModels: [String] = []
    /// Names of client API keys whose requests never go to the cloud (see `http.api_keys`).
    public var localOnlyKeys: [String] = []
    public init() {}
}

/// A daily and a monthly cap in USD (nil = none).
public struct CapConfig: Sendable, Hashable, Codable {
    public var dailyUSD: Double?
    public var monthlyUSD: Double?
    public init(dailyUSD: Double? = nil, monthlyUSD: Double? = nil) {
        self.dailyUSD = dailyUSD
        self.monthlyUSD = monthlyUSD
    }

    /// As micro-dollar limits.
    public var limit: BudgetCaps.Limit { BudgetCaps.Limit(daily: dailyUSD.map(MicroUSD.usd), monthly: monthlyUSD.map(MicroUSD.usd)) }
}

/// `budget:` section: hard caps on cloud spend.
public struct BudgetConfig: Sendable, Hashable, Codable {
    public var dailyUSD: Double? = nil
    public var monthlyUSD: Double? = nil
    /// Fraction of a cap at which to alert.
    public var alertAt: Double = 0.8
    /// Zone of the day and month boundaries (IANA name, e.g. `Europe/Berlin`).
    public var timeZone: String = "UTC"
    /// URL to POST alerts to (JSON), optional.
    public var webhook: String? = nil
    public var perProvider: [String: CapConfig] = [:]
    /// By client key name.
    public var perKey: [String: CapConfig] = [:]
    public init() {}

    /// The caps for the budget core.
    public var caps: BudgetCaps {
        BudgetCaps(global: CapConfig(dailyUSD: dailyUSD, monthlyUSD: monthlyUSD).limit,
                   providers: perProvider.mapValues(\.limit), keys: perKey.mapValues(\.limit), alertAt: alertAt)
    }
}

/// What a gateway tells the mesh in its state: its providers (no keys, no URLs) and their health,
/// so any node can forward cloud-bound requests to it and explain the choice.
public struct GatewayAdvert: Sendable, Hashable, Codable {
    /// One provider as the mesh sees it.
    public struct Provider: Sendable, Hashable, Codable {
        public var name: String
        public var kind: ProviderKind
        /// Not in cooldown and not open-circuited.
        public var healthy: Bool
        /// Models it may be asked for (priced).
        public var models: [String]
        public init(name: String, kind: ProviderKind, healthy: Bool, models: [String]) {
            self.name = name
            self.kind = kind
            self.healthy = healthy
            self.models = models
        }
    }

    public var providers: [Provider]
    /// Whether some budget is left today and this month (global caps).
    public var budgetLeft: Bool

    public init(providers: [Provider], budgetLeft: Bool) {
        self.providers = providers
        self.budgetLeft = budgetLeft
    }
}
