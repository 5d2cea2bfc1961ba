import MeshCore
import MeshNet

/// `/metrics` lines of cache-aware routing: what the shadows predicted and the engines reported,
/// what they hold, and what sharing them with peers costs.
enum CacheMetrics {
    static func render(_ cache: CacheShadows, mesh: MeshService?) -> String {
        let stats = cache.stats()
        var out = """
        # HELP meshd_cache_predicted_tokens_total Prompt tokens the shadow predicted a local engine would take from its cache (requests it reported on).
        # TYPE meshd_cache_predicted_tokens_total counter
        # HELP meshd_cache_reported_tokens_total Prompt tokens a local engine reported it took from its cache.
        # TYPE meshd_cache_reported_tokens_total counter
        # HELP meshd_cache_accuracy Share of predicted cached tokens the engine really reused, smoothed (matches are discounted by it).
        # TYPE meshd_cache_accuracy gauge
        # HELP meshd_cache_blocks Prompt blocks (64 bytes of rendered prompt) the shadow holds per engine and tier.
        # TYPE meshd_cache_blocks gauge
        # HELP meshd_cache_slot_corrections_total Slots of a local engine whose shadow was corrected by what the engine said they hold (llama-server /slots).
        # TYPE meshd_cache_slot_corrections_total counter

        """
        for s in stats {
            let e = EngineLoadMetrics.label(s.engine)
            out += "meshd_cache_predicted_tokens_total{engine=\"\(e)\"} \(s.predicted)\n"
            out += "meshd_cache_reported_tokens_total{engine=\"\(e)\"} \(s.reported)\n"
            out += "meshd_cache_accuracy{engine=\"\(e)\"} \(s.accuracy)\n"
            out += "meshd_cache_blocks{engine=\"\(e)\",tier=\"device\"} \(s.blocks)\n"
            out += "meshd_cache_blocks{engine=\"\(e)\",tier=\"ram\"} \(s.ramBlocks)\n"
            out += "meshd_cache_slot_corrections_total{engine=\"\(e)\"} \(s.slotCorrections)\n"
        }
        if let mesh {
            let t = mesh.cacheTraffic
            out += """
            # HELP meshd_cache_deltas_sent_total Cache delta messages sent to peers (one per peer).
            # TYPE meshd_cache_deltas_sent_total counter
            meshd_cache_deltas_sent_total \(t.deltasSent)
            # HELP meshd_cache_delta_bytes_sent_total Bytes of cache delta messages sent to peers (all frames).
            # TYPE meshd_cache_delta_bytes_sent_total counter
            meshd_cache_delta_bytes_sent_total \(t.bytesSent)
            # HELP meshd_cache_deltas_received_total Cache delta and snapshot messages received from peers.
            # TYPE meshd_cache_deltas_received_total counter
            meshd_cache_deltas_received_total \(t.received)
            # HELP meshd_cache_snapshots_total Cache snapshots asked of peers (a delta was missing) and sent to them.
            # TYPE meshd_cache_snapshots_total counter
            meshd_cache_snapshots_total{kind="asked"} \(t.snapshotsAsked)
            meshd_cache_snapshots_total{kind="sent"} \(t.snapshotsSent)

            """
        }
        return out
    }
}

/// `/metrics` lines of the mesh queue (late binding).
enum QueueMetrics {
    static func render(_ q: MeshQueue) -> String {
        let s = q.stats()
        return """
        # HELP meshd_queue_waiting Requests waiting in this node's mesh queue for an engine to free up.
        # TYPE meshd_queue_waiting gauge
        meshd_queue_waiting \(s.waiting)
        # HELP meshd_queue_requests_total Requests that left the mesh queue: to an engine, refused (full: 429), or timed out (503).
        # TYPE meshd_queue_requests_total counter
        meshd_queue_requests_total{outcome="served"} \(s.served)
        meshd_queue_requests_total{outcome="rejected"} \(s.rejected)
        meshd_queue_requests_total{outcome="timed_out"} \(s.timedOut)
        # HELP meshd_queue_wait_seconds_total Seconds requests let go from the mesh queue had waited, summed.
        # TYPE meshd_queue_wait_seconds_total counter
        meshd_queue_wait_seconds_total \(s.waitedSeconds)
        # HELP meshd_queue_wait_seconds_max The longest a request let go from the mesh queue had waited.
        # TYPE meshd_queue_wait_seconds_max gauge
        meshd_queue_wait_seconds_max \(s.maxWaitedSeconds)

        """
    }
}
