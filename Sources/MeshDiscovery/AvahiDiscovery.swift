import CAvahi
import Logging
import Synchronization

/// What this node publishes over DNS-SD: instance name, port and TXT strings (`key=value`).
public struct MDNSAnnouncement: Sendable, Equatable {
    /// Wanted instance name (the node name); Avahi may have to pick an alternative on collision.
    public var name: String
    public var port: UInt16
    public var txt: [String]

    public init(name: String, port: UInt16, txt: [String]) {
        self.name = name
        self.port = port
        self.txt = txt
    }
}

/// A resolved `_meshd._tcp` service seen on the network: a hint where a peer may be.
public struct MDNSService: Sendable, Equatable, Hashable {
    /// DNS-SD instance name.
    public var name: String
    /// IPv4 address as text.
    public var address: String
    public var port: UInt16
    /// TXT record as key → value (a key without `=` maps to "").
    public var txt: [String: String]
    /// Interface index it was seen on.
    public var interface: Int32

    public init(name: String, address: String, port: UInt16, txt: [String: String], interface: Int32) {
        self.name = name
        self.address = address
        self.port = port
        self.txt = txt
        self.interface = interface
    }
}

/// What ``AvahiDiscovery`` reports, in order, from its poll thread.
public enum MDNSEvent: Sendable, Equatable {
    /// The daemon (or the system D-Bus) is not reachable; discovery waits for it.
    case daemonUnavailable(String)
    /// Connected to avahi-daemon (again): publishing and browsing.
    case daemonRunning
    /// Our service is established under this name.
    case published(name: String)
    /// Our name was taken on the network; publishing under `new` instead.
    case nameCollision(old: String, new: String)
    /// A service was resolved (again, or with a changed record).
    case found(MDNSService)
    /// The service with this instance name is gone from every interface.
    case lost(name: String)
}

/// Discovery's health, for `/v1/status` and `meshctl doctor`.
public struct MDNSStatus: Sendable, Equatable {
    /// Connection to avahi-daemon.
    public enum Daemon: String, Sendable, Equatable {
        case starting, running, connecting, unavailable, stopped
    }
    public var daemon: Daemon = .starting
    /// Why the daemon is not running, in words.
    public var detail: String = ""
    /// Our instance name once the daemon confirmed the publication; nil before (or after a reset).
    public var publishedName: String? = nil
    /// Services currently seen (instance name → service), our own excluded.
    public var services: [String: MDNSService] = [:]
    public init() {}
}

/// Publishes this node's `_meshd._tcp` service and browses for others through libavahi-client.
///
/// Avahi's threaded poll owns one thread; every Avahi object is created, used and freed on it (its
/// callbacks) or under its lock (``update(_:)``), never concurrently. The client is created with
/// `AVAHI_CLIENT_NO_FAIL`, so a missing or restarting avahi-daemon is waited for rather than fatal;
/// a missing system D-Bus is retried on a timer. One retained context serves as the userdata of
/// every callback and is released by ``stop()`` once the poll thread has ended.
public final class AvahiDiscovery: Sendable {
    let context: Mutex<Context?> = Mutex(nil)
    let statusBox: StatusBox
    let serviceType: String
    let logger: Logger
    /// Delay before retrying when the system bus itself is missing.
    let retryMs: UInt32

    public init(serviceType: String = "_meshd._tcp", logger: Logger, retryMs: UInt32 = 2000) {
        self.serviceType = serviceType
        self.logger = logger
        self.retryMs = retryMs
        statusBox = StatusBox()
    }

    /// Current status (thread-safe snapshot).
    public var status: MDNSStatus { statusBox.value.withLock { $0 } }

    /// Starts publishing `announcement` and browsing; events arrive on the returned stream until
    /// ``stop()``. Throws if the threaded poll cannot be created or started.
    public func start(_ announcement: MDNSAnnouncement) throws -> AsyncStream<MDNSEvent> {
        let (stream, continuation) = AsyncStream<MDNSEvent>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        guard let poll = avahi_threaded_poll_new() else { throw DiscoveryError.poll("avahi_threaded_poll_new failed") }
        let ctx = Context(poll: poll, serviceType: serviceType, announcement: announcement, continuation: continuation,
                          logger: logger, status: statusBox, retryMs: retryMs)
        let userdata = Unmanaged.passRetained(ctx).toOpaque()
        ctx.userdata = userdata
        // Before the poll thread runs, this thread may use Avahi objects freely.
        ctx.connect()
        guard avahi_threaded_poll_start(poll) == 0 else {
            ctx.teardown()
            avahi_threaded_poll_free(poll)
            Unmanaged<Context>.fromOpaque(userdata).release()
            continuation.finish()
            throw DiscoveryError.poll("avahi_threaded_poll_start failed")
        }
        context.withLock { $0 = ctx }
        return stream
    }

