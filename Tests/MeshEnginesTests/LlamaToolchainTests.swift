import Foundation
import MeshCore
import Testing
@testable import MeshEngines

@Suite(.timeLimit(.minutes(1))) struct LlamaToolchainTests {
    @Test func detectsTheRealBuildAndItsRPCServer() async throws {
        let (binary, _) = try llamaFixtures()
        let advert = try #require(await LlamaToolchain.detect(llamaServer: binary))
        // tools/build-llama.sh builds llama-server and ggml-rpc-server from one tree.
        #expect(advert.rpcServer)
        #expect(advert.build.hasPrefix("b") && advert.build.contains("-"), "\(advert.build)")
        #expect(LlamaToolchain.rpcServerBinary(nextTo: binary) == URL(fileURLWithPath: binary).deletingLastPathComponent().path + "/ggml-rpc-server")
    }

    @Test func findsTheOlderRPCServerNameAndRefusesNonLlamaBinaries() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-llama-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func script(_ name: String, _ body: String) throws -> String {
            let p = dir.appendingPathComponent(name).path
            try ("#!/bin/sh\n" + body + "\n").write(toFile: p, atomically: true, encoding: .utf8)
            chmod(p, 0o755)
            return p
        }
        let server = try script("llama-server", "echo 'version: 4567 (abc1234)' >&2")
        #expect(await LlamaToolchain.detect(llamaServer: server) == LlamaAdvert(build: "b4567-abc1234", rpcServer: false)
                || LlamaToolchain.rpcServerBinary(nextTo: nil) != nil)  // one on PATH would count
        _ = try script("rpc-server", "exit 0")
        #expect(LlamaToolchain.rpcServerBinary(nextTo: server) == dir.path + "/rpc-server")
        #expect(await LlamaToolchain.detect(llamaServer: server) == LlamaAdvert(build: "b4567-abc1234", rpcServer: true))
        let other = try script("not-llama", "echo hello")
        #expect(await LlamaToolchain.detect(llamaServer: other) == nil)
        let hangs = try script("hangs", "sleep 30")
        let t0 = ContinuousClock.now
        #expect(await LlamaToolchain.detect(llamaServer: hangs, timeout: .milliseconds(300)) == nil)
        // Long before the script's 30 s (a CI run under the parallel suite took 5.1 s to spawn,
        // time out and reap it): the bound catches a detect that waits for the child.
        #expect(ContinuousClock.now - t0 < .seconds(15))
    }
}

@Suite struct GGUFFileTests {
    @Test func readsTheTinyModelsShape() throws {
        let (_, model) = try llamaFixtures()
        let (m, size) = try GGUFFile.read(path: model)
        // tools/make-tiny-model.sh: llama, 4 layers, d=64, 4 heads.
        #expect(m.architecture == "llama")
        #expect(m.blockCount == 4 && m.embeddingLength == 64 && m.headCount == 4)
        #expect(m.contextLength ?? 0 > 0)
        // 2 bytes x 4 layers x 4 KV heads x (16 + 16).
        #expect(m.kvBytesPerToken == 1024)
        #expect(size > 1 << 20)
        #expect((m.arrayLengths["tokenizer.ggml.tokens"] ?? 0) > 1000)
        // A first read of 4 KiB ends inside the vocabulary: the reader reads on and gets the same.
        #expect(try GGUFFile.read(path: model, firstRead: 4096).metadata == m)
        // Within a limit: a header longer than it is an error, not an endless read.
        do { _ = try GGUFFile.read(path: model, firstRead: 4096, maxHeaderBytes: 16_384); Issue.record("parsed") } catch {
            #expect(error.description.contains("the header ends inside"))
        }
    }

    @Test func notAGGUFFileIsNamed() throws {
        let p = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-not-gguf-\(getpid())").path
        try Array("hello, not a model".utf8).withUnsafeBufferPointer { try Data($0).write(to: URL(fileURLWithPath: p)) }
        defer { try? FileManager.default.removeItem(atPath: p) }
        do { _ = try GGUFFile.read(path: p); Issue.record("parsed") } catch { #expect(error.description.contains(p) && error.description.contains("GGUF magic")) }
        do { _ = try GGUFFile.read(path: p + ".missing"); Issue.record("parsed") } catch { #expect(error.description.contains("cannot open")) }
    }
}
