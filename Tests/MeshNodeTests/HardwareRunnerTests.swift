import Foundation
import MeshEngines
import MeshHardware
@testable import MeshNode
import Testing

/// The real command runner behind the hardware probe, with real processes.
@Suite struct HardwareRunnerTests {
    let runner = ChildProcessCommandRunner()

    @Test func collectsOutputAndStatus() async {
        let r = await runner.run("/bin/sh", ["-c", "echo '0, NVIDIA L4, 23034, 22000'; echo oops >&2; exit 3"], timeout: .seconds(10))
        guard case .success(let out) = r else {
            Issue.record("expected output, got \(r)")
            return
        }
        #expect(out.status == 3)
        #expect(out.stdout == "0, NVIDIA L4, 23034, 22000")
        #expect(out.stderr == "oops")
    }

    @Test func namesAreLookedUpOnPath() async {
        let r = await runner.run("true", [], timeout: .seconds(10))
        #expect((try? r.get())?.status == 0)
    }

    @Test func missingToolIsNotFound() async {
        #expect(await runner.run("meshd-no-such-tool-\(UInt32.random(in: 0...UInt32.max))", [], timeout: .seconds(1)) == .failure(.notFound))
        #expect(await runner.run("/nonexistent/nvidia-smi", [], timeout: .seconds(1)) == .failure(.notFound))
    }

    @Test func hangingToolIsKilledAtTheTimeout() async throws {
        let pidFile = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-hw-pid-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
        let started = ContinuousClock.now
        let r = await runner.run("/bin/sh", ["-c", "echo $$ > \(pidFile); exec sleep 30"], timeout: .milliseconds(200))
        #expect(r == .failure(.timedOut))
        // Not waited out: the run ends long before the tool would (generous for a loaded machine).
        #expect(ContinuousClock.now - started < .seconds(25))
        // And the tool is gone, not left running. (On a loaded machine it may have been killed before
        // it wrote its pid; a tool the kill missed would still write it.)
        var text: String? = nil
        for _ in 0..<40 where text == nil {
            text = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { $0.contains("\n") ? $0 : nil }
            if text == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        guard let text else { return }
        let pid = try #require(Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        var alive = true
        for _ in 0..<200 where alive {
            alive = kill(pid, 0) == 0
            if alive { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(!alive, "pid \(pid) still exists")
    }

    @Test func proberOverRealProcessesDegradesToCPU() async {
        var o = HardwareProbeOptions()
        o.root = "/nonexistent-meshd-root"
        o.nvmlLibrary = nil
        o.nvidiaSMI = "/bin/false"
        o.rocmSMI = "meshd-no-such-rocm-smi"
        let snap = await HardwareProber(options: o, runner: runner).probe()
        #expect(snap.gpuSummary == "cpu")
        #expect(snap.problems.contains("false exited with status 1: (empty)"))
    }
}

@Suite struct StuckToolTests {
    @Test func aToolStillStuckAfterSIGKILLIsNotStartedAgainUntilItIsGone() async throws {
        let runner = ChildProcessCommandRunner()
        let stuck = try await ChildProcess.spawn(executable: "/bin/sleep", arguments: ["30"], onLine: { _, _ in })
        runner.markStuck("/bin/sleep", stuck)
        let refused = await runner.run("/bin/sleep", ["0"], timeout: .seconds(10))
        #expect(refused == .failure(.failedToStart("an earlier run (pid \(stuck.pid)) is still stuck after SIGKILL")))
        // Another tool is not held up by it.
        #expect((try? await runner.run("/bin/true", [], timeout: .seconds(10)).get())?.status == 0)
        stuck.signal(SIGKILL)
        _ = await stuck.waitForExit()
        #expect((try? await runner.run("/bin/sleep", ["0"], timeout: .seconds(10)).get())?.status == 0)
    }
}