    /// Re-announces with a changed record (TXT updated in place; a new name or port re-publishes).
    public func update(_ announcement: MDNSAnnouncement) {
        guard let ctx = context.withLock({ $0 }) else { return }
        avahi_threaded_poll_lock(ctx.poll)
        ctx.update(announcement)
        avahi_threaded_poll_unlock(ctx.poll)
    }

    /// Withdraws the service, stops the poll thread, frees every Avahi object, releases the
    /// callback context and ends the event stream. Idempotent; never call it from an event consumer
    /// that the poll thread waits on (it does not wait on any).
    public func stop() {
        guard let ctx = context.withLock({ c -> Context? in defer { c = nil }; return c }) else { return }
        avahi_threaded_poll_stop(ctx.poll)
        ctx.teardown()
        avahi_threaded_poll_free(ctx.poll)
        if let ud = ctx.userdata { Unmanaged<Context>.fromOpaque(ud).release() }
        statusBox.value.withLock { $0.daemon = .stopped; $0.publishedName = nil }
        ctx.continuation.finish()
    }

    deinit { stop() }
}

/// Errors starting discovery.
public enum DiscoveryError: Error, CustomStringConvertible {
    case poll(String)
    public var description: String {
        switch self { case .poll(let m): return m }
    }
}

/// Holder of the status mutex, shared by the public type and the context.
final class StatusBox: Sendable {
    let value = Mutex(MDNSStatus())
}

/// Everything the Avahi callbacks touch. Confined to the poll thread (or the poll lock, or before
/// start / after stop), hence `@unchecked Sendable`.
final class Context: @unchecked Sendable {
    let poll: OpaquePointer
    let serviceType: String
    var announcement: MDNSAnnouncement
    let continuation: AsyncStream<MDNSEvent>.Continuation
    let logger: Logger
    let status: StatusBox
    let retryMs: UInt32
    var userdata: UnsafeMutableRawPointer?

    var client: OpaquePointer?
    var group: OpaquePointer?
    var browser: OpaquePointer?
    var retryTimer: OpaquePointer?
    /// The name we publish under (the wanted one, or an alternative after collisions).
    var name: String
    /// Instance name → interfaces it is currently seen on.
    var seenOn: [String: Set<Int32>] = [:]
    var lastUnavailable = ""

    init(poll: OpaquePointer, serviceType: String, announcement: MDNSAnnouncement,
         continuation: AsyncStream<MDNSEvent>.Continuation, logger: Logger, status: StatusBox, retryMs: UInt32) {
        self.poll = poll
        self.serviceType = serviceType
        self.announcement = announcement
        self.continuation = continuation
        self.logger = logger
        self.status = status
        self.retryMs = retryMs
        name = announcement.name.isEmpty ? "meshd" : String(announcement.name.prefix(63))
    }

    static func from(_ ud: UnsafeMutableRawPointer?) -> Context {
        Unmanaged<Context>.fromOpaque(ud!).takeUnretainedValue()
    }

    // MARK: client lifecycle

    func connect() {
        var error: Int32 = 0
        let c = avahi_client_new(avahi_threaded_poll_get(poll), AVAHI_CLIENT_NO_FAIL, { c, state, ud in
            Context.from(ud).clientChanged(c, state)
        }, userdata, &error)
        if c == nil {
            // NO_FAIL covers a missing avahi-daemon, not a missing system bus: retry on a timer.
            unavailable("cannot reach the system D-Bus for avahi-daemon: \(Self.errorText(error))")
            scheduleRetry()
        } else if client == nil {
            client = c
        }
    }

    func clientChanged(_ c: OpaquePointer?, _ state: AvahiClientState) {
        if client == nil { client = c }  // callbacks may run inside avahi_client_new
        switch state {
        case AVAHI_CLIENT_S_RUNNING:
            lastUnavailable = ""
            status.value.withLock { $0.daemon = .running; $0.detail = "" }
            logger.info("mDNS: connected to avahi-daemon", metadata: ["service": "\(serviceType)"])
            continuation.yield(.daemonRunning)
            publish()
            browse()
        case AVAHI_CLIENT_S_COLLISION, AVAHI_CLIENT_S_REGISTERING:
            // The host name changed or collided: withdraw; we publish again once running.
            if let g = group { avahi_entry_group_reset(g) }
            status.value.withLock { $0.publishedName = nil }
        case AVAHI_CLIENT_CONNECTING:
            unavailable("avahi-daemon is not running; waiting for it (static peers still work)")
            status.value.withLock { $0.daemon = .connecting }
        case AVAHI_CLIENT_FAILURE:
            let err = c.map { avahi_client_errno($0) } ?? 0
            unavailable("lost avahi-daemon: \(Self.errorText(err)); reconnecting")
            // The client is unusable now (e.g. the daemon restarted). Free it outside this
            // callback and make a new one, which waits for the daemon to come back.
            scheduleRetry(ms: 0)
        default:
            break
        }
    }

