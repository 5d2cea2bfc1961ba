import Foundation
import Logging
import Synchronization
import Testing
@testable import MeshZMQ

/// Collects a loop's events on a task so tests can wait for one with a deadline.
final class EventRecorder: Sendable {
    private final class Store: Sendable {
        let events = Mutex<[MeshSocketEvent]>([])
        let finished = Mutex(false)
    }

    private let store = Store()
    let loop: MeshSocketLoop

    init(_ loop: MeshSocketLoop) {
        self.loop = loop
        let store = self.store
        let stream = loop.events
        Task.detached {
            for await event in stream { store.events.withLock { $0.append(event) } }
            store.finished.withLock { $0 = true }
        }
    }

    var all: [MeshSocketEvent] { store.events.withLock { $0 } }
    var isFinished: Bool { store.finished.withLock { $0 } }

    /// The first recorded event matching `predicate`, waiting up to `timeout` for it.
    func first(within timeout: Duration = .seconds(20), where predicate: (MeshSocketEvent) -> Bool) async -> MeshSocketEvent? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let hit = all.first(where: predicate) { return hit }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// The first message whose frames equal `frames`.
    func message(_ frames: [[UInt8]], within timeout: Duration = .seconds(20)) async -> MeshMessage? {
        let event = await first(within: timeout) { if case let .message(m) = $0 { m.frames == frames } else { false } }
        if case let .message(m) = event { return m }
        return nil
    }

    func waitFinished(within timeout: Duration = .seconds(20)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !isFinished {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    func hasMessage(containing marker: [UInt8]) -> Bool {
        all.contains { if case let .message(m) = $0 { m.frames.contains(marker) } else { false } }
    }
}

func isAuthFailure(_ event: MeshSocketEvent, containing text: String = "") -> Bool {
    if case let .authFailure(_, reason) = event { return text.isEmpty || reason.contains(text) }
    return false
}

func isConnected(_ event: MeshSocketEvent, _ peer: MeshPeerID) -> Bool {
    if case .peerConnected(peer) = event { return true }
    return false
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

func randomBytes(_ count: Int) -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let word = rng.next() as UInt64
            for shift in stride(from: 0, to: 64, by: 8) where offset < buffer.count {
                buffer[offset] = UInt8(truncatingIfNeeded: word >> UInt64(shift))
                offset += 1
            }
        }
    }
    return out
}

let testLogger: Logger = {
    var logger = Logger(label: "meshd.zmq.test")
    logger.logLevel = ProcessInfo.processInfo.environment["MESHZMQ_TEST_LOG"] != nil ? .debug : .critical
    return logger
}()

/// A started loop plus its recorder; `configure` adjusts the configuration derived from `secret`.
func makeLoop(secret: MeshSecret, _ configure: (inout MeshSocketConfiguration) -> Void = { _ in }) throws -> EventRecorder {
    var configuration = try MeshSocketConfiguration(secret: secret)
    configure(&configuration)
    return EventRecorder(try MeshSocketLoop(configuration: configuration, logger: testLogger))
}

func makeLoop(keyPair: CurveKeyPair) throws -> EventRecorder {
    EventRecorder(try MeshSocketLoop(configuration: MeshSocketConfiguration(keyPair: keyPair), logger: testLogger))
}

/// A fresh private temporary directory, removed by the caller.
func temporaryDirectory() throws -> String {
    var template = Array((NSTemporaryDirectory() + "/meshzmq-test-XXXXXX").utf8CString)
    guard let path = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
    return String(cString: path)
}
