extension ProviderKind {
    /// The public API's base URL, used when a provider sets none; nil for Azure, whose base URL is
    /// the deployment URL (`https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT`), and
    /// for Bedrock, whose endpoint is regional (``BedrockDialect/baseURL(region:)``).
    public var defaultBaseURL: String? {
        switch self {
        case .openai: return "https://api.openai.com/v1"
        case .azure, .bedrock: return nil
        case .anthropic: return "https://api.anthropic.com/v1"
        case .gemini: return "https://generativelanguage.googleapis.com/v1beta"
        case .groq: return "https://api.groq.com/openai/v1"
        }
    }

    /// The Azure OpenAI `api-version` used when a provider sets none.
    public static let defaultAzureAPIVersion = "2024-10-21"

    /// The Anthropic API version sent as `anthropic-version`.
    public static let anthropicVersion = "2023-06-01"
}
