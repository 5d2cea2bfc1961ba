import Testing
@testable import MeshCore

@Suite struct MeshWireTests {
    @Test func roundTripEveryType() throws {
        for t in WireMessageType.allCases {
            var header: JSON = ["req": "r1", "node": "a", "name": "a", "proto": 1, "id": "a"]
            if t == .state { header = ["id": "a"] }
            if t.rawValue >= 0x20 && t.rawValue < 0x30 { header = ["tun": "a-t1", "target": "rpc/s1", "window": 1024, "bytes": 5, "msgs": 1] }
            if t == .cacheDelta { header = ["node": "a", "n": 3, "engines": []] }
            if t == .keyUsage { header = ["node": "a", "seq": 2, "keys": []] }
            let m = WireMessage(type: t, header: header, payload: t == .chunk || t == .response || t == .tunnelData ? [1, 2, 3] : [])
            let back = try MeshWireCodec.decode(MeshWireCodec.encode(m))
            #expect(back == m)
        }
    }

    @Test func rejectsHostileFrames() {
        let good = MeshWireCodec.encode(WireMessage(type: .chunk, header: ["req": "x"], payload: [0]))
        #expect(throws: MeshWireError.frameCount(1)) { try MeshWireCodec.decode([good[0]]) }
        #expect(throws: MeshWireError.frameCount(5)) { try MeshWireCodec.decode(good + good.prefix(2)) }
        #expect(throws: MeshWireError.badPrelude) { try MeshWireCodec.decode([[1], good[1]]) }
        #expect(throws: MeshWireError.unsupportedVersion(9)) { try MeshWireCodec.decode([[9, 0x12], good[1], [0]]) }
        #expect(throws: MeshWireError.unknownType(0x7f)) { try MeshWireCodec.decode([[1, 0x7f], good[1]]) }
        #expect(throws: MeshWireError.self) { try MeshWireCodec.decode([[1, 0x12], Array("{nope".utf8), [0]]) }
        #expect(throws: MeshWireError.badHeader("not an object")) { try MeshWireCodec.decode([[1, 0x12], Array("[1]".utf8), [0]]) }
        #expect(throws: MeshWireError.missingField("req")) { try MeshWireCodec.decode([[1, 0x12], Array("{}".utf8), [0]]) }
        #expect(throws: MeshWireError.missingField("id")) { try MeshWireCodec.decode([[1, 0x02], Array("{}".utf8)]) }
        #expect(throws: MeshWireError.missingField("node")) { try MeshWireCodec.decode([[1, 0x03], Array(#"{"id":"a"}"#.utf8)]) }
        #expect(throws: MeshWireError.headerTooLarge(MeshWireCodec.maxHeaderBytes + 1)) {
            try MeshWireCodec.decode([[1, 0x12], [UInt8](repeating: 0x20, count: MeshWireCodec.maxHeaderBytes + 1)])
        }
        #expect(throws: MeshWireError.payloadTooLarge(11)) {
            try MeshWireCodec.decode([[1, 0x12], Array(#"{"req":"a"}"#.utf8), [UInt8](repeating: 0, count: 11)], maxPayloadBytes: 10)
        }
    }

    @Test func tunnelMessages() throws {
        // Data keeps its payload frame even when empty; the id is read back.
        let data = MeshWireCodec.encode(WireMessage(type: .tunnelData, header: ["tun": "a-t1"]))
        #expect(data.count == 3)
        #expect(try MeshWireCodec.decode(data).tunnelID == "a-t1")
        // A refusal carries its message instead of a window; a close its optional reason.
        let refused = try MeshWireCodec.decode(MeshWireCodec.encode(WireMessage(type: .tunnelOpened, header: ["tun": "x", "refused": "no"])))
        #expect(refused.header["refused"]?.stringValue == "no")
        let close = try MeshWireCodec.decode(MeshWireCodec.encode(WireMessage(type: .tunnelClose, header: ["tun": "x", "reason": "gone"])))
        #expect(close.header["reason"]?.stringValue == "gone")
        _ = try MeshWireCodec.decode(MeshWireCodec.encode(WireMessage(type: .tunnelClose, header: ["tun": "x"])))
    }

    @Test func rejectsMalformedTunnelMessages() {
        func frames(_ type: UInt8, _ header: String) -> [[UInt8]] { [[1, type], Array(header.utf8)] }
        for t: UInt8 in 0x20...0x26 {
            #expect(throws: MeshWireError.missingField("tun")) { try MeshWireCodec.decode(frames(t, "{}")) }
            #expect(throws: MeshWireError.missingField("tun")) { try MeshWireCodec.decode(frames(t, #"{"tun":7}"#)) }
        }
        #expect(throws: MeshWireError.missingField("target")) { try MeshWireCodec.decode(frames(0x20, #"{"tun":"a","window":9}"#)) }
        #expect(throws: MeshWireError.missingField("window")) { try MeshWireCodec.decode(frames(0x20, #"{"tun":"a","target":"t"}"#)) }
        #expect(throws: MeshWireError.missingField("window")) { try MeshWireCodec.decode(frames(0x20, #"{"tun":"a","target":"t","window":0}"#)) }
        #expect(throws: MeshWireError.missingField("window")) { try MeshWireCodec.decode(frames(0x21, #"{"tun":"a"}"#)) }
        #expect(throws: MeshWireError.missingField("window")) { try MeshWireCodec.decode(frames(0x21, #"{"tun":"a","window":-1}"#)) }
        #expect(throws: MeshWireError.missingField("bytes")) { try MeshWireCodec.decode(frames(0x23, #"{"tun":"a","bytes":1}"#)) }
        #expect(throws: MeshWireError.missingField("bytes")) { try MeshWireCodec.decode(frames(0x23, #"{"tun":"a","bytes":-1,"msgs":1}"#)) }
        #expect(throws: MeshWireError.unknownType(0x27)) { try MeshWireCodec.decode(frames(0x27, #"{"tun":"a"}"#)) }
        #expect(throws: MeshWireError.payloadTooLarge(11)) {
            try MeshWireCodec.decode(frames(0x22, #"{"tun":"a"}"#) + [[UInt8](repeating: 0, count: 11)], maxPayloadBytes: 10)
        }
    }

    @Test func fuzzNeverTraps() {
        var seed: UInt64 = 0x5eed
        func next() -> UInt64 {
            seed &+= 0x9E3779B97F4A7C15
            var z = seed
            z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
            return z ^ (z >> 31)
        }
        let base = MeshWireCodec.encode(WireMessage(type: .request, header: ["req": "q", "path": "/v1/chat/completions"], payload: [1, 2]))
        for _ in 0..<5000 {
            var frames = base
            let n = Int(next() % 4)
            for _ in 0..<n {
                let f = Int(next() % UInt64(frames.count))
                if frames[f].isEmpty { frames[f].append(UInt8(truncatingIfNeeded: next())); continue }
                let i = Int(next() % UInt64(frames[f].count))
                switch next() % 3 {
                case 0: frames[f][i] = UInt8(truncatingIfNeeded: next())
                case 1: frames[f].removeSubrange(i...)
                default: frames[f].insert(UInt8(truncatingIfNeeded: next()), at: i)
                }
            }
            if next() % 7 == 0 { frames.removeLast() }
            _ = try? MeshWireCodec.decode(frames)
        }
    }
}

@Suite struct PeerTableTests {
    func state(_ id: String, seq: UInt64, models: [String] = []) -> NodeState {
        NodeState(id: id, name: id, meshEndpoint: "127.0.0.1:1", httpEndpoint: "127.0.0.1:2", seq: seq,
                  engines: [EngineSnapshot(id: "e", kind: .openai, url: "http://x", healthy: true,
                                           models: models.map { ModelInfo(name: $0, loaded: true) })])
    }

    @Test func expiresAfterMissedHeartbeats() {
        let clock = ManualClock()
        var t = PeerTable(heartbeatMs: 1000, deadAfterMissed: 3)
        let added = t.update(state("b", seq: 1), nowNanos: clock.nowNanos())
        #expect(added)
        clock.advance(seconds: 2.9)
        var gone = t.expire(nowNanos: clock.nowNanos())
        #expect(gone.isEmpty)
        t.touch("b", nowNanos: clock.nowNanos())
        clock.advance(seconds: 2.9)
        gone = t.expire(nowNanos: clock.nowNanos())
        #expect(gone.isEmpty)
        clock.advance(seconds: 0.2)
        gone = t.expire(nowNanos: clock.nowNanos())
        #expect(gone == ["b"])
        #expect(t.peers.isEmpty)
    }

    @Test func olderStateDoesNotReplaceNewer() {
        var t = PeerTable(heartbeatMs: 1000, deadAfterMissed: 3)
        t.update(state("b", seq: 5, models: ["new"]), nowNanos: 1)
        let changed = t.update(state("b", seq: 4, models: ["old"]), nowNanos: 2)
        #expect(!changed)
        #expect(t.entries["b"]?.state.modelNames == ["new"])
        #expect(t.entries["b"]?.lastHeardNanos == 2)
    }

    /// A restarted meshd (another instance) at the same endpoint is taken even with a lower `seq`
    /// (its wall clock may now be behind the old process's), and its loads apply from then on.
    @Test func aNewInstanceIsTakenWhateverItsSeq() {
        var t = PeerTable(heartbeatMs: 1000, deadAfterMissed: 3)
        var old = state("b", seq: 5_000, models: ["old"])
        old.instance = "i1"
        t.update(old, nowNanos: 1)
        t.apply(NodeLoad(node: "b", seq: 6_000, instance: "i1", engines: []), nowNanos: 2)
        var restarted = state("b", seq: 100, models: ["new"])
        restarted.instance = "i2"
        let changed = t.update(restarted, nowNanos: 3)
        #expect(changed)
        #expect(t.entries["b"]?.state.modelNames == ["new"] && t.entries["b"]?.state.instance == "i2")
        // Its own older state is still only a sign of life.
        var older = restarted
        older.seq = 99
        older.engines[0].models = []
        let changed2 = t.update(older, nowNanos: 4)
        #expect(!changed2 && t.entries["b"]?.state.modelNames == ["new"] && t.entries["b"]?.lastHeardNanos == 4)
        // Its load, numbered from its own clock, applies (the old instance's load seq is not kept).
        let applied = t.apply(NodeLoad(node: "b", seq: 101, instance: "i2", engines: []), nowNanos: 5)
        #expect(applied)
    }

    /// `step` sets only the wall clock, as NTP does; `advance` moves both.
    @Test func manualClockStepsTheWallClockAlone() {
        let clock = ManualClock(nanos: 1_000_000_000_000)
        clock.step(seconds: -100)
        #expect(clock.nowNanos() == 900_000_000_000 && clock.monotonicNanos() == 1_000_000_000_000)
        clock.advance(seconds: 1)
        #expect(clock.nowNanos() == 901_000_000_000 && clock.monotonicNanos() == 1_001_000_000_000)
        clock.step(seconds: 3600)
        #expect(clock.monotonicNanos() == 1_001_000_000_000)
    }

    @Test func loadUpdatesTheEnginesOfTheStateHeld() throws {
        var t = PeerTable(heartbeatMs: 1000, deadAfterMissed: 3)
        var s = state("b", seq: 10, models: ["m"])
        s.instance = "i1"
        s.engines.append(EngineSnapshot(id: "f", kind: .ollama, url: "http://y", healthy: true))
        t.update(s, nowNanos: 1)
        let busy = EngineLoad(inFlight: 3, running: 2, waiting: 1, slots: 4)
        let speeds = EngineSpeeds(prefillTokensPerSecond: 900, decodeTokensPerSecond: 40)
        let l = NodeLoad(node: "b", seq: 11, instance: "i1",
                         engines: [.init(id: "e", load: busy, speeds: speeds), .init(id: "unknown", load: busy, speeds: speeds)])
        // Through the wire as a `load` message.
        let wire = try MeshWireCodec.decode(MeshWireCodec.encode(WireMessage(type: .load, header: JSONValueCoding.encode(l))))
        #expect(wire.type == .load)
        let back = try JSONValueCoding.decode(NodeLoad.self, from: wire.header)
        #expect(back == l)
        let applied1 = t.apply(back, nowNanos: 5)
        #expect(applied1)
        let e = try #require(t.entries["b"])
        #expect(e.lastHeardNanos == 5 && e.loadSeq == 11 && e.state.seq == 10)
        #expect(e.state.engines[0].load == busy && e.state.engines[0].speeds == speeds)
        #expect(e.state.engines[1].load == EngineLoad())  // not in the load: unchanged
        #expect(e.state.engines.count == 2 && e.state.modelNames == ["m"])
        #expect(e.state.inFlight == 3)
        // Stale, from another instance, or from a node we hold no state of: ignored.
        var idle = l
        idle.engines = [.init(id: "e", load: EngineLoad(), speeds: speeds)]
        idle.seq = 11
        let applied2 = t.apply(idle, nowNanos: 6)
        #expect(!applied2)
        idle.seq = 12
        idle.instance = "i2"
        let applied3 = t.apply(idle, nowNanos: 6)
        #expect(!applied3)
        idle.instance = "i1"
        idle.node = "c"
        let applied4 = t.apply(idle, nowNanos: 6)
        #expect(!applied4)
        #expect(t.entries["b"]?.state.inFlight == 3 && t.entries["b"]?.lastHeardNanos == 5)
        idle.node = "b"
        let applied5 = t.apply(idle, nowNanos: 7)
        #expect(applied5)
        #expect(t.entries["b"]?.state.inFlight == 0)
        // A whole state built before that load (a model change) is still taken.
        var models = s
        models.seq = 11
        models.engines[0].models.append(ModelInfo(name: "m2", loaded: true))
        t.update(models, nowNanos: 8)
        #expect(t.entries["b"]?.state.modelNames == ["m", "m2"])
        // A state's own numbers make the same message.
        #expect(s.load.engines.map(\.id) == ["e", "f"] && s.load.seq == 10 && s.load.instance == "i1")
    }

    @Test func meshRoutingPrefersLoadedThenLocalThenLessBusy() {
        func engine(_ id: String, _ model: String, loaded: Bool, busy: Int) -> EngineSnapshot {
            EngineSnapshot(id: id, kind: .openai, url: "http://x", healthy: true, models: [ModelInfo(name: model, loaded: loaded)],
                           load: EngineLoad(inFlight: busy, slots: 1))
        }
        let local = RoutingNode(id: "a", isLocal: true, engines: [engine("la", "m", loaded: true, busy: 0)])
        let b = RoutingNode(id: "b", isLocal: false, hopSeconds: 0.001, engines: [engine("lb", "m", loaded: true, busy: 0)])
        // Tie on everything but the hop: local wins.
        let d1 = try? Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10, nodes: [b, local]).get()
        #expect(d1?.isLocal == true)
        // Local busy: the remote node wins.
        let busyLocal = RoutingNode(id: "a", isLocal: true, engines: [engine("la", "m", loaded: true, busy: 3)])
        let d2 = try? Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10, nodes: [busyLocal, b]).get()
        #expect(d2?.nodeID == "b")
        #expect(d2?.reason.hasPrefix("b/lb") == true)
        // Draining nodes take no new work; only draining holders → 503 naming it.
        var drained = b
        drained.draining = true
        let d3 = Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10, nodes: [busyLocal, drained])
        #expect((try? d3.get())?.isLocal == true)
        let d4 = Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10,
                               nodes: [RoutingNode(id: "a", isLocal: true, engines: []), drained])
        if case .failure(let e) = d4 { #expect(e.status == 503 && e.message.contains("draining")) } else { Issue.record("expected 503") }
        // Loaded remote beats not-loaded local.
        let coldLocal = RoutingNode(id: "a", isLocal: true, engines: [engine("la", "m", loaded: false, busy: 0)])
        let d5 = try? Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10, nodes: [coldLocal, b]).get()
        #expect(d5?.nodeID == "b")
    }
}