    func unavailable(_ why: String) {
        status.value.withLock { $0.daemon = .unavailable; $0.detail = why; $0.publishedName = nil }
        if why != lastUnavailable {
            lastUnavailable = why
            logger.warning("mDNS discovery unavailable", metadata: ["reason": "\(why)"])
            continuation.yield(.daemonUnavailable(why))
        }
    }

    func scheduleRetry(ms: UInt32? = nil) {
        if let t = retryTimer { meshd_avahi_timeout_free(poll, t) }
        retryTimer = meshd_avahi_timeout_new(poll, ms ?? retryMs, { _, ud in
            let ctx = Context.from(ud)
            if let t = ctx.retryTimer { meshd_avahi_timeout_free(ctx.poll, t) }
            ctx.retryTimer = nil
            ctx.freeClient()
            ctx.connect()
        }, userdata)
    }

    /// Frees the client and with it the entry group, browser and resolvers.
    func freeClient() {
        if let c = client { avahi_client_free(c) }
        client = nil
        group = nil
        browser = nil
        for name in seenOn.keys { continuation.yield(.lost(name: name)) }
        seenOn.removeAll()
        status.value.withLock { $0.services.removeAll(); $0.publishedName = nil }
    }

    /// Called with the poll stopped (or never started).
    func teardown() {
        if let t = retryTimer { meshd_avahi_timeout_free(poll, t) }
        retryTimer = nil
        if let g = group { avahi_entry_group_reset(g) }
        freeClient()
    }

    // MARK: publishing

    func publish() {
        guard let c = client else { return }
        if group == nil {
            group = avahi_entry_group_new(c, { g, state, ud in
                Context.from(ud).groupChanged(g, state)
            }, userdata)
            guard group != nil else {
                logger.warning("mDNS: cannot create entry group", metadata: ["error": "\(Self.errorText(avahi_client_errno(c)))"])
                return
            }
        }
        guard let g = group, avahi_entry_group_is_empty(g) != 0 else { return }
        let ret = withTXT(announcement.txt) { txt in meshd_avahi_add_service(g, name, serviceType, announcement.port, txt) }
        if Int(ret) == Int(AVAHI_ERR_COLLISION) {
            rename()
            return
        }
        guard ret >= 0 else {
            logger.warning("mDNS: cannot add service", metadata: ["name": "\(name)", "error": "\(Self.errorText(ret))"])
            return
        }
        let r = avahi_entry_group_commit(g)
        if r < 0 { logger.warning("mDNS: cannot commit service", metadata: ["error": "\(Self.errorText(r))"]) }
    }

    func groupChanged(_ g: OpaquePointer?, _ state: AvahiEntryGroupState) {
        switch state {
        case AVAHI_ENTRY_GROUP_ESTABLISHED:
            status.value.withLock { $0.publishedName = name }
            logger.info("mDNS: service published", metadata: ["name": "\(name)", "type": "\(serviceType)", "port": "\(announcement.port)"])
            continuation.yield(.published(name: name))
        case AVAHI_ENTRY_GROUP_COLLISION:
            rename()
        case AVAHI_ENTRY_GROUP_FAILURE:
            let err = client.map { avahi_client_errno($0) } ?? 0
            logger.warning("mDNS: publishing failed", metadata: ["error": "\(Self.errorText(err))"])
            status.value.withLock { $0.publishedName = nil }
        default:
            break
        }
    }

    /// Picks Avahi's alternative for a taken name (`alpha` → `alpha #2`) and publishes again.
    func rename() {
        let old = name
        if let alt = avahi_alternative_service_name(old) {
            name = String(cString: alt)
            avahi_free(alt)
        }
        logger.notice("mDNS: service name taken on the network; renamed", metadata: ["old": "\(old)", "new": "\(name)"])
        continuation.yield(.nameCollision(old: old, new: name))
        if let g = group { avahi_entry_group_reset(g) }
        publish()
    }

    /// Under the poll lock: TXT changes are updated in place, a new name or port re-publishes.
    func update(_ a: MDNSAnnouncement) {
        guard a != announcement else { return }
        let republish = a.name != announcement.name || a.port != announcement.port
        if a.name != announcement.name { name = a.name.isEmpty ? "meshd" : String(a.name.prefix(63)) }
        announcement = a
        guard let g = group, client != nil else { return }
        if republish || avahi_entry_group_is_empty(g) != 0 {
            avahi_entry_group_reset(g)
            publish()
        } else {
            let r = withTXT(a.txt) { txt in meshd_avahi_update_txt(g, name, serviceType, txt) }
            if r < 0 { logger.warning("mDNS: cannot update TXT record", metadata: ["error": "\(Self.errorText(r))"]) }
        }
    }

