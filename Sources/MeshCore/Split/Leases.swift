/// A worker's side of splits (issue 13): the head asks a worker's meshd for a lease of memory; the
/// worker runs an RPC server for it while the lease lives, and stops it when the head releases it
/// or stops renewing it. Pure: time comes in as nanoseconds from an injected clock.

/// What a head asks a worker for (`/_mesh/split/lease`, JSON).
public struct LeaseRequest: Sendable, Hashable, Codable {
    /// The split's id (chosen by the head); asking again with the same id renews.
    public var split: String
    /// The head's node id.
    public var head: String
    public var model: String
    /// Memory the worker is to hold for the split.
    public var bytes: Int64
    /// The head's llama.cpp build: the worker's must be the same.
    public var build: String
    /// Seconds the lease lives without a renewal.
    public var ttlSeconds: Int
    /// How the head reaches the worker's rpc-server: relayed over the mesh (nil, `mesh`: bound to
    /// loopback) or `direct` (bound to the worker's LAN address for the life of the lease).
    public var transport: SplitTransport? = nil

    public init(split: String, head: String, model: String, bytes: Int64, build: String, ttlSeconds: Int,
                transport: SplitTransport? = nil) {
        self.transport = transport
        self.split = split
        self.head = head
        self.model = model
        self.bytes = bytes
        self.build = build
        self.ttlSeconds = ttlSeconds
    }
}

/// A lease a worker holds: the terms it was asked for, and its time.
public struct Lease: Sendable, Hashable, Codable {
    public var terms: LeaseRequest
    public var grantedNanos: UInt64
    public var expiresNanos: UInt64

    public var split: String { terms.split }
    public var head: String { terms.head }
    public var model: String { terms.model }
    public var bytes: Int64 { terms.bytes }
    public var build: String { terms.build }
    public var ttlSeconds: Int { terms.ttlSeconds }

    public func secondsLeft(now: UInt64) -> Double { now >= expiresNanos ? 0 : Double(expiresNanos - now) / 1e9 }
}

/// Why a worker refuses a lease (the message names what differs).
public struct LeaseError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable {
        case disabled, noRPCServer = "no_rpc_server", buildMismatch = "build_mismatch", busy, tooLarge = "too_large",
             invalid, unknown
    }
    public var code: Code
    public var message: String
    public var description: String { message }

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// The leases of one worker. A worker serves one split at a time: an rpc-server serves one client.
public struct LeaseTable: Sendable {
    public static let ttlRange = 2...3600
    public private(set) var leases: [String: Lease] = [:]

    public init() {}

    /// Grants (or, for a split it already serves, renews) a lease, or says why not.
    /// - Parameters:
    ///   - enabled: `split.enabled` on this node.
    ///   - build: this node's llama.cpp build, nil without llama.cpp; `rpcServer`: it has an RPC server.
    ///   - offerBytes: memory this node offers now (free, capped by `hardware.offer_bytes`).
    public mutating func request(_ r: LeaseRequest, now: UInt64, enabled: Bool, build: String?, rpcServer: Bool,
                                 offerBytes: Int64) -> Result<Lease, LeaseError> {
        guard enabled else { return .failure(LeaseError(.disabled, "splitting is off on this node (split.enabled: false)")) }
        guard !r.split.isEmpty, !r.head.isEmpty, !r.model.isEmpty else {
            return .failure(LeaseError(.invalid, "a lease needs split, head and model"))
        }
        guard Self.ttlRange.contains(r.ttlSeconds) else {
            return .failure(LeaseError(.invalid, "ttlSeconds \(r.ttlSeconds) is out of range \(Self.ttlRange.lowerBound)...\(Self.ttlRange.upperBound)"))
        }
        guard r.bytes > 0 else { return .failure(LeaseError(.invalid, "bytes must be positive, got \(r.bytes)")) }
        guard let build, rpcServer else {
            return .failure(LeaseError(.noRPCServer, "this node has no llama.cpp RPC server (ggml-rpc-server or rpc-server)"))
        }
        guard build == r.build else {
            return .failure(LeaseError(.buildMismatch, "llama.cpp builds differ: the head runs \(r.build), this node runs \(build)"))
        }
        if var held = leases[r.split] {
            guard held.head == r.head, held.model == r.model, held.bytes == r.bytes else {
                return .failure(LeaseError(.invalid, "split \(r.split) is leased with other terms (head \(held.head), model \(held.model), \(held.bytes) bytes)"))
            }
            held.terms.ttlSeconds = r.ttlSeconds
            held.expiresNanos = now + UInt64(r.ttlSeconds) * 1_000_000_000
            leases[r.split] = held
            return .success(held)
        }
        if let other = leases.values.first {
            return .failure(LeaseError(.busy, "this node is leased to split \(other.split) (head \(other.head), model \(other.model))"))
        }
        guard r.bytes <= offerBytes else {
            return .failure(LeaseError(.tooLarge, "\(r.bytes) bytes asked, this node offers \(offerBytes)"))
        }
        let lease = Lease(terms: r, grantedNanos: now, expiresNanos: now + UInt64(r.ttlSeconds) * 1_000_000_000)
        leases[r.split] = lease
        return .success(lease)
    }

    /// Extends a held lease by its ttl from now.
    public mutating func renew(split: String, now: UInt64) -> Result<Lease, LeaseError> {
        guard var held = leases[split] else { return .failure(LeaseError(.unknown, "no lease for split \(split)")) }
        held.expiresNanos = now + UInt64(held.ttlSeconds) * 1_000_000_000
        leases[split] = held
        return .success(held)
    }

    /// Ends a lease (the head released it, or its server failed); nil when none was held.
    @discardableResult
    public mutating func release(split: String) -> Lease? {
        leases.removeValue(forKey: split)
    }

    /// Removes and returns the leases whose time is up.
    public mutating func expire(now: UInt64) -> [Lease] {
        let gone = leases.values.filter { $0.expiresNanos <= now }
        for l in gone { leases.removeValue(forKey: l.split) }
        return gone.sorted { $0.split < $1.split }
    }

    /// Bytes held by leases.
    public var leasedBytes: Int64 { leases.values.reduce(0) { $0 + $1.bytes } }
}
