/// A client API key from `http.api_keys`: `NAME:SECRET` names it (for `budget.per_key` and
/// `cloud.local_only_keys`); a bare entry is named `key1`, `key2`, ... by position.
public struct ClientKey: Sendable, Equatable {
    public var name: String
    public var secret: String

    /// Names: 1 to 64 of `A-Z a-z 0-9 _ . -`.
    public static func isName(_ s: Substring) -> Bool {
        (1...64).contains(s.count) && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "." || $0 == "-") }
    }

    /// The keys of `entries`, in order.
    public static func parse(_ entries: [String]) -> [ClientKey] {
        entries.enumerated().map { i, e in
            if let colon = e.firstIndex(of: ":"), isName(e[..<colon]), colon < e.index(before: e.endIndex) {
                return ClientKey(name: String(e[..<colon]), secret: String(e[e.index(after: colon)...]))
            }
            return ClientKey(name: "key\(i + 1)", secret: e)
        }
    }
}
