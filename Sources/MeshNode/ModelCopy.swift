#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Crypto
import Foundation
import Logging
import MeshCore
import MeshEngines
import MeshNet
import Synchronization

/// Copies stored models between nodes over mesh tunnels (CURVE-encrypted, credit flow control):
/// a node pulls a model into its store from the nearest node that has it, resuming a partial copy
/// (`.NAME.gguf.partial` in the store folder) and checking the whole file's sha256 before it takes
/// the model in. Also serves its own stored models to peers, and pulls or deletes on a peer's
/// behalf (`meshctl models copy` / `rm` on another node). Decisions: ``ModelCopyPlan``.
final class ModelCopier: Sendable {
    let nodeName: String
    let mesh: MeshService
    let store: ModelStore
    let logger: Logger
    /// The mesh as routing sees it (peers' engines and hops).
    let view: @Sendable () -> [RoutingNode]
    /// Most bytes per second sent to a copying peer (0: no limit).
    let sendRate: Int
    private let state = Mutex(State())

    struct State {
        /// sha256 (hex) of stored files, by path, with the size and mtime it was taken at.
        var digests: [String: (size: Int64, mtime: Int, hex: String)] = [:]
        /// Copies into this store under way, by model: later pulls of the same model wait for it.
        var pulls: [String: Task<Void, any Error>] = [:]
    }

    /// Bytes read and sent at a time (the tunnel cuts them into pieces within its window).
    static let chunkBytes = 1 << 20

    init(nodeName: String, mesh: MeshService, store: ModelStore, logger: Logger, sendRate: Int = 0,
         view: @escaping @Sendable () -> [RoutingNode]) {
        self.sendRate = sendRate
        self.nodeName = nodeName
        self.mesh = mesh
        self.store = store
        self.logger = logger
        self.view = view
    }

    struct CopyError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    // MARK: where models are

    /// Peers whose stores hold `model`, with their hops.
    func holders(_ model: String) -> [ModelCopyPlan.Holder] {
        view().filter { !$0.isLocal }.compactMap { n in
            guard let e = n.engines.first(where: { $0.id == ModelStore.engineID(model) && $0.healthy }) else { return nil }
            return ModelCopyPlan.Holder(node: n.id, hopSeconds: n.hopSeconds > 0 ? n.hopSeconds : nil,
                                        bytes: e.models.first?.sizeBytes)
        }
    }

    // MARK: pulling into this store

    /// Copies `model` into this node's store from the nearest peer that has it; `progress` gets
    /// Ollama pull lines. Returns at once when the store has it. A copy that breaks is resumed from
    /// the next nearest holder (three tries); what was received stays for the next pull.
    func pull(_ model: String, progress: @escaping @Sendable (JSON) -> Void) async throws {
        progress(OllamaPullProgress.manifest)
        if let have = store.file(model) {
            let digest = try await sha256(path: have.path)
            progress(OllamaPullProgress.layer(sha256: digest, total: have.bytes, completed: have.bytes))
            progress(OllamaPullProgress.success)
            return
        }
        let (task, mine) = state.withLock { s -> (Task<Void, any Error>, Bool) in
            if let t = s.pulls[model] { return (t, false) }
            let t = Task<Void, any Error> { [self] in
                defer { state.withLock { _ = $0.pulls.removeValue(forKey: model) } }
                try await pullFromHolders(model, progress: progress)
            }
            s.pulls[model] = t
            return (t, true)
        }
        try await task.value
        if !mine { progress(OllamaPullProgress.success) }
    }

    private func pullFromHolders(_ model: String, progress: @escaping @Sendable (JSON) -> Void) async throws {
        var tried: Set<String> = []
        var lastError: (any Error)?
        for _ in 0..<3 {
            let candidates = holders(model).filter { !tried.contains($0.node) }
            guard let source = ModelCopyPlan.source(candidates, exclude: nodeName) else { break }
            tried.insert(source.node)
            do {
                try await fetch(model, from: source.node, progress: progress)
                progress(OllamaPullProgress.success)
                return
            } catch {
                lastError = error
                logger.warning("copying a model failed; the part received is kept", metadata: [
                    "model": "\(model)", "from": "\(source.node)", "error": "\(error)"])
            }
        }
        if let lastError { throw lastError }
        throw CopyError("model '\(model)' is in no other node's store")
    }

