import Foundation
import MeshCore
@testable import MeshConfigLoader
import Testing

let testHost = "testhost"

/// Loads YAML text as if from `source`; returns the result or the error.
func attempt(_ yaml: String, env: [String: String] = [:], source: String = "test.yaml") -> Result<LoadedConfig, ConfigLoadError> {
    do throws(ConfigLoadError) {
        return .success(try ConfigLoader.load(yaml: yaml, source: source, environment: env, hostName: testHost))
    } catch {
        return .failure(error)
    }
}

/// Loads YAML text that must be valid.
func mustLoad(_ yaml: String, env: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation) throws -> LoadedConfig {
    switch attempt(yaml, env: env) {
    case .success(let loaded): return loaded
    case .failure(let error):
        Issue.record("expected the configuration to load, got:\n\(error)", sourceLocation: sourceLocation)
        throw error
    }
}

/// Loads YAML text that must fail; returns its error issues.
func mustFail(_ yaml: String, env: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation) -> [ConfigIssue] {
    switch attempt(yaml, env: env) {
    case .success(let loaded):
        Issue.record("expected the configuration to be rejected, it loaded: \(loaded.config)", sourceLocation: sourceLocation)
        return []
    case .failure(let error):
        return error.errors
    }
}

/// Asserts `yaml` fails with exactly one error at `key`, and returns it.
@discardableResult
func expectSingleError(_ yaml: String, key: String, env: [String: String] = [:], reasonContains: String? = nil,
                       line: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigIssue? {
    let errors = mustFail(yaml, env: env, sourceLocation: sourceLocation)
    #expect(errors.count == 1, "errors: \(errors)", sourceLocation: sourceLocation)
    guard let issue = errors.first(where: { $0.key == key }) else {
        Issue.record("no error at \(key); got \(errors)", sourceLocation: sourceLocation)
        return nil
    }
    if let reasonContains {
        #expect(issue.reason.contains(reasonContains), "reason: \(issue.reason)", sourceLocation: sourceLocation)
    }
    if let line {
        #expect(issue.line == line, "issue: \(issue)", sourceLocation: sourceLocation)
    }
    return issue
}

/// A fresh temporary directory, removed by the caller.
func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-config-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// The repository's documented configuration file.
let documentedConfigPath: String = {
    URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()   // MeshConfigLoaderTests
        .deletingLastPathComponent()   // Tests
        .deletingLastPathComponent()   // repository root
        .appendingPathComponent("Config/meshd.yaml").path
}()

var defaults: MeshdConfig { MeshdConfig(nodeName: testHost) }
