import Foundation
import MeshCore
@testable import MeshConfigLoader
import Testing
import Yams

@Suite struct LoadingTests {
    @Test func defaultsServeWhenNoFileAtDefaultPath() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let loaded = try ConfigLoader.load(path: nil, defaultPath: dir.appendingPathComponent("meshd.yaml").path,
                                           environment: [:], hostName: "alpha")
        #expect(loaded.sourceFile == nil)
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.config == MeshdConfig(nodeName: "alpha"))
        #expect(loaded.config.http.listen == HostPort(host: "127.0.0.1", port: 11435))
        #expect(loaded.config.engines == nil)
        #expect(loaded.config.nodeName == "alpha")
    }

    @Test func emptyHostNameFallsBack() throws {
        let loaded = try ConfigLoader.load(yaml: "", environment: [:], hostName: "  ")
        #expect(loaded.config.nodeName == "meshd")
    }

    @Test func explicitMissingPathIsAnError() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("nope.yaml").path
        let error = #expect(throws: ConfigLoadError.self) {
            try ConfigLoader.load(path: path, environment: [:], hostName: testHost)
        }
        #expect(error?.issues.count == 1)
        #expect(error?.issues.first?.source == path)
        #expect(error?.issues.first?.key == "--config")
        #expect(error?.issues.first?.reason == "no such file")
    }

    @Test func directoryAsConfigIsAnError() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let error = #expect(throws: ConfigLoadError.self) {
            try ConfigLoader.load(path: dir.path, environment: [:], hostName: testHost)
        }
        #expect(error?.issues.first?.reason.contains("directory") == true)
    }

    @Test func fileAtDefaultPathIsRead() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("meshd.yaml").path
        try "node: { name: beta }\nhttp: { threads: 4 }\n".write(toFile: path, atomically: true, encoding: .utf8)
        let loaded = try ConfigLoader.load(path: nil, defaultPath: path, environment: [:], hostName: testHost)
        #expect(loaded.sourceFile == path)
        #expect(loaded.config.nodeName == "beta")
        #expect(loaded.config.http.threads == 4)
    }

    @Test func emptyFileMeansDefaults() throws {
        let loaded = try mustLoad("# nothing here\n")
        #expect(loaded.config == defaults)
        #expect(loaded.sourceFile == "test.yaml")
    }

    @Test func fullExampleFromTheIssueLoads() throws {
        let loaded = try mustLoad("""
            node: { name: alpha }
            state_dir: /var/lib/meshd
            http: { listen: "127.0.0.1:11435", api_keys: [], auth: keys, max_body_bytes: 8388608, threads: 1, shutdown_grace_seconds: 30 }
            admin: { socket: /run/meshd/meshd.sock }
            engines:
              - { kind: ollama, url: "http://127.0.0.1:11434" }
              - { kind: openai, url: "http://127.0.0.1:8080", api_key_file: /etc/meshd/vllm.key }
              - { kind: llama.cpp, model: /var/lib/meshd/models/x.gguf, args: ["-c", "4096"], alias: x, binary: /usr/local/bin/llama-server }
            timeouts: { connect_ms: 2000, first_byte_ms: 120000, between_chunks_ms: 60000 }
            engine_poll: { interval_ms: 1000 }
            logging: { level: info }
            mesh: { listen: "0.0.0.0:11436", peers: [], secret_file: /etc/meshd/mesh.secret, heartbeat_ms: 1000, dead_after_missed: 3 }
            discovery: { mdns: true }
            """)
        #expect(loaded.warnings.isEmpty)
        var expected = MeshdConfig(nodeName: "alpha")
        expected.engines = [
            EngineConfig(kind: .ollama, url: "http://127.0.0.1:11434"),
            EngineConfig(kind: .openai, url: "http://127.0.0.1:8080", apiKeyFile: "/etc/meshd/vllm.key"),
            EngineConfig(kind: .llamaCpp, model: "/var/lib/meshd/models/x.gguf", alias: "x", args: ["-c", "4096"],
                         binary: "/usr/local/bin/llama-server"),
        ]
        #expect(loaded.config == expected)
    }

    @Test func emptyEngineListMeansNoEngines() throws {
        #expect(try mustLoad("engines: []").config.engines == [])
        #expect(try mustLoad("engines:\n# - { kind: ollama }\n").config.engines == nil)
    }

    @Test func managedArgsMayBeNumbers() throws {
        let loaded = try mustLoad("engines: [{ kind: llama.cpp, model: /m/x.gguf, args: [-c, 4096, --flash-attn] }]")
        #expect(loaded.config.engines?.first?.args == ["-c", "4096", "--flash-attn"])
    }

    // MARK: the documented file

    @Test func documentedFileLoadsToTheDefaults() throws {
        let loaded = try ConfigLoader.load(path: documentedConfigPath, environment: [:], hostName: testHost)
        #expect(loaded.warnings.isEmpty, "\(loaded.warnings)")
        #expect(loaded.sourceFile == documentedConfigPath)
        #expect(loaded.config == defaults)
    }

    @Test func documentedFileCoversEveryKeyAndEnvironmentName() throws {
        let text = try String(contentsOfFile: documentedConfigPath, encoding: .utf8)
        let root = try #require(try Yams.compose(yaml: text))
        for field in Schema.fields {
            #expect(text.contains(field.environmentName), "\(field.environmentName) is not documented")
            // node.name defaults to the host name, so it can only be shown commented out.
            if field.dotted == "node.name" {
                #expect(text.contains("# name:"))
                continue
            }
            // Optional keys that are unset by default are shown commented out.
            if field.read(defaults) == nil {
                #expect(text.contains("# \(field.path.last!):"), "\(field.dotted) is not documented")
                continue
            }
            var node: Node? = root
            for component in field.path { node = node?.mapping?[component] }
            #expect(node != nil, "\(field.dotted) is not set in Config/meshd.yaml")
        }
        for field in Schema.engineFields {
            #expect(text.contains("\(field.name):"), "engine key \(field.name) is not documented")
        }
        for sk in Schema.structured {
            var node: Node? = root
            for component in sk.path { node = node?.mapping?[component] }
            #expect(node != nil, "\(sk.dotted) is not set in Config/meshd.yaml")
            for key in sk.keys { #expect(text.contains("\(key.name):"), "\(sk.dotted) key \(key.name) is not documented") }
        }
    }

    @Test func documentedEngineExampleLoads() throws {
        let text = try String(contentsOfFile: documentedConfigPath, encoding: .utf8)
        var block: [String] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# engines:") || (!block.isEmpty && line.hasPrefix("#   ")) {
                block.append(String(line.dropFirst(2)))
            } else if !block.isEmpty {
                break
            }
        }
        #expect(block.count > 3)
        let loaded = try mustLoad(block.joined(separator: "\n"))
        #expect(loaded.warnings.isEmpty)
        let engines = try #require(loaded.config.engines)
        #expect(engines.map(\.kind) == [.ollama, .openai, .llamaCpp])
        #expect(engines[1].apiKeyFile == "/etc/meshd/vllm.key")
        #expect(engines[2].managedModelName == "x")
        #expect(engines[2].args == ["-c", "4096"])
    }

    // MARK: syntax and lines

    @Test func malformedYAMLNamesFileAndLine() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("broken.yaml").path
        try "http:\n  listen: \"127.0.0.1:11435\n  threads: 2\n".write(toFile: path, atomically: true, encoding: .utf8)
        let error = #expect(throws: ConfigLoadError.self) {
            try ConfigLoader.load(path: path, environment: [:], hostName: testHost)
        }
        let issue = try #require(error?.issues.first)
        #expect(issue.source == path)
        #expect(issue.line != nil)
        #expect(issue.reason.contains("YAML syntax error"))
        #expect(error?.description.hasPrefix("\(path):") == true)
    }

    @Test func badIndentationReportsLine() {
        let issue = expectSingleError("http:\n  listen: \"127.0.0.1:1\"\n threads: 2\n", key: "(syntax)")
        #expect(issue?.line == 3)
    }

    @Test func tabIndentationIsExplained() {
        let issue = expectSingleError("http:\n\tthreads: 2\n", key: "(syntax)", reasonContains: "indent with spaces, not tabs")
        #expect(issue?.line == 2)
    }

    @Test func syntaxErrorDoesNotEchoTheSourceLine() {
        let errors = mustFail("http:\n  api_keys: [\"sk-very-secret\"\n  threads: 1\n")
        #expect(!errors.isEmpty)
        #expect(!errors.joined.contains("sk-very-secret"))
    }

    @Test func duplicateKeysAreReported() {
        let issue = expectSingleError("http:\n  threads: 2\n  threads: 3\n", key: "threads", reasonContains: "duplicate")
        #expect(issue?.line == 2)
    }

    @Test func lineNumbersPointAtTheValue() {
        let yaml = """
            # comment
            node:
              name: alpha
            http:
              listen: "127.0.0.1:11435"
              threads: 99
            engines:
              - kind: ollama
                url: "http://127.0.0.1:11434"
              - kind: openai
                url: "ftp://127.0.0.1:8080"
            """
        let errors = mustFail(yaml)
        #expect(errors.count == 2)
        #expect(errors.first { $0.key == "http.threads" }?.line == 6)
        #expect(errors.first { $0.key == "engines[1].url" }?.line == 11)
        #expect(errors.allSatisfy { $0.source == "test.yaml" })
    }

    @Test func topLevelMustBeAMap() {
        expectSingleError("- a\n- b\n", key: "(top level)", reasonContains: "expected a map")
    }

    @Test func errorDescriptionListsOneIssuePerLine() {
        switch attempt("http: { threads: 0, max_body_bytes: 1 }\nlogging: { level: loud }\n") {
        case .success: Issue.record("expected failure")
        case .failure(let error):
            let lines = error.description.split(separator: "\n")
            #expect(lines.count == 3)
            #expect(lines[0] == "test.yaml:1: error: http.threads: 0 is out of range 1...64")
            #expect(ConfigLoadError.exitCode == 2)
        }
    }

    @Test func editDistance() {
        #expect(Suggest.editDistance("listen", "lisen") == 1)
        #expect(Suggest.editDistance("", "abc") == 3)
        #expect(Suggest.editDistance("kitten", "sitting") == 3)
        #expect(Suggest.closest(to: "htpp", among: ["http", "admin"]) == "http")
        #expect(Suggest.closest(to: "zzzzzz", among: ["http", "admin"]) == nil)
    }
}

extension Array where Element == ConfigIssue {
    var joined: String { map(\.description).joined(separator: "\n") }
}
