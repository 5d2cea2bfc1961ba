import CCurl
import MeshCore

/// Loop-thread-only state of one transfer: the easy handle, its header list, timers and the head parser.
///
/// A retained reference (`Unmanaged.passRetained`) is handed to curl as `WRITEDATA`/`HEADERDATA`/`PRIVATE`
/// and released in ``cleanup()``, after the easy handle has been destroyed.
final class ActiveTransfer {
    let state: TransferState
    let easy: UnsafeMutableRawPointer
    private let loop: CurlLoop
    private let pool: EasyHandlePool
    private let deliveries: PendingDeliveries
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private var retainedSelf: UnsafeMutableRawPointer?

    private let firstByteDeadline: ContinuousClock.Instant?
    private let idleTimeout: Duration?
    private var lastActivity: ContinuousClock.Instant
    private var headReceived = false
    private var paused = false
    /// Whether this transfer's reads may be spaced out (a streamed body, coalescing configured).
    let coalesces: Bool
    /// When to read this stream again (loop thread; see ``ReadCoalescer``).
    var coalescer: ReadCoalescer
    /// Body chunks accepted since the loop last asked (``takeChunkCount()``).
    private var chunksSinceRead = 0

    // Head parser (final response only; 1xx blocks are skipped).
    private var parsedStatus = 0
    private var parsedHeaders: [(String, String)] = []

