import MeshCore
import Testing

@Suite struct ModelStorePlanTests {
    let gib: Int64 = 1 << 30
    let s: UInt64 = 1_000_000_000

    func model(_ name: String, _ gb: Int64, _ phase: StoredModelState.Phase, busy: Int = 0, used: UInt64 = 0) -> StoredModelState {
        StoredModelState(name: name, bytes: gb * gib, phase: phase, busy: busy, lastUsedNanos: used * s)
    }

    @Test func idleModelsExpireAfterTheKeepAliveOldestFirstAndBusyOnesNever() {
        let models = [model("a", 1, .loaded, used: 100), model("b", 1, .loaded, used: 50),
                      model("c", 1, .loaded, busy: 1, used: 0), model("d", 1, .available, used: 0), model("e", 1, .loading, used: 0),
                      model("f", 1, .loaded, used: 390)]
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: 300, now: 400 * s) == ["b", "a"])
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: 300, now: 399 * s) == ["b"])
        // 0: unloaded as soon as idle; -1: never for being idle.
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: 0, now: 390 * s) == ["b", "a", "f"])
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: -1, now: 100_000 * s).isEmpty)
        // A clock that went back (last use after now) expires nothing.
        #expect(ModelStorePlan.expired([model("x", 1, .loaded, used: 500)], keepAliveSeconds: 0, now: 400 * s).isEmpty)
    }

    @Test func roomIsMadeByUnloadingTheLeastRecentlyUsedIdleModelsOnlyAsFarAsNeeded() {
        let models = [model("new", 4, .available), model("old", 3, .loaded, used: 10), model("mid", 2, .loaded, used: 20),
                      model("recent", 3, .loaded, used: 30)]
        // 5 GiB free: fits as it is.
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: 5 * gib, maxLoaded: 0) == .success([]))
        // 2 GiB free: unloading the oldest (3 GiB) is enough.
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: 2 * gib, maxLoaded: 0) == .success(["old"]))
        // 0 free: the oldest and the next (5 GiB) make 4.
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: 0, maxLoaded: 0) == .success(["old", "mid"]))
        // Unknown memory: only the count limit applies.
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: nil, maxLoaded: 0) == .success([]))
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: nil, maxLoaded: 2) == .success(["old", "mid"]))
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: 100 * gib, maxLoaded: 3) == .success(["old"]))
        // Already resident: nothing to do.
        #expect(ModelStorePlan.makeRoom(for: "mid", models: models, freeBytes: 0, maxLoaded: 1) == .success([]))
    }

    @Test func busyAndLoadingModelsAreNotUnloadedAndAModelLargerThanTheOfferIsRefused() {
        let models = [model("new", 4, .available), model("busy", 3, .loaded, busy: 2, used: 1), model("loading", 3, .loading),
                      model("idle", 1, .loaded, used: 50)]
        // Needs 4 with 0 free: only "idle" (1 GiB) may go: wait for the others.
        let r = ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: 0, maxLoaded: 0)
        #expect(r == .failure(.busy(model: "new", waitingFor: ["busy", "loading"])))
        if case .failure(let e) = r { #expect(e.description == "no room to load 'new' while 'busy', 'loading' serve requests") }
        // 3 free: "idle" is enough.
        #expect(ModelStorePlan.makeRoom(for: "new", models: models, freeBytes: 3 * gib, maxLoaded: 0) == .success(["idle"]))
        // More than the offer with every other model unloaded (1 + 7 GiB < 9): refused at once.
        let big = [model("huge", 9, .available)] + models.dropFirst()
        let t = ModelStorePlan.makeRoom(for: "huge", models: big, freeBytes: gib, maxLoaded: 0)
        #expect(t == .failure(.tooLarge(model: "huge", bytes: 9 * gib, offer: 8 * gib)))
        if case .failure(let e) = t { #expect(e.description.contains("needs 9216 MiB") && e.description.contains("offers 8192 MiB")) }
    }

    @Test func storeFileNamesBecomeModelNames() {
        #expect(ModelStorePlan.modelName(fileName: "qwen2.5-7b-instruct-q4_k_m.gguf") == "qwen2.5-7b-instruct-q4_k_m")
        #expect(ModelStorePlan.modelName(fileName: "big-00001-of-00003.gguf") == "big")
        #expect(ModelStorePlan.modelName(fileName: "big-00002-of-00003.gguf") == nil)
        #expect(ModelStorePlan.modelName(fileName: "notes.txt") == nil)
        #expect(ModelStorePlan.modelName(fileName: ".hidden.gguf") == nil)
        #expect(ModelStorePlan.modelName(fileName: "m.gguf.partial") == nil)
        #expect(ModelStorePlan.modelName(fileName: ".gguf") == nil)
        #expect(ModelStoreSettings().directory(stateDir: "/var/lib/meshd") == "/var/lib/meshd/models")
        var custom = ModelStoreSettings()
        custom.dir = "/srv/models"
        #expect(custom.directory(stateDir: "/var/lib/meshd/") == "/srv/models")
        #expect(ModelStoreSettings().directory(stateDir: "/x/") == "/x/models")
    }
}

@Suite struct ModelStoreKeepAliveTests {
    @Test func aRequestsOwnKeepAliveOverridesTheStoresForItsModel() {
        let s: UInt64 = 1_000_000_000
        var now0 = StoredModelState(name: "zero", bytes: 1, phase: .loaded, lastUsedNanos: 100 * s)
        now0.keepAliveSeconds = 0
        var long = StoredModelState(name: "long", bytes: 1, phase: .loaded, lastUsedNanos: 0)
        long.keepAliveSeconds = 3600
        var forever = StoredModelState(name: "forever", bytes: 1, phase: .loaded, lastUsedNanos: 0)
        forever.keepAliveSeconds = -1
        let plain = StoredModelState(name: "plain", bytes: 1, phase: .loaded, lastUsedNanos: 0)
        let models = [now0, long, forever, plain]
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: 300, now: 100 * s) == ["zero"])
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: 300, now: 400 * s) == ["plain", "zero"])
        #expect(ModelStorePlan.expired(models, keepAliveSeconds: 300, now: 3600 * s) == ["long", "plain", "zero"])
        // Busy: kept whatever its keep-alive.
        var busy = now0
        busy.busy = 1
        #expect(ModelStorePlan.expired([busy], keepAliveSeconds: 0, now: 1000 * s).isEmpty)
    }
}

@Suite struct ModelStoreExpiryTests {
    @Test func aLoadedModelExpiresItsKeepAliveAfterItsLastUse() {
        let s: UInt64 = 1_000_000_000
        var m = StoredModelState(name: "m", bytes: 1, phase: .loaded, lastUsedNanos: 100 * s)
        #expect(ModelStorePlan.expiry(m, keepAliveSeconds: 300) == 400 * s)
        m.keepAliveSeconds = 2.5
        #expect(ModelStorePlan.expiry(m, keepAliveSeconds: 300) == 100 * s + 2_500_000_000)
        m.keepAliveSeconds = -1
        #expect(ModelStorePlan.expiry(m, keepAliveSeconds: 300)! > 100 * s + 99 * 365 * 86400 * s)
        m.phase = .available
        #expect(ModelStorePlan.expiry(m, keepAliveSeconds: 300) == nil)
    }
}
