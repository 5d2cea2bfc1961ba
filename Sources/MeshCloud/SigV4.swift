import Crypto
import MeshCore

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`) in the `Authorization` header, for one service in
/// one region. Pure: the time is given, nothing is read or sent. The secret key and session token
/// stay in ``ProviderSecret``s, so no textual form of a signer shows them.
public struct SigV4Signer: Sendable, Equatable {
    public var accessKeyID: String
    public var secretAccessKey: ProviderSecret
    /// The session token of temporary credentials, sent (and signed) as `X-Amz-Security-Token`.
    public var sessionToken: ProviderSecret?
    public var region: String
    /// The signing name of the service (`bedrock` for Bedrock Runtime).
    public var service: String

    public init(accessKeyID: String, secretAccessKey: ProviderSecret, sessionToken: ProviderSecret? = nil, region: String, service: String) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.region = region
        self.service = service
    }

    /// The intermediate results of a signature, for tests and diagnostics (no secret in them).
    public struct Signature: Sendable, Equatable {
        public var canonicalRequest: String
        public var stringToSign: String
        /// `host;x-amz-date;...`
        public var signedHeaders: String
        /// The `Authorization` header's value.
        public var authorization: String
    }

    /// `headers` with what signs a request to `url` added: `Host` (as curl would send it, so the
    /// signed value is the sent one), `X-Amz-Date`, `X-Amz-Content-Sha256`, `X-Amz-Security-Token`
    /// (temporary credentials) and `Authorization`. Every header of the result but `Authorization`
    /// is signed.
    public func sign(method: String, url: String, headers: [(String, String)], body: [UInt8], nowNanos: UInt64) -> [(String, String)] {
        let (host, path, query) = Self.split(url: url)
        let payloadHash = Self.hex(SHA256.hash(data: body))
        var h = headers.filter { !Self.replaced.contains($0.0.lowercased()) }
        h += [("Host", host), ("X-Amz-Date", Self.amzDate(nanos: nowNanos)), ("X-Amz-Content-Sha256", payloadHash)]
        if let sessionToken { h.append(("X-Amz-Security-Token", sessionToken.value)) }
        let s = signature(method: method, path: path, query: query, headers: h, payloadHash: payloadHash)
        return h + [("Authorization", s.authorization)]
    }

    /// Headers ``sign(method:url:headers:body:nowNanos:)`` sets itself.
    static let replaced: Set<String> = ["host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"]

    /// The signature of a request whose `headers` (all signed) already carry `Host` and
    /// `X-Amz-Date`. `path` is the request path as sent (already percent-encoded); as every service
    /// but S3 expects, it is normalised and encoded once more. `query` is the raw query string.
    public func signature(method: String, path: String, query: String, headers: [(String, String)], payloadHash: String) -> Signature {
        let amzDate = headers.first { $0.0.lowercased() == "x-amz-date" }?.1 ?? ""
        let scope = "\(amzDate.prefix(8))/\(region)/\(service)/aws4_request"
        let (canonicalHeaders, signedHeaders) = Self.canonicalHeaders(headers)
        let canonicalRequest = [method.uppercased(), Self.canonicalURI(path), Self.canonicalQuery(query), canonicalHeaders, signedHeaders,
                                payloadHash].joined(separator: "\n")
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, Self.hex(SHA256.hash(data: Array(canonicalRequest.utf8)))].joined(separator: "\n")
        let key = Self.signingKey(secret: secretAccessKey, date: String(amzDate.prefix(8)), region: region, service: service)
        let signature = Self.hex(Self.hmac(key, stringToSign))
        return Signature(canonicalRequest: canonicalRequest, stringToSign: stringToSign, signedHeaders: signedHeaders,
                         authorization: "AWS4-HMAC-SHA256 Credential=\(accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)")
    }

    /// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
    static func signingKey(secret: ProviderSecret, date: String, region: String, service: String) -> [UInt8] {
        [date, region, service, "aws4_request"].reduce(Array(("AWS4" + secret.value).utf8)) { hmac($0, $1) }
    }

    static func hmac(_ key: [UInt8], _ message: String) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(message.utf8), using: SymmetricKey(data: key)))
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xF)]] }, as: UTF8.self)
    }

    /// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
    public static func amzDate(nanos: UInt64) -> String {
        // 2015-08-30T12:36:00.000000000Z → 20150830T123600Z
        String(ISO8601.format(nanos: nanos).prefix(19).filter { $0 != "-" && $0 != ":" }) + "Z"
    }

    /// The path without empty and `.` segments, `..` resolved, each segment percent-encoded; a
    /// trailing slash is kept.
    static func canonicalURI(_ path: String) -> String {
        var segments: [Substring] = []
        for s in path.split(separator: "/", omittingEmptySubsequences: true) {
            if s == "." { continue }
            if s == ".." { _ = segments.popLast(); continue }
            segments.append(s)
        }
        let encoded = segments.map { URIEncoding.encode($0) }.joined(separator: "/")
        let trailing = path.hasSuffix("/") && !segments.isEmpty ? "/" : ""
        return "/" + encoded + trailing
    }

    /// Parameters decoded, re-encoded, sorted by name then value.
    static func canonicalQuery(_ query: String) -> String {
        query.split(separator: "&", omittingEmptySubsequences: true).map { pair -> (String, String) in
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (URIEncoding.encode(URIEncoding.decode(kv[0])), URIEncoding.encode(URIEncoding.decode(kv.count > 1 ? kv[1] : "")))
        }
        .sorted { ($0.0, $0.1) < ($1.0, $1.1) }
        .map { "\($0.0)=\($0.1)" }
        .joined(separator: "&")
    }

    /// Lower-case names, sorted, a repeated header's values joined with commas in order, each value
    /// trimmed with inner runs of spaces collapsed; and the signed-headers list.
    static func canonicalHeaders(_ headers: [(String, String)]) -> (String, String) {
        var values: [String: [String]] = [:]
        for (name, value) in headers {
            let collapsed = value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            values[name.lowercased(), default: []].append(collapsed)
        }
        let names = values.keys.sorted()
        let canonical = names.map { "\($0):\(values[$0]!.joined(separator: ","))\n" }.joined()
        return (canonical, names.joined(separator: ";"))
    }

    /// `host[:port]` (the port only when not the scheme's default), path (`/` when none) and query of `url`.
    static func split(url: String) -> (host: String, path: String, query: String) {
        var rest = Substring(url)
        var defaultPort = ""
        if let r = rest.range(of: "://") {
            defaultPort = rest[..<r.lowerBound].lowercased() == "http" ? ":80" : ":443"
            rest = rest[r.upperBound...]
        }
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        var host = rest[..<authorityEnd]
        if let at = host.lastIndex(of: "@") { host = host[host.index(after: at)...] }
        if host.hasSuffix(defaultPort) { host = host.dropLast(defaultPort.count) }
        rest = rest[authorityEnd...]
        let q = rest.firstIndex(of: "?")
        let path = q.map { rest[..<$0] } ?? rest
        let query = q.map { rest[rest.index(after: $0)...] } ?? ""
        return (host.lowercased(), path.isEmpty ? "/" : String(path), String(query))
    }
}
