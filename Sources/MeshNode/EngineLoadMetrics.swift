import MeshCore

/// Per-engine gauges for `/metrics`, read from the registry at scrape time (nothing is recorded
/// per request): requests open to each engine, waiting in meshd's queue for it, and its limit.
enum EngineLoadMetrics {
    static func render(_ snaps: [EngineSnapshot]) -> String {
        var out = """
        # HELP meshd_engine_open_requests Requests meshd has open to the engine now.
        # TYPE meshd_engine_open_requests gauge

        """
        for e in snaps { out += "meshd_engine_open_requests{engine=\"\(label(e.id))\"} \(e.load.open)\n" }
        out += """
        # HELP meshd_engine_queued_requests Requests waiting in meshd's queue for the engine (it is at its limit).
        # TYPE meshd_engine_queued_requests gauge

        """
        for e in snaps { out += "meshd_engine_queued_requests{engine=\"\(label(e.id))\"} \(e.load.queued ?? 0)\n" }
        out += """
        # HELP meshd_engine_concurrency_limit Requests meshd keeps open to the engine at most (absent: no limit).
        # TYPE meshd_engine_concurrency_limit gauge

        """
        for e in snaps {
            if let l = e.load.limit { out += "meshd_engine_concurrency_limit{engine=\"\(label(e.id))\"} \(l)\n" }
        }
        return out
    }

    /// A Prometheus label value: backslash, double quote and newline escaped.
    static func label(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}
