import MeshCore
@testable import MeshConfigLoader
import Testing

@Suite struct ModelsConfigTests {
    @Test func defaultsAreAStoreUnderTheStateDirAndFiveMinutes() throws {
        let m = try mustLoad("").config.models
        #expect(m.enabled && m.dir == "" && m.keepAliveSeconds == 300 && m.maxLoaded == 0 && m.rescanSeconds == 10)
        #expect(m.copyBytesPerSecond == 0 && m.args.isEmpty)
        #expect(m.directory(stateDir: "/var/lib/meshd") == "/var/lib/meshd/models")
    }

    @Test func keepAliveIsAnOllamaDurationOrSeconds() throws {
        for (text, seconds) in [("5m", 300), ("1h30m", 5400), ("90", 90), ("0", 0), ("-1", -1), ("\"-5m\"", -1), ("2.4s", 2), ("0.2s", 1)] {
            #expect(try mustLoad("models: { keep_alive: \(text) }").config.models.keepAliveSeconds == seconds, "\(text)")
        }
        #expect(try mustLoad("", env: ["MESHD_MODELS_KEEP_ALIVE": "10m"]).config.models.keepAliveSeconds == 600)
        expectSingleError("models: { keep_alive: soon }", key: "models.keep_alive", reasonContains: "must be a duration such as \"5m\"")
        expectSingleError("models: { keep_alive_seconds: 5 }", key: "models.keep_alive_seconds", reasonContains: "known keys in models: enabled, dir, keep_alive,")
    }

    @Test func theSectionLoadsAndRendersBack() throws {
        let loaded = try mustLoad("""
            models: { enabled: false, dir: /srv/models, keep_alive: 1h, max_loaded: 2, rescan_seconds: 3,
                      copy_bytes_per_second: 100000000, args: ["-c", "8192"] }
            """)
        let m = loaded.config.models
        #expect(!m.enabled && m.dir == "/srv/models" && m.keepAliveSeconds == 3600 && m.maxLoaded == 2 && m.rescanSeconds == 3)
        #expect(m.copyBytesPerSecond == 100_000_000 && m.args == ["-c", "8192"])
        #expect(ModelStoreSettings.keepAliveText(3600) == "1h" && ModelStoreSettings.keepAliveText(90) == "90s")
        #expect(ModelStoreSettings.keepAliveText(300) == "5m" && ModelStoreSettings.keepAliveText(-1) == "-1")
        expectSingleError("models: { max_loaded: -1 }", key: "models.max_loaded", reasonContains: "out of range 0...1000")
        expectSingleError("models: { args: [\"-c\\n\"] }", key: "models.args[0]", reasonContains: "control characters")
    }
}
