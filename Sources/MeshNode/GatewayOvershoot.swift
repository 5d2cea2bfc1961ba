import MeshCore
import MeshLedger
import Synchronization

/// The gateway's knowledge of how far each provider and model bills more prompt tokens than
/// estimated (``PromptOvershoot``), learned from every answer and, at start, from the ledger's
/// reservations and settlements; and the probes: while nothing is known at all, one request goes
/// alone and the others wait for its answer.
final class OvershootBook: Sendable {
    private struct State {
        var learned = PromptOvershoot()
        /// Pairs with a probe in flight.
        var probes: Set<String> = []
    }

    private let state = Mutex(State())

    /// How a request to a provider's model is admitted.
    enum Admission: Equatable {
        /// Reserve this many prompt tokens.
        case reserve(promptTokens: Int)
        /// Nothing is known: this request is the probe (reserve the estimate; ``finishProbe`` after).
        case probe
        /// Another request is the probe: wait for it, then ask again.
        case wait
    }

    /// Learns from the ledger: each settled reservation's estimated and billed prompt tokens.
    func learn(from entries: [LedgerEntry]) {
        var estimated: [String: Int] = [:]
        state.withLock { s in
            for e in entries {
                switch e.kind {
                case .reserve: estimated[e.requestID] = e.promptTokens
                case .settle:
                    if let est = estimated[e.requestID], !e.model.isEmpty {
                        s.learned.learn(provider: e.provider, model: e.model, estimated: est, billed: e.promptTokens)
                    }
                case .release, .reconcile: break
                }
            }
        }
    }

    func admission(provider: String, model: String, estimated: Int) -> Admission {
        state.withLock { s in
            if let n = s.learned.promptTokensToReserve(provider: provider, model: model, estimated: estimated) { return .reserve(promptTokens: n) }
            let k = provider + "/" + model
            if s.probes.contains(k) { return .wait }
            s.probes.insert(k)
            return .probe
        }
    }

    /// Waits until the probe of `provider`'s `model` has ended (or `timeout` passed). (A short
    /// poll: waiting happens only while a provider's model is first used.)
    func waitForProbe(provider: String, model: String, timeout: Duration) async {
        let k = provider + "/" + model
        let deadline = ContinuousClock.now + timeout
        while state.withLock({ $0.probes.contains(k) }) && ContinuousClock.now < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The probe ended (with an answer learned, or without one): its waiters go on; when nothing
    /// was learned, the next of them becomes the probe.
    func finishProbe(provider: String, model: String) {
        _ = state.withLock { $0.probes.remove(provider + "/" + model) }
    }

    /// An answer's billed prompt tokens.
    func learn(provider: String, model: String, estimated: Int, billed: Int) {
        state.withLock { $0.learned.learn(provider: provider, model: model, estimated: estimated, billed: billed) }
    }

    /// What is known, for `meshctl budget --json`: per provider and model, the worst ratio and
    /// excess of billed over estimated prompt tokens, and how many answers taught it.
    func json() -> JSON {
        .array(state.withLock { $0.learned.all }.map { p in
            ["provider": .string(p.provider), "model": .string(p.model), "ratio": .number((p.seen.ratio * 1000).rounded() / 1000),
             "excess_tokens": .integer(p.seen.excess), "answers": .integer(p.seen.answers)]
        })
    }
}

