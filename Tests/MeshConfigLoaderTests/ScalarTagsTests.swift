@testable import MeshConfigLoader
import Testing
import Yams

/// The config loader resolves plain scalars itself (``ScalarTags``) instead of with Yams' default
/// resolver (ICU regular expressions): both must give every scalar the same tag.
@Suite struct ScalarTagsTests {
    static let samples: [String] = [
        "", "~", "null", "Null", "NULL", "nul", "yes", "Yes", "YES", "yEs", "no", "on", "OFF", "true", "True", "tRUE", "false", "y", "n",
        "0", "00", "07", "08", "0o17", "0o", "0b101", "0b", "0b12", "0x1F", "0xg", "0x", "-0x1f", "+12", "-0", "1_000", "_1", "1_",
        "12:30", "1:5", "1:60", "1:555", "190:20:30", "-1:20", "0:30", "12:30.5", "1:2:3.", "3.14", "-3.14", "+.5", ".5", "._5",
        "1.", "1.e5", "1e5", "1E+5", "1e", "1e+", ".5e-3", ".5e3", "1_0.0_1", ".inf", "-.Inf", "+.INF", ".iNf", ".nan", ".NaN", "-.nan",
        "<<", "=", "==", "2026-12-07", "2026-1-7", "2026-12-07T10:20:30", "2026-12-07t1:20:30.5Z", "2026-12-07 10:20:30 +01:00",
        "2026-12-07 10:20:30-5", "2026-12-07  10:20:30.123 Z", "2026-12-07T10:20", "20261-12-07", "2026-12-7",
        "127.0.0.1:11435", "1.2.3", "v1", "llama3:8b", "qwen*", "sk-abc", "0.0.0.0", "::", "1h", "5s", "1e5x", "+", "-", ".", "..",
    ]

    @Test func sameTagsAsYamsDefaultResolver() throws {
        var checked = 0
        for s in Self.samples {
            // Each sample as a plain scalar (those YAML would read as something else are skipped).
            guard let node = try? Yams.compose(yaml: "v: \(s)"), let value = node.mapping?["v"], case .scalar(let sc) = value,
                  sc.string == s else { continue }
            let expected = Tag.Name(rawValue: value.tag.rawValue)
            #expect(ScalarTags.resolve(s) == expected, "'\(s)': \(ScalarTags.resolve(s)) vs Yams \(expected)")
            checked += 1
        }
        #expect(checked > Self.samples.count - 10)
        #expect(ScalarTags.bool("Yes") == true && ScalarTags.bool("OFF") == false && ScalarTags.bool("y") == nil)
    }

    /// Strings built from the characters the rules care about, compared the same way.
    @Test func generatedScalarsAgree() throws {
        let alphabet = Array("0159_:.-+eExbo T Z")
        var rng = SystemRandomNumberGenerator()
        var mismatches: [String] = []
        for _ in 0..<3000 {
            let n = Int.random(in: 1...9, using: &rng)
            let s = String((0..<n).map { _ in alphabet.randomElement(using: &rng)! })
            guard let node = try? Yams.compose(yaml: "v: \(s)"), let value = node.mapping?["v"], case .scalar(let sc) = value,
                  sc.string == s else { continue }
            if ScalarTags.resolve(s) != Tag.Name(rawValue: value.tag.rawValue) { mismatches.append(s) }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(20))")
    }
}