    init(
        request: HTTPClientRequest,
        state: TransferState,
        configuration: HTTPClientConfiguration,
        loop: CurlLoop,
        pool: EasyHandlePool,
        deliveries: PendingDeliveries,
        now: ContinuousClock.Instant
    ) throws(HTTPClientError) {
        let firstByte = request.firstByteTimeout ?? configuration.firstByteTimeout
        let idle = request.idleTimeout ?? configuration.idleTimeout
        self.state = state
        self.loop = loop
        self.pool = pool
        self.deliveries = deliveries
        self.firstByteDeadline = firstByte > .zero ? now + firstByte : nil
        self.idleTimeout = idle > .zero ? idle : nil
        self.lastActivity = now
        let window = configuration.streamCoalesce
        self.coalesces = !state.collectWhole && window > .zero
        self.coalescer = ReadCoalescer(windowNanos: coalesces ? UInt64(max(0, window.nanoseconds)) : 0)

        let headerLines = try Self.headerLines(for: request)
        guard let easy = pool.take() else {
            throw .transport(code: -1, message: "curl_easy_init failed")
        }
        self.easy = easy
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        loop.liveContexts.add(1, ordering: .relaxed)
        let context = Unmanaged.passRetained(self).toOpaque()
        retainedSelf = context

        for line in headerLines {
            guard let appended = curl_slist_append(headerList, line) else {
                cleanup()
                throw .transport(code: Int(CURLE_OUT_OF_MEMORY.rawValue), message: "curl_slist_append failed")
            }
            headerList = appended
        }

        var rc = CURLE_OK
        func set(_ result: CURLcode) { if rc == CURLE_OK { rc = result } }
        set(meshd_curl_easy_setopt_ptr(easy, CURLOPT_ERRORBUFFER, errorBuffer))
        set(meshd_curl_easy_setopt_str(easy, CURLOPT_URL, request.url))
        set(meshd_curl_easy_setopt_str(easy, CURLOPT_PROTOCOLS_STR, "http,https"))
        set(meshd_curl_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1))
        set(meshd_curl_easy_setopt_long(easy, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1)))
        set(meshd_curl_easy_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, max(1, configuration.connectTimeout.meshCeilMilliseconds)))
        set(meshd_curl_easy_setopt_long(easy, CURLOPT_TCP_NODELAY, 1))
        set(meshd_curl_easy_setopt_long(easy, CURLOPT_TCP_KEEPALIVE, 1))
        // Ignore http_proxy & co. from the environment: engines are local, and a stray proxy would break them.
        set(meshd_curl_easy_setopt_str(easy, CURLOPT_PROXY, ""))
        if let caFile = request.caFile ?? configuration.caFile {
            set(meshd_curl_easy_setopt_str(easy, CURLOPT_CAINFO, caFile))
        }
        set(meshd_curl_easy_setopt_ptr(easy, CURLOPT_PRIVATE, context))
        set(meshd_curl_easy_setopt_datacb(easy, CURLOPT_WRITEFUNCTION, curlWriteCallback))
        set(meshd_curl_easy_setopt_ptr(easy, CURLOPT_WRITEDATA, context))
        set(meshd_curl_easy_setopt_datacb(easy, CURLOPT_HEADERFUNCTION, curlHeaderCallback))
        set(meshd_curl_easy_setopt_ptr(easy, CURLOPT_HEADERDATA, context))
        set(meshd_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, headerList))

        let method = request.method
        if !request.body.isEmpty || method == "POST" || method == "PUT" || method == "PATCH" {
            set(meshd_curl_easy_setopt_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count)))
            if request.body.isEmpty {
                set(meshd_curl_easy_setopt_str(easy, CURLOPT_COPYPOSTFIELDS, ""))
            } else {
                set(request.body.withUnsafeBytes { bytes in
                    meshd_curl_easy_setopt_ptr(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress))
                })
            }
            if method != "POST" {
                set(meshd_curl_easy_setopt_str(easy, CURLOPT_CUSTOMREQUEST, method))
            }
        } else if method == "HEAD" {
            set(meshd_curl_easy_setopt_long(easy, CURLOPT_NOBODY, 1))
        } else if method == "GET" {
            set(meshd_curl_easy_setopt_long(easy, CURLOPT_HTTPGET, 1))
        } else {
            set(meshd_curl_easy_setopt_str(easy, CURLOPT_CUSTOMREQUEST, method))
        }

        guard rc == CURLE_OK else {
            let message = String(cString: curl_easy_strerror(rc))
            cleanup()
            throw .transport(code: Int(rc.rawValue), message: message)
        }
    }

    deinit {
        loop.liveContexts.subtract(1, ordering: .relaxed)
    }

    /// Header lines for the slist; rejects CR/LF injection and lets curl own `Content-Length`.
    private static func headerLines(for request: HTTPClientRequest) throws(HTTPClientError) -> [String] {
        let method = request.method
        guard !method.isEmpty, method.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .transport(code: Int(CURLE_BAD_FUNCTION_ARGUMENT.rawValue), message: "invalid HTTP method")
        }
        var lines: [String] = []
        var hasExpect = false
        var hasContentType = false
        for (name, value) in request.headers {
            let invalidName = name.isEmpty || name.utf8.contains { $0 <= 0x20 || $0 == UInt8(ascii: ":") || $0 >= 0x7F }
            let invalidValue = value.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }
            if invalidName || invalidValue {
                throw .transport(code: Int(CURLE_BAD_FUNCTION_ARGUMENT.rawValue), message: "invalid header \(name.debugDescription)")
            }
            switch name.lowercased() {
            case "content-length": continue
            case "expect": hasExpect = true
            case "content-type": hasContentType = true
            default: break
            }
            // "Name;" is curl's syntax for a header with an empty value ("Name:" would remove it).
            lines.append(value.isEmpty ? "\(name);" : "\(name): \(value)")
        }
        if !hasExpect { lines.append("Expect:") }
        if !hasContentType { lines.append("Content-Type:") }
        return lines
    }

    /// Returns the easy handle to the pool and frees the header list, error buffer and the context
    /// reference held for curl. The easy handle must already be detached from the multi handle.
    func cleanup() {
        pool.give(easy)
        curl_slist_free_all(headerList)
        headerList = nil
        errorBuffer.deallocate()
        if let retainedSelf {
            self.retainedSelf = nil
            Unmanaged<ActiveTransfer>.fromOpaque(retainedSelf).release()
        }
    }

    // MARK: timers

    /// The next instant at which this transfer may time out, if any.
    var nextDeadline: ContinuousClock.Instant? {
        if !headReceived { return firstByteDeadline }
        if paused { return nil }
        return idleTimeout.map { lastActivity + $0 }
    }

    func expiredError(now: ContinuousClock.Instant) -> HTTPClientError? {
        guard let deadline = nextDeadline, now >= deadline else { return nil }
        return headReceived ? .idleTimeout : .firstByteTimeout
    }

    // MARK: events (loop thread)

    /// Body chunks accepted since the last call.
    func takeChunkCount() -> Int {
        defer { chunksSinceRead = 0 }
        return chunksSinceRead
    }

    func resume(now: ContinuousClock.Instant) {
        state.prepareResume()
        paused = false
        lastActivity = now
        _ = curl_easy_pause(easy, CURLPAUSE_CONT)
    }

    /// Transfer finished (successfully or not) according to `CURLMSG_DONE`.
    func complete(code: CURLcode) {
        if code == CURLE_OK {
            if !headReceived { deliverHead() }
            state.finish()
            return
        }
        var message = String(cString: errorBuffer)
        if message.isEmpty { message = String(cString: curl_easy_strerror(code)) }
        if !headReceived, Self.isConnectFailure(code) {
            state.fail(.connectFailed(message))
        } else {
            state.fail(.transport(code: Int(code.rawValue), message: message))
        }
    }

    private static func isConnectFailure(_ code: CURLcode) -> Bool {
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY,
            CURLE_OPERATION_TIMEDOUT,  // only the connect timeout is configured in curl
            CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE,
            CURLE_SSL_CERTPROBLEM, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            return true
        default:
            return false
        }
    }

    private func deliverHead() {
        headReceived = true
        lastActivity = ContinuousClock.now
        var status = parsedStatus
        if status == 0 {
            var code = 0
            _ = meshd_curl_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &code)
            status = code
        }
        state.deliverHead(HTTPClientResponseHead(status: status, headers: parsedHeaders))
        parsedHeaders = []
    }

    fileprivate func onHeaderLine(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if headReceived { return true }  // trailers
        if state.isCompleted { return false }
        var line = bytes[...]
        while let last = line.last, last == 0x0A || last == 0x0D { line = line.dropLast() }
        if line.isEmpty {
            if parsedStatus >= 100 && parsedStatus < 200 {
                parsedStatus = 0
                parsedHeaders = []
            } else {
                deliverHead()
            }
            return true
        }
        if line.starts(with: Self.httpPrefix) {
            let text = String(decoding: line, as: UTF8.self)
            let parts = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
            parsedStatus = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            parsedHeaders = []
        } else if let first = line.first, first == 0x20 || first == 0x09 {
            if let last = parsedHeaders.popLast() {  // obsolete line folding
                parsedHeaders.append((last.0, last.1 + " " + Self.trimmedString(line)))
            }
        } else if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            // Trim on bytes and build each String once: this runs for every header of every response.
            parsedHeaders.append((Self.trimmedString(line[..<colon]), Self.trimmedString(line[(colon + 1)...])))
        }
        return true
    }

    static let httpPrefix: [UInt8] = Array("HTTP/".utf8)

    static func trimmedString(_ bytes: Slice<UnsafeRawBufferPointer>) -> String {
        var lo = bytes.startIndex
        var hi = bytes.endIndex
        while lo < hi, bytes[lo] == 0x20 || bytes[lo] == 0x09 { lo += 1 }
        while hi > lo, bytes[hi - 1] == 0x20 || bytes[hi - 1] == 0x09 { hi -= 1 }
        return String(decoding: bytes[lo..<hi], as: UTF8.self)
    }

    fileprivate func onBody(_ bytes: UnsafeRawBufferPointer) -> Int {
        if !headReceived { deliverHead() }
        guard !bytes.isEmpty else { return 0 }
        switch state.offer(bytes) {
        case .accepted:
            lastActivity = ContinuousClock.now
            chunksSinceRead += 1
            return bytes.count
        case .acceptedWake:
            lastActivity = ContinuousClock.now
            chunksSinceRead += 1
            deliveries.transfers.append(self)
            return bytes.count
        case .pause:
            paused = true
            return Int(CURL_WRITEFUNC_PAUSE)
        case .reject:
            return 0  // aborts the transfer with CURLE_WRITE_ERROR; it has already been failed
        }
    }
}

