import MeshCloud
import MeshCore
import MeshHTTPClient
import Testing

/// AWS's SigV4 test suite (`aws-sig-v4-test-suite`): service `service`, region `us-east-1`,
/// 2015-08-30T12:36:00Z, the documented example credentials.
@Suite struct SigV4Tests {
    static let signer = SigV4Signer(accessKeyID: "AKIDEXAMPLE", secretAccessKey: ProviderSecret(key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                                    region: "us-east-1", service: "service")
    static let emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    static let date = ("X-Amz-Date", "20150830T123600Z")
    static let host = ("Host", "example.amazonaws.com")
    static let scope = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"

    func authorization(_ method: String, _ path: String, query: String = "", headers: [(String, String)] = [host, date],
                       payloadHash: String = emptyHash) -> SigV4Signer.Signature {
        Self.signer.signature(method: method, path: path, query: query, headers: headers, payloadHash: payloadHash)
    }

    @Test(arguments: [
        ("get-vanilla", "GET", "/", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("post-vanilla", "POST", "/", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        ("get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        ("get-vanilla-query-order-value", "GET", "/", "Param1=value2&Param1=value1", "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"),
        ("get-vanilla-utf8-query", "GET", "/", "ሴ=bar", "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
        ("get-unreserved", "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "",
         "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
        ("get-space", "GET", "/example space/", "", "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
        ("get-slashes", "GET", "//example//", "", "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"),
        ("get-relative-relative", "GET", "/example1/example2/../..", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-slash-pointless-dot", "GET", "/./example", "", "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5"),
    ])
    func suiteVector(name: String, method: String, path: String, query: String, signature: String) {
        let s = authorization(method, path, query: query)
        #expect(s.authorization == "AWS4-HMAC-SHA256 Credential=\(Self.scope), SignedHeaders=host;x-amz-date, Signature=\(signature)", "\(name)")
    }

    @Test func canonicalRequestAndStringToSign() {
        let s = authorization("GET", "/", query: "Param2=value2&Param1=value1")
        #expect(s.canonicalRequest == "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(Self.emptyHash)")
        #expect(s.stringToSign == "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0")
        #expect(authorization("GET", "/ሴ").canonicalRequest.split(separator: "\n")[1] == "/%E1%88%B4")
    }

    @Test func headerValuesAreTrimmedAndRepeatedOnesJoined() {
        let trim = authorization("GET", "/", headers: [Self.host, ("My-Header1", " value1"), ("My-Header2", " \"a   b   c\""), Self.date])
        #expect(trim.canonicalRequest.contains("my-header1:value1\nmy-header2:\"a b c\"\n"))
        #expect(trim.authorization.hasSuffix("SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"))
        let dup = authorization("GET", "/", headers: [Self.host, ("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1"), Self.date])
        #expect(dup.authorization.hasSuffix("Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"))
    }

    /// A body (its hash) and a signed session token.
    @Test func bodyAndSessionToken() {
        // post-x-www-form-urlencoded: the body `Param1=value1`.
        let form = authorization("POST", "/", headers: [("Content-Type", "application/x-www-form-urlencoded"), Self.host, Self.date],
                                 payloadHash: "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")
        #expect(form.stringToSign.hasSuffix("\n42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281"))
        #expect(form.authorization.hasSuffix("SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"))
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
        let sts = authorization("POST", "/", headers: [Self.host, Self.date, ("X-Amz-Security-Token", token)])
        #expect(sts.authorization.hasSuffix("SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"))
    }

    /// `sign` adds Host, date, payload hash and token itself, and signs them.
    @Test func signAddsWhatItSigns() throws {
        var signer = Self.signer
        signer.sessionToken = ProviderSecret(key: "session-TOKEN-1")
        let nanos: UInt64 = 1_440_938_160 * 1_000_000_000 + 999_999_999
        #expect(SigV4Signer.amzDate(nanos: nanos) == "20150830T123600Z")
        let h = signer.sign(method: "POST", url: "https://user@Example.amazonaws.com:443/a%3Ab?x=1", headers: [("Content-Type", "application/json"), ("host", "stale")],
                            body: Array("{}".utf8), nowNanos: nanos)
        func header(_ n: String) -> [String] { h.filter { $0.0.lowercased() == n }.map(\.1) }
        #expect(header("host") == ["example.amazonaws.com"] && header("x-amz-date") == ["20150830T123600Z"])
        #expect(header("x-amz-content-sha256") == ["44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"])
        #expect(header("x-amz-security-token") == ["session-TOKEN-1"])
        let auth = try #require(header("authorization").first)
        #expect(auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token"))
        // The same as signing those headers by hand; the path is encoded once more (`%3A` → `%253A`).
        let again = signer.signature(method: "POST", path: "/a%3Ab", query: "x=1", headers: h.filter { $0.0 != "Authorization" },
                                     payloadHash: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
        #expect(again.authorization == auth && again.canonicalRequest.hasPrefix("POST\n/a%253Ab\nx=1\n"))
        // A port other than the scheme's default is part of the host.
        let local = signer.sign(method: "POST", url: "https://127.0.0.1:8443/model/m/converse", headers: [], body: [], nowNanos: nanos)
        #expect(local.first { $0.0 == "Host" }?.1 == "127.0.0.1:8443")
        #expect(!h.contains { $0.1.contains("EXAMPLEKEY") })
    }

    @Test func bedrockRequestIsSigned() throws {
        let aws = AWSAccount(region: "eu-central-1", accessKeyID: "AKIAIOSFODNN7EXAMPLE", sessionToken: ProviderSecret(key: "tok-123456"))
        let p = ProviderSettings(name: "bedrock", kind: .bedrock, secret: ProviderSecret(key: "SECRET-access-KEY-0987"), aws: aws, extraHeaders: [("X-Extra", "1")])
        #expect(p.baseURL == "https://bedrock-runtime.eu-central-1.amazonaws.com")
        let r = p.httpRequest(for: try engineRequest(.bedrock, model: "anthropic.claude-3-haiku-20240307-v1:0", stream: true), nowNanos: 1_440_938_160_000_000_000)
        #expect(r.url == "https://bedrock-runtime.eu-central-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream")
        func header(_ n: String) -> String? { r.headers.first { $0.0.lowercased() == n }?.1 }
        #expect(header("accept") == "application/vnd.amazon.eventstream" && header("host") == "bedrock-runtime.eu-central-1.amazonaws.com")
        #expect(header("x-amz-security-token") == "tok-123456" && header("x-extra") == "1")
        let auth = try #require(header("authorization"))
        #expect(auth.hasPrefix("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20150830/eu-central-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-extra, Signature="))
        // Nothing carries the secret key; the signer's textual forms hide key and token.
        #expect(!r.headers.contains { $0.1.contains("SECRET-access") })
        let signer = try #require(p.signer)
        for form in ["\(signer)", String(reflecting: signer), "\(p)"] { #expect(!form.contains("SECRET-access") && !form.contains("tok-123456")) }
        // Other kinds are not signed.
        #expect(ProviderSettings(name: "oa", kind: .openai, secret: ProviderSecret(key: "k")).signer == nil)
    }
}
