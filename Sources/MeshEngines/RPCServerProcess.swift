#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Synchronization

/// A llama.cpp RPC server (`ggml-rpc-server`, or `rpc-server`) meshd runs for a split lease: bound
/// to loopback only (the mesh relays to it; nothing on the LAN reaches it), with its tensor cache
/// (`-c`, under `LLAMA_CACHE`) in meshd's state directory so a reload resends no large tensor. It
/// dies with meshd (PDEATHSIG) and is stopped with SIGTERM, then SIGKILL, when its lease ends.
public final class RPCServerProcess: Sendable {
    public let port: Int
    public let binary: String
    let child: ChildProcess
    private let logger: Logger

    private init(port: Int, binary: String, child: ChildProcess, logger: Logger) {
        self.port = port
        self.binary = binary
        self.child = child
        self.logger = logger
    }

    public var pid: Int32 { child.pid }
    /// Whether the process has exited (and been reaped).
    public var exited: Bool { child.exitStatus != nil }

    /// Starts it on a free port (found on loopback) and waits until that port accepts connections on loopback
    /// (rpc-server binds `host`, which for `0.0.0.0` includes loopback; a specific LAN address is probed there).
    /// - Parameter host: the address it listens on: loopback (the default; the mesh relays to it), or
    ///   the node's LAN address for `split.transport: direct`.
    public static func start(binary: String, cacheDirectory: String, host: String = "127.0.0.1", threads: Int = 1, logger: Logger,
                             startTimeout: Duration = .seconds(10)) async throws -> RPCServerProcess {
        try FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let port = try freeLoopbackPort()
        var env = ProcessInfo.processInfo.environment
        env["LLAMA_CACHE"] = cacheDirectory
        final class Lines: Sendable { let value = Mutex<[String]>([]) }
        let lines = Lines()
        let child = try await ChildProcess.spawn(
            executable: binary, arguments: ["-H", host, "-p", String(port), "-t", String(max(1, threads)), "-c"],
            environment: env,
            onLine: { line, _ in lines.value.withLock { l in l.append(line); if l.count > 40 { l.removeFirst() } } })
        let server = RPCServerProcess(port: port, binary: binary, child: child, logger: logger)
        let deadline = ContinuousClock.now + startTimeout
        let probe = (host == "0.0.0.0" || host == "::" || host.isEmpty) ? "127.0.0.1" : host
        while !canConnect(host: probe, port: port) {
            if let exit = child.exitStatus {
                let tail = lines.value.withLock { $0.suffix(3).joined(separator: " | ") }
                throw RPCServerError("\(binary) exited during start (\(exit)): \(tail)")
            }
            if ContinuousClock.now >= deadline {
                await server.stop(grace: .milliseconds(500))
                throw RPCServerError("\(binary) did not listen on \(host):\(port) within \(startTimeout)")
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        logger.info("rpc-server started", metadata: ["pid": "\(child.pid)", "port": "\(port)", "binary": "\(binary)"])
        return server
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it has exited.
    public func stop(grace: Duration = .seconds(2)) async {
        guard !exited else { return }
        child.signal(SIGTERM)
        if await child.waitForExit(timeout: grace) != nil { return }
        logger.warning("rpc-server did not exit within \(grace) of SIGTERM; sending SIGKILL", metadata: ["pid": "\(child.pid)"])
        child.signal(SIGKILL)
        _ = await child.waitForExit()
    }

    /// Whether a TCP connection to `host`:`port` (IPv4) is accepted now (closed at once).
    public static func canConnect(host: String = "127.0.0.1", port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr(host)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}

public struct RPCServerError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