    /// The partial file a copy of `model` writes (hidden from the store's scan).
    func partialPath(_ model: String) -> String { store.directory + "/." + model + ".gguf.partial" }

    /// One copy from `node`: asks from the partial file's end on, appends what comes, and takes
    /// the file into the store once its size and sha256 are the sender's.
    func fetch(_ model: String, from node: String, progress: @escaping @Sendable (JSON) -> Void) async throws {
        let partial = partialPath(model)
        let fd = open(partial, O_RDWR | O_CREAT, 0o644)
        guard fd >= 0 else { throw CopyError("cannot open \(partial): \(String(cString: strerror(errno)))") }
        defer {
            // A copy that got nothing (refused, a full disk, a source gone at once) leaves no empty file behind.
            var end = stat()
            if fstat(fd, &end) == 0, end.st_size == 0 { unlink(partial) }
            close(fd)
        }
        var st = stat()
        fstat(fd, &st)
        let have = Int64(st.st_size)

        let tunnel = try await mesh.openTunnel(to: node, target: ModelCopyPlan.Target.send(model: model).string,
                                               silenceLimit: .seconds(10))
        defer { tunnel.close() }
        try await tunnel.send(ModelCopyPlan.Request(offset: have).line)
        var buffer: [UInt8] = []
        var iterator = tunnel.incoming.makeAsyncIterator()
        var header: ModelCopyPlan.Header?
        while header == nil {
            guard let bytes = try await iterator.next() else { throw CopyError("\(node) closed the copy before its header") }
            tunnel.consumed(bytes.count)
            buffer += bytes
            switch ModelCopyPlan.splitLine(buffer) {
            case nil: continue
            case .some(nil): throw CopyError("\(node) sent a header line too long")
            case .some(let (line, rest))?:
                guard let h = ModelCopyPlan.Header(line: line) else { throw CopyError("\(node) sent a bad header") }
                header = h
                buffer = rest
            }
        }
        guard let header else { throw CopyError("no header") }
        if let e = header.error { throw CopyError("\(node): \(e)") }
        // Room for what is left, before anything is written (a full disk fails here, clearly).
        var vfs = statvfs()
        if statvfs(store.directory, &vfs) == 0 {
            let free = Int64(vfs.f_bavail) * Int64(vfs.f_frsize)
            let need = header.size - min(header.offset, have)
            if need > free {
                throw CopyError("not enough free disk for '\(model)' in \(store.directory): it needs \(need >> 20) MiB more, "
                                + "\(free >> 20) MiB are free")
            }
        }
        // The bytes before the offset are taken as they are (a resumed copy): hashed from the disk.
        guard ftruncate(fd, off_t(header.offset)) == 0 else { throw CopyError("cannot truncate \(partial)") }
        var hasher = Crypto.SHA256()
        if header.offset > 0 { try hashFile(fd: fd, upTo: header.offset, into: &hasher) }
        guard lseek(fd, off_t(header.offset), SEEK_SET) >= 0 else { throw CopyError("cannot seek \(partial)") }
        if header.offset > 0 {
            logger.info("resuming a model copy", metadata: ["model": "\(model)", "from": "\(node)", "offset": "\(header.offset)"])
        }
        var completed = header.offset
        var lastReport = ContinuousClock.now - .seconds(1)
        progress(OllamaPullProgress.layer(sha256: header.sha256, total: header.size, completed: completed))
        func take(_ bytes: [UInt8]) throws {
            guard !bytes.isEmpty else { return }
            guard completed + Int64(bytes.count) <= header.size else { throw CopyError("\(node) sent more than the file's size") }
            try writeAll(fd, bytes, path: partial)
            hasher.update(data: bytes)
            completed += Int64(bytes.count)
            let now = ContinuousClock.now
            if now - lastReport >= .milliseconds(200) || completed == header.size {
                lastReport = now
                progress(OllamaPullProgress.layer(sha256: header.sha256, total: header.size, completed: completed))
            }
        }
        try take(buffer)
        while let bytes = try await iterator.next() {
            try take(bytes)
            tunnel.consumed(bytes.count)
        }
        guard completed == header.size else {
            throw CopyError("\(node) ended the copy at \(completed) of \(header.size) bytes")
        }
        progress(OllamaPullProgress.verifying)
        let digest = hex(hasher.finalize())
        guard digest == header.sha256 else {
            unlink(partial)
            throw CopyError("the copy of '\(model)' from \(node) does not match its sha256 (\(digest) ≠ \(header.sha256)); discarded")
        }
        fsync(fd)
        progress(OllamaPullProgress.writing)
        let final = store.directory + "/" + model + ".gguf"
        guard rename(partial, final) == 0 else { throw CopyError("cannot move the copy into place: \(String(cString: strerror(errno)))") }
        state.withLock { s in s.digests[final] = nil }
        logger.notice("model copied", metadata: ["model": "\(model)", "from": "\(node)", "bytes": "\(header.size)"])
        await store.rescan()
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw CopyError("cannot write \(path): \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    private func hashFile(fd: Int32, upTo end: Int64, into hasher: inout Crypto.SHA256) throws {
        var buf = [UInt8](repeating: 0, count: Self.chunkBytes)
        var at: Int64 = 0
        while at < end {
            let want = Int(min(Int64(buf.count), end - at))
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, want, off_t(at)) }
            guard n > 0 else { throw CopyError("cannot read back the partial copy") }
            hasher.update(data: buf[0..<n])
            at += Int64(n)
        }
    }

    /// The sha256 (hex) of a stored file, cached while its size and mtime stay the same.
    func sha256(path: String) async throws -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { throw CopyError("cannot stat \(path)") }
        let size = Int64(st.st_size), mtime = Int(st.st_mtim.tv_sec)
        if let d = state.withLock({ $0.digests[path] }), d.size == size, d.mtime == mtime { return d.hex }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CopyError("cannot open \(path)") }
        defer { close(fd) }
        var hasher = Crypto.SHA256()
        try hashFile(fd: fd, upTo: size, into: &hasher)
        let digest = hex(hasher.finalize())
        state.withLock { $0.digests[path] = (size, mtime, digest) }
        return digest
    }

    private func hex(_ d: some Sequence<UInt8>) -> String {
        d.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    // MARK: serving peers

    /// A peer's tunnel to `model/NAME`, `pull/NAME` or `delete/NAME`: accepted when this node has
    /// a store; the work runs once the opener has sent its first line (so nothing is sent before
    /// the opener has the tunnel).
    func accept(_ tunnel: MeshTunnel, from node: String, target: ModelCopyPlan.Target) -> String? {
        Task { [self] in
            switch target {
            case .send(let model): await send(model, on: tunnel, to: node)
            case .pull(let model): await pullForPeer(model, on: tunnel, for: node)
            case .delete(let model): await deleteForPeer(model, on: tunnel, for: node)
            case .copy(let source, let destination): await copyForPeer(source, as: destination, on: tunnel, for: node)
            }
        }
        return nil
    }

    /// Reads the opener's first line.
    private func firstLine(_ tunnel: MeshTunnel) async throws -> [UInt8] {
        var buffer: [UInt8] = []
        for try await bytes in tunnel.incoming {
            tunnel.consumed(bytes.count)
            buffer += bytes
            switch ModelCopyPlan.splitLine(buffer) {
            case nil: continue
            case .some(nil): throw CopyError("first line too long")
            case .some(let (line, _))?: return line
            }
        }
        throw CopyError("closed before its first line")
    }

    private func send(_ model: String, on tunnel: MeshTunnel, to node: String) async {
        do {
            guard let request = ModelCopyPlan.Request(line: try await firstLine(tunnel)) else {
                tunnel.close(reason: "bad request line")
                return
            }
            guard let file = store.file(model) else {
                try await tunnel.send(ModelCopyPlan.Header(error: "model '\(model)' is not in \(nodeName)'s store").line)
                tunnel.close()
                return
            }
            let digest = try await sha256(path: file.path)
            let fd = open(file.path, O_RDONLY)
            guard fd >= 0 else { throw CopyError("cannot open \(file.path)") }
            defer { close(fd) }
            var st = stat()
            fstat(fd, &st)
            let size = Int64(st.st_size)
            let offset = ModelCopyPlan.startOffset(requested: request.offset, size: size)
            logger.info("sending a stored model", metadata: ["model": "\(model)", "to": "\(node)", "offset": "\(offset)", "bytes": "\(size)"])
            try await tunnel.send(ModelCopyPlan.Header(size: size, sha256: digest, offset: offset).line)
            var at = offset
            var buf = [UInt8](repeating: 0, count: Self.chunkBytes)
            let began = ContinuousClock.now
            while at < size {
                if sendRate > 0 {
                    // Paced: never ahead of `sendRate` since the start.
                    let due = began + .nanoseconds(Int64(Double(at - offset) / Double(sendRate) * 1e9))
                    if due > ContinuousClock.now { try await Task.sleep(until: due) }
                }
                let want = Int(min(Int64(buf.count), size - at))
                let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, want, off_t(at)) }
                guard n > 0 else { throw CopyError("cannot read \(file.path) at \(at)") }
                try await tunnel.send(n == buf.count ? buf : Array(buf[0..<n]))
                at += Int64(n)
            }
            tunnel.close()
        } catch {
            logger.warning("sending a stored model ended early", metadata: ["model": "\(model)", "to": "\(node)", "error": "\(error)"])
            tunnel.close(reason: "\(error)")
        }
    }

    /// A peer asks this node to copy `model` into its store: progress lines go back as they come
    /// (Ollama pull lines), the last being `success` or `error`.
    private func pullForPeer(_ model: String, on tunnel: MeshTunnel, for node: String) async {
        do {
            _ = try await firstLine(tunnel)
        } catch {
            tunnel.close(reason: "\(error)")
            return
        }
        logger.info("copying a model at a peer's request", metadata: ["model": "\(model)", "for": "\(node)"])
        let lines = AsyncStream<JSON>.makeStream()
        let forward = Task {
            for await line in lines.stream { _ = try? await tunnel.send(line.serialized() + [10]) }
        }
        do {
            try await pull(model) { lines.continuation.yield($0) }
        } catch {
            lines.continuation.yield(OllamaPullProgress.error("\(error)"))
        }
        lines.continuation.finish()
        await forward.value
        tunnel.close()
    }

    /// A peer asks this node to delete `model` from its store; one line back: `{"deleted": bool}` or `{"error": ...}`.
    private func deleteForPeer(_ model: String, on tunnel: MeshTunnel, for node: String) async {
        do {
            _ = try await firstLine(tunnel)
            let deleted = try await store.delete(model)
            logger.info("deleting a stored model at a peer's request", metadata: ["model": "\(model)", "for": "\(node)", "deleted": "\(deleted)"])
            try await tunnel.send(JSON.object([("deleted", .bool(deleted))]).serialized() + [10])
        } catch {
            _ = try? await tunnel.send(OllamaPullProgress.error("\(error)").serialized() + [10])
        }
        tunnel.close()
    }

    /// A peer asks this node to store `source` again as `destination`; one line back: `{"copied": bool}` or `{"error": ...}`.
    private func copyForPeer(_ source: String, as destination: String, on tunnel: MeshTunnel, for node: String) async {
        do {
            _ = try await firstLine(tunnel)
            let copied = try await store.copy(source, to: destination)
            try await tunnel.send(JSON.object([("copied", .bool(copied))]).serialized() + [10])
        } catch {
            _ = try? await tunnel.send(OllamaPullProgress.error("\(error)").serialized() + [10])
        }
        tunnel.close()
    }

    // MARK: asking peers

    /// Asks `node` to copy `model` into its store; its progress lines come to `progress`. Throws
    /// with the peer's error line, or when the tunnel fails.
    func pull(_ model: String, on node: String, progress: @escaping @Sendable (JSON) -> Void) async throws {
        if node == nodeName { return try await pull(model, progress: progress) }
        let tunnel = try await mesh.openTunnel(to: node, target: ModelCopyPlan.Target.pull(model: model).string, silenceLimit: .seconds(10))
        defer { tunnel.close() }
        try await tunnel.send(Array("{}\n".utf8))
        var buffer: [UInt8] = []
        var failure: String?
        var succeeded = false
        for try await bytes in tunnel.incoming {
            tunnel.consumed(bytes.count)
            buffer += bytes
            while case .some(let split?) = ModelCopyPlan.splitLine(buffer, limit: 1 << 16) {
                buffer = split.rest
                guard let line = try? JSONParser.parse(split.line) else { continue }
                if let e = line["error"]?.stringValue { failure = e }
                if line["status"]?.stringValue == "success" { succeeded = true }
                progress(line)
            }
        }
        if let failure { throw CopyError(failure) }
        guard succeeded else { throw CopyError("\(node) ended the copy without success") }
    }

    /// Deletes `model` from `node`'s store (this node's or a peer's); false when it had none.
    func delete(_ model: String, on node: String) async throws -> Bool {
        if node == nodeName { return try await store.delete(model) }
        return try await ask(node, .delete(model: model), answer: "deleted")
    }

    /// Stores `source` again as `destination` on `node` (this node or a peer); false when it has no `source`.
    func copy(_ source: String, as destination: String, on node: String) async throws -> Bool {
        if node == nodeName { return try await store.copy(source, to: destination) }
        return try await ask(node, .copy(source: source, destination: destination), answer: "copied")
    }

    /// Opens `target` on `node`, sends `{}`, and reads the boolean `answer` of its one line back.
    private func ask(_ node: String, _ target: ModelCopyPlan.Target, answer: String) async throws -> Bool {
        let tunnel = try await mesh.openTunnel(to: node, target: target.string, silenceLimit: .seconds(10))
        defer { tunnel.close() }
        try await tunnel.send(Array("{}\n".utf8))
        var buffer: [UInt8] = []
        for try await bytes in tunnel.incoming {
            tunnel.consumed(bytes.count)
            buffer += bytes
            if case .some(let split?) = ModelCopyPlan.splitLine(buffer, limit: 1 << 16) {
                let line = try JSONParser.parse(split.line)
                if let e = line["error"]?.stringValue { throw CopyError("\(node): \(e)") }
                return line[answer]?.boolValue ?? false
            }
        }
        throw CopyError("\(node) closed without an answer")
    }
}

/// Sends each peer's tunnel to the part of the node that serves its target: split relays
/// (`rpc/...`) and model copies (`model/`, `pull/`, `delete/`).
final class TunnelDispatch: MeshTunnelAcceptor {
    let split: (any MeshTunnelAcceptor)?
    let copier: ModelCopier?

    init(split: (any MeshTunnelAcceptor)?, copier: ModelCopier?) {
        self.split = split
        self.copier = copier
    }

    func acceptTunnel(_ tunnel: MeshTunnel, from node: String, target: String) async -> String? {
        if let t = ModelCopyPlan.Target(target) {
            guard let copier else { return "this node has no model store" }
            return copier.accept(tunnel, from: node, target: t)
        }
        if target.hasPrefix("rpc/"), let split { return await split.acceptTunnel(tunnel, from: node, target: target) }
        return "no tunnel target \(target) on this node"
    }
}
