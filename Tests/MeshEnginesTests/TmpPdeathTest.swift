import Foundation
import Testing
@testable import MeshEngines

@Test func tmpPdeath() async throws {
    guard let f = ProcessInfo.processInfo.environment["PDEATH_FILE"] else { return }
    let c = try await ChildProcess.spawn(executable: "/bin/sleep", arguments: ["1000"], onLine: { _, _ in })
    try "\(c.pid)".write(toFile: f, atomically: true, encoding: .utf8)
    try await Task.sleep(for: .seconds(30))
}
