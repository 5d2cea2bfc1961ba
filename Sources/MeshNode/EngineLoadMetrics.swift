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
        out += """
        # HELP meshd_engine_healthy Whether the engine answered its last poll (1) or not (0).
        # TYPE meshd_engine_healthy gauge

        """
        for e in snaps { out += "meshd_engine_healthy{engine=\"\(label(e.id))\"} \(e.healthy ? 1 : 0)\n" }
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

/// Split counters and speeds for `/metrics` (issue 13), read at scrape time.
enum SplitMetrics {
    /// The split counters; a node that heads no splits (no managed model, or splitting off) says 0,
    /// so rules and dashboards find the series on every node.
    static func render(_ head: SplitHead?, engines: [EngineSnapshot]) -> String {
        let (started, failed) = head?.counts ?? (0, 0)
        var out = """
        # HELP meshd_splits_started_total Splits this node headed that came to serve.
        # TYPE meshd_splits_started_total counter
        meshd_splits_started_total \(started)
        # HELP meshd_splits_failed_total Splits this node headed that failed (a worker died or went silent, or the split did not start).
        # TYPE meshd_splits_failed_total counter
        meshd_splits_failed_total \(failed)
        # HELP meshd_split_tokens_per_second Measured decode speed of each split this node heads.
        # TYPE meshd_split_tokens_per_second gauge

        """
        let speeds = Dictionary(engines.map { ($0.id, $0.speeds.decodeTokensPerSecond) }, uniquingKeysWith: { a, _ in a })
        for (split, model, engine) in head?.runningSplits ?? [] {
            guard let tps = speeds[engine] ?? nil else { continue }
            out += "meshd_split_tokens_per_second{split=\"\(EngineLoadMetrics.label(split))\",model=\"\(EngineLoadMetrics.label(model))\"} \(tps)\n"
        }
        return out
    }
}
