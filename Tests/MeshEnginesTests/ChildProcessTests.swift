import Foundation
import Testing
@testable import MeshEngines

@Suite struct ChildProcessTests {
    @Test func childGetsOnlyItsStandardDescriptors() async throws {
        // A pipe opened without FD_CLOEXEC, as another thread of the process might have one.
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let lines = LockedLines()
        let child = try await ChildProcess.spawn(
            executable: "/bin/sh", arguments: ["-c", "for f in /proc/$$/fd/*; do echo ${f##*/}; done"],
            onLine: { line, isStderr in if !isStderr { lines.append(line) } })
        let exit = await child.waitForExit(timeout: .seconds(10))
        #expect(exit == .exited(0))
        // The reader stops after the reap; give it its last lines.
        for _ in 0..<50 where lines.all.count < 3 { try await Task.sleep(for: .milliseconds(20)) }
        let open = Set(lines.all.compactMap { Int32($0) })
        #expect(open.isSuperset(of: [0, 1, 2]), "\(lines.all)")
        #expect(!open.contains(fds[0]) && !open.contains(fds[1]), "inherited: \(lines.all)")
    }
}

final class LockedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}