    func withTXT(_ strings: [String], _ body: (UnsafeMutablePointer<AvahiStringList>?) -> Int32) -> Int32 {
        var list: UnsafeMutablePointer<AvahiStringList>? = nil
        for s in strings.reversed() { list = avahi_string_list_add(list, s) }  // add prepends
        defer { avahi_string_list_free(list) }
        return body(list)
    }

    // MARK: browsing

    func browse() {
        guard browser == nil, let c = client else { return }
        browser = meshd_avahi_browse(c, serviceType, { _, iface, proto, event, name, type, domain, flags, ud in
            Context.from(ud).browsed(iface, proto, event, name, type, domain, flags)
        }, userdata)
        if browser == nil {
            logger.warning("mDNS: cannot browse", metadata: ["error": "\(Self.errorText(avahi_client_errno(c)))"])
        }
    }

    func browsed(_ iface: AvahiIfIndex, _ proto: AvahiProtocol, _ event: AvahiBrowserEvent,
                 _ name: UnsafePointer<CChar>?, _ type: UnsafePointer<CChar>?, _ domain: UnsafePointer<CChar>?,
                 _ flags: AvahiLookupResultFlags) {
        switch event {
        case AVAHI_BROWSER_NEW:
            guard let name, let type, let domain, let c = client, meshd_avahi_result_is_own(flags) == 0 else { return }
            // The resolver frees itself in its callback.
            if meshd_avahi_resolve(c, iface, proto, name, type, domain, { r, iface, _, event, name, _, _, _, addr, port, txt, flags, ud in
                Context.from(ud).resolved(iface, event, name, addr, port, txt, flags)
                if let r { avahi_service_resolver_free(r) }
            }, userdata) == nil {
                logger.debug("mDNS: cannot resolve", metadata: ["name": "\(String(cString: name))"])
            }
        case AVAHI_BROWSER_REMOVE:
            guard let name else { return }
            let n = String(cString: name)
            guard var ifaces = seenOn[n] else { return }
            ifaces.remove(iface)
            if ifaces.isEmpty {
                seenOn[n] = nil
                _ = status.value.withLock { $0.services.removeValue(forKey: n) }
                continuation.yield(.lost(name: n))
            } else {
                seenOn[n] = ifaces
            }
        case AVAHI_BROWSER_FAILURE:
            let err = client.map { avahi_client_errno($0) } ?? 0
            logger.warning("mDNS: browsing failed", metadata: ["error": "\(Self.errorText(err))"])
            if let b = browser { avahi_service_browser_free(b) }
            browser = nil
        default:
            break
        }
    }

    func resolved(_ iface: AvahiIfIndex, _ event: AvahiResolverEvent, _ name: UnsafePointer<CChar>?,
                  _ addr: UnsafePointer<AvahiAddress>?, _ port: UInt16, _ txt: UnsafeMutablePointer<AvahiStringList>?,
                  _ flags: AvahiLookupResultFlags) {
        guard event == AVAHI_RESOLVER_FOUND, let name, let addr, meshd_avahi_result_is_own(flags) == 0 else { return }
        var buf = [CChar](repeating: 0, count: Int(AVAHI_ADDRESS_STR_MAX))
        let address = buf.withUnsafeMutableBufferPointer { b -> String in
            avahi_address_snprint(b.baseAddress, b.count, addr)
            return String(cString: b.baseAddress!)
        }
        let service = MDNSService(name: String(cString: name), address: address, port: port,
                                  txt: Self.pairs(txt), interface: Int32(iface))
        seenOn[service.name, default: []].insert(Int32(iface))
        status.value.withLock { $0.services[service.name] = service }
        continuation.yield(.found(service))
    }

    /// TXT strings as key → value; malformed entries (no key, not UTF-8) are dropped.
    static func pairs(_ txt: UnsafeMutablePointer<AvahiStringList>?) -> [String: String] {
        var out: [String: String] = [:]
        var l = txt
        var guardCount = 0
        while let item = l, guardCount < 64 {
            guardCount += 1
            var key: UnsafeMutablePointer<CChar>? = nil
            var value: UnsafeMutablePointer<CChar>? = nil
            var size = 0
            if avahi_string_list_get_pair(item, &key, &value, &size) == 0, let key {
                let k = String(cString: key)
                let v = value.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? ""
                if !k.isEmpty { out[k] = v }
            }
            avahi_free(key)
            avahi_free(value)
            l = avahi_string_list_get_next(item)
        }
        return out
    }

    static func errorText(_ code: Int32) -> String {
        guard let s = avahi_strerror(code) else { return "error \(code)" }
        return String(cString: s)
    }
}
