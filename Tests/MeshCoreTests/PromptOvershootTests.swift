import Testing
@testable import MeshCore

@Suite struct PromptOvershootTests {
    @Test func nothingKnownMeansAProbeThenTheWorstSeenCoversEveryAnswer() {
        var o = PromptOvershoot()
        #expect(o.promptTokensToReserve(provider: "openai", model: "m", estimated: 50) == nil)
        // A fixed 1,000 tokens more than the prompt (a provider's own system prompt).
        o.learn(provider: "openai", model: "m", estimated: 50, billed: 1001)
        let s = o.seen(provider: "openai", model: "m")
        #expect(s?.answers == 1 && s?.excess == 951 && abs((s?.ratio ?? 0) - 20.02) < 1e-9)
        // The same prompt again reserves at least what was billed.
        #expect((o.promptTokensToReserve(provider: "openai", model: "m", estimated: 50) ?? 0) >= 1001)
        // A larger or smaller prompt of the same model too.
        for est in [10, 50, 200, 4000] {
            let billedIfFixed = est / 2 + 1000
            #expect((o.promptTokensToReserve(provider: "openai", model: "m", estimated: est) ?? 0) >= billedIfFixed, "\(est)")
        }
        // Another model, nothing known of it: the worst seen anywhere.
        #expect(o.promptTokensToReserve(provider: "claude", model: "x", estimated: 50) == o.promptTokensToReserve(provider: "openai", model: "m", estimated: 50))
    }

    @Test func anEstimateThatHoldsReservesJustTheEstimate() {
        var o = PromptOvershoot()
        for billed in [3, 7, 12] { o.learn(provider: "p", model: "m", estimated: 40, billed: billed) }
        #expect(o.seen(provider: "p", model: "m") == PromptOvershoot.Seen(ratio: 1, excess: 0, answers: 3))
        #expect(o.promptTokensToReserve(provider: "p", model: "m", estimated: 40) == 40)
        // A ratio overshoot (images scale with the prompt) is kept as the worst seen.
        o.learn(provider: "p", model: "m", estimated: 100, billed: 300)
        o.learn(provider: "p", model: "m", estimated: 100, billed: 150)
        #expect(o.seen(provider: "p", model: "m")?.ratio == 3 && o.promptTokensToReserve(provider: "p", model: "m", estimated: 10) == 230)
        // Nonsense is ignored.
        o.learn(provider: "p", model: "m", estimated: 0, billed: 10)
        o.learn(provider: "p", model: "m", estimated: 10, billed: -1)
        #expect(o.seen(provider: "p", model: "m")?.answers == 5)
    }
}
