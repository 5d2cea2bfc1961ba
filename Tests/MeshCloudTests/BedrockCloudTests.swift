import Foundation
import MeshCloud
import MeshCore
import MeshHTTPClient
import Testing

/// Bedrock against the fake cloud, which recomputes every SigV4 signature in Python from the
/// request as it arrived (see `Tests/cloud/fake_bedrock.py`).
@Suite(.timeLimit(.minutes(2)))
struct BedrockCloudTests {
    /// The fake's error, as the client reports it.
    func httpError(_ client: CloudClient, _ provider: ProviderSettings, model: String = "amazon.nova-lite-v1:0", stream: Bool = false) async -> (Int, String)? {
        let error = await cloudError {
            let req = try engineRequest(.bedrock, model: model, stream: stream)
            if stream { _ = try await client.stream(req, to: provider, model: model, id: "i") } else { _ = try await client.send(req, to: provider, model: model, id: "i") }
        }
        guard case .http(let status, let message)? = error else {
            Issue.record("expected an HTTP error, got \(String(describing: error))")
            return nil
        }
        return (status, message)
    }

    @Test func signatureChecksAndErrors() async throws {
        try await withCloud { cloud, client, log, clock in
            // Model IDs with `:` and inference-profile ARNs with `/` are encoded in the path, and
            // encoded once more in the signed canonical request: the fake agrees.
            for model in ["amazon.nova-lite-v1:0", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0"] {
                let r = try await client.send(try engineRequest(.bedrock, model: model, stream: false), to: cloud.provider(.bedrock), model: model, id: "i")
                #expect(r.body["choices"]?[0]?["message"]?["content"] == "tok0 tok1 tok2", "\(model)")
            }
            let stats = try await cloud.stats(client.http)
            #expect(stats["by_model"]?["arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0"]?.intValue == 1)
            #expect(stats["by_path"]?["/model/amazon.nova-lite-v1%3A0/converse"]?.intValue == 1)
            // Another region or access key ID than the account's.
            let wrongRegion = cloud.provider(.bedrock, aws: AWSAccount(region: "eu-west-1", accessKeyID: fakeAccessKeyID))
            let region = await httpError(client, wrongRegion)
            #expect(region?.0 == 403 && region?.1.contains("InvalidSignatureException: Credential should be scoped to a valid region, not 'eu-west-1'") == true)
            let wrongID = cloud.provider(.bedrock, aws: AWSAccount(region: fakeRegion, accessKeyID: "AKIDSOMEONEELSE00000"))
            let id = await httpError(client, wrongID, stream: true)
            #expect(id?.0 == 403 && id?.1 == "UnrecognizedClientException: The security token included in the request is invalid.")
            // Bedrock's throttling and unavailability (no retry-after).
            #expect(await cloudError {
                _ = try await client.send(try engineRequest(.bedrock, model: "m-fail-429", stream: false), to: cloud.provider(.bedrock), model: "m", id: "i")
            } == .rateLimited(retryAfter: nil))
            let unavailable = await httpError(client, cloud.provider(.bedrock), model: "m-fail-529", stream: true)
            #expect(unavailable?.0 == 503 && unavailable?.1.hasPrefix("ServiceUnavailableException: ") == true)
            // Last, as the clock only goes forward: a signature is dated by the client's clock; ten minutes off, AWS refuses it.
            clock.advance(seconds: 600)
            let skewed = await httpError(client, cloud.provider(.bedrock))
            #expect(skewed?.0 == 403 && skewed?.1.hasPrefix("InvalidSignatureException: Signature expired: ") == true)
            #expect(try await cloud.stats(client.http)["unauthorized"]?.intValue == 3)
            #expect(!log.text.contains(goodKey))
        }
    }

    /// Temporary credentials: the session token is sent and signed; without it the fake refuses.
    @Test func sessionToken() async throws {
        let token = "FwoGZXIvYXdzEXAMPLE-session-token//+="
        try await withCloud(arguments: ["--aws-session-token", token]) { cloud, client, log, _ in
            let without = await httpError(client, cloud.provider(.bedrock))
            #expect(without?.0 == 403 && without?.1.contains("security token included in the request is invalid") == true)
            let aws = AWSAccount(region: fakeRegion, accessKeyID: fakeAccessKeyID, sessionToken: ProviderSecret(key: token))
            let stream = try await client.stream(try engineRequest(.bedrock, model: "amazon.nova-lite-v1:0", stream: true), to: cloud.provider(.bedrock, aws: aws),
                                                 model: "nova", id: "i")
            let (bytes, error) = await drain(stream)
            #expect(error == nil && parseOpenAISSE(bytes).content == "tok0 tok1 tok2" && stream.completed)
            #expect(stream.usage == CloudUsage(promptTokens: 5, completionTokens: 3))
            #expect(!log.text.contains(token))
        }
    }
}
