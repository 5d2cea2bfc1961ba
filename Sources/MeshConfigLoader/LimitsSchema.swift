import MeshCore

/// `limits.per_key`: key name → { rpm, tpm, concurrency, models }, each over `limits.default`.
enum LimitsSchema {
    static let perKey = StructuredKey(
        path: ["limits", "per_key"], shape: .map, what: "limits such as { rpm: 60, tpm: 100000, concurrency: 4, models: [llama3] }",
        keys: [RecordKey("rpm", .int), RecordKey("tpm", .int), RecordKey("concurrency", .int), RecordKey("models", .stringList)],
        apply: { config, records in
            var out: [String: KeyLimits] = [:]
            var problems: [RecordProblem] = []
            for (i, r) in records.enumerated() {
                var ok = true
                let name = r.name ?? ""
                if !ClientKey.isName(Substring(name)) {
                    problems.append(RecordProblem(index: i, key: nil, reason: "is not a key name (1 to 64 of A-Z a-z 0-9 _ . -)"))
                    ok = false
                }
                for key in ["rpm", "tpm", "concurrency"] {
                    if let n = r.int(key), n < 1 {
                        problems.append(RecordProblem(index: i, key: key, reason: "must be at least 1, got \(n)"))
                        ok = false
                    }
                }
                let models = r.list("models") ?? []
                for m in models {
                    if let why = Check.name(m) {
                        problems.append(RecordProblem(index: i, key: "models", reason: "'\(m)' \(why)"))
                        ok = false
                    }
                }
                if r.values.isEmpty {
                    problems.append(RecordProblem(index: i, key: nil, reason: "sets no limit; give rpm, tpm, concurrency and/or models"))
                    ok = false
                }
                if ok { out[name] = KeyLimits(rpm: r.int("rpm"), tpm: r.int("tpm"), concurrency: r.int("concurrency"), models: models) }
            }
            if problems.isEmpty { config.limits.perKey = out }
            return problems
        },
        read: { config in
            let m = config.limits.perKey
            return m.keys.sorted().map { name in
                let l = m[name]!
                var v: [String: FieldValue] = [:]
                if let n = l.rpm { v["rpm"] = .int(n) }
                if let n = l.tpm { v["tpm"] = .int(n) }
                if let n = l.concurrency { v["concurrency"] = .int(n) }
                if !l.models.isEmpty { v["models"] = .list(l.models) }
                return ParsedRecord(name: name, values: v)
            }
        })
}
