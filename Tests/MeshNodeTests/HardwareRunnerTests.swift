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

    @Test func hangingToolIsKilledAtTheTimeout() async {
        let started = ContinuousClock.now
        let r = await runner.run("/bin/sleep", ["30"], timeout: .milliseconds(200))
        let took = ContinuousClock.now - started
        #expect(r == .failure(.timedOut))
        #expect(took < .seconds(5), "took \(took)")
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
