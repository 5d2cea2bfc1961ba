import MeshNode
import NIOCore
import NIOPosix
import Testing

/// Sleeping on an event loop's timers (the mesh heartbeat's tick, the heap trimmer).
@Suite(.timeLimit(.minutes(1))) struct LoopSleepTests {
    @Test func itSleepsAtLeastTheDuration() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let sleep = LoopSleep.on(group.next())
        let clock = ContinuousClock()
        let took = await clock.measure { await sleep(.milliseconds(60)) }
        #expect(took >= .milliseconds(60))
        // An upper bound only against a sleep that never ends: the test pool's threads (two on a
        // 2-core CI machine) may be busy with other suites for seconds before this task resumes.
        #expect(took < .seconds(30))
        try await group.shutdownGracefully()
    }

    @Test func cancellingTheTaskEndsTheSleep() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let sleep = LoopSleep.on(group.next())
        let clock = ContinuousClock()
        let started = clock.now
        let task = Task { await sleep(.seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await task.value
        #expect(clock.now - started < .seconds(25))  // far below the 30 s sleep, with room for a busy test pool
        try await group.shutdownGracefully()
    }
}