private func curlWriteCallback(
    _ pointer: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ userdata: UnsafeMutableRawPointer?
) -> Int {
    guard let userdata else { return 0 }
    let transfer = Unmanaged<ActiveTransfer>.fromOpaque(userdata).takeUnretainedValue()
    return transfer.onBody(UnsafeRawBufferPointer(start: pointer, count: size * count))
}

private func curlHeaderCallback(
    _ pointer: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ userdata: UnsafeMutableRawPointer?
) -> Int {
    guard let userdata else { return 0 }
    let transfer = Unmanaged<ActiveTransfer>.fromOpaque(userdata).takeUnretainedValue()
    let total = size * count
    return transfer.onHeaderLine(UnsafeRawBufferPointer(start: pointer, count: total)) ? total : 0
}

/// Transfers whose waiting consumer is to be woken once the loop is done with the current read
/// (loop thread only): one read's chunks reach the consumer in one wake, not one per chunk.
final class PendingDeliveries {
    var transfers: [ActiveTransfer] = []

    /// Wakes every consumer listed.
    func flush() {
        guard !transfers.isEmpty else { return }
        let due = transfers
        transfers.removeAll(keepingCapacity: true)
        for transfer in due { transfer.state.wakeConsumer() }
    }
}

/// Easy handles kept between transfers (loop thread only). A finished transfer's handle is reset
/// with `curl_easy_reset` and reused, instead of a `curl_easy_init`/`curl_easy_cleanup` pair per
/// request; connections live in the multi handle's cache either way.
final class EasyHandlePool {
    private var idle: [UnsafeMutableRawPointer] = []
    private let loop: CurlLoop
    /// Most idle handles kept; more are freed.
    static let limit = 16

    init(loop: CurlLoop) {
        self.loop = loop
    }

    /// A fresh or reset handle, counted in use; nil when curl cannot allocate one.
    func take() -> UnsafeMutableRawPointer? {
        guard let easy = idle.popLast() ?? curl_easy_init() else { return nil }
        loop.liveEasyHandles.add(1, ordering: .relaxed)
        return easy
    }

    /// Takes back a handle no longer attached to the multi handle.
    func give(_ easy: UnsafeMutableRawPointer) {
        loop.liveEasyHandles.subtract(1, ordering: .relaxed)
        if idle.count < Self.limit {
            curl_easy_reset(easy)
            idle.append(easy)
        } else {
            curl_easy_cleanup(easy)
        }
    }

    /// Frees every idle handle (at shutdown).
    func drain() {
        for easy in idle { curl_easy_cleanup(easy) }
        idle = []
    }
}
