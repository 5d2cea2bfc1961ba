#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `write(2)`; a free function because inside ``MeshSecret`` the name `write` is the method.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    Glibc.write(fd, buffer, count)
    #elseif canImport(Musl)
    Musl.write(fd, buffer, count)
    #else
    Darwin.write(fd, buffer, count)
    #endif
}

/// Why a mesh secret file could not be read or written. Descriptions name the file, never its content.
public enum MeshSecretError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file's mode grants group or other users some access; it must be 0600 or stricter.
    case insecurePermissions(path: String, mode: UInt32)
    /// The file is not one line of 64 hex digits (or not 32 bytes when given as bytes).
    case malformed(path: String, reason: String)
    /// `write(path:force: false)` found an existing file.
    case alreadyExists(path: String)
    /// The path is not a regular file.
    case notRegularFile(path: String)
    /// A system call failed.
    case io(path: String, operation: String, errno: Int32)

    public var description: String {
        switch self {
        case let .insecurePermissions(path, mode):
            "mesh secret file \(path) has mode \(String(mode & 0o7777, radix: 8)); it must not be accessible by group or others (run: chmod 600 \(path))"
        case let .malformed(path, reason):
            "mesh secret file \(path) is malformed: \(reason) (expected one line of 64 hex digits)"
        case let .alreadyExists(path):
            "mesh secret file \(path) already exists; refusing to overwrite it without force"
        case let .notRegularFile(path):
            "mesh secret path \(path) is not a regular file"
        case let .io(path, operation, code):
            "mesh secret file \(path): \(operation) failed: \(String(cString: strerror(code))) (errno \(code))"
        }
    }
}

/// The secret shared by every node of one mesh: 32 random bytes.
///
/// **File format:** a single line holding the 32 bytes as 64 hexadecimal digits (lower case when written;
/// either case accepted when read), followed by a newline. Surrounding ASCII whitespace is ignored; anything
/// else is rejected. The file must be a regular file with mode 0600 or stricter (no group/other bits).
///
/// **Derivation:** the mesh's CURVE keypair is ``curveKeyPair()``: secret key =
/// SHA-256("meshd-curve-v1" ‖ secret bytes), public key = Curve25519 base-point multiple of it (via
/// `zmq_curve_public`). Every node uses this keypair as both its CURVE server and client key, so a node with a
/// different secret derives a different keypair and can neither finish the handshake nor pass the ZAP check.
///
/// `description` never prints the secret.
public struct MeshSecret: Sendable, Equatable, CustomStringConvertible {
    /// Length of the secret in bytes.
    public static let byteCount = 32
    /// Domain-separation prefix hashed before the secret to derive the CURVE secret key.
    public static let curveDerivationLabel = "meshd-curve-v1"
    /// Largest file `load` reads; the real content is 65 bytes.
    static let maxFileSize = 4096

    /// The raw secret. Never log it.
    public let bytes: [UInt8]

    /// Wraps 32 raw bytes.
    public init(bytes: [UInt8]) throws(MeshSecretError) {
        guard bytes.count == Self.byteCount else {
            throw .malformed(path: "<memory>", reason: "need \(Self.byteCount) bytes, got \(bytes.count)")
        }
        self.bytes = bytes
    }

    /// 32 bytes from the system CSPRNG (`getrandom` on Linux, `arc4random` on Darwin).
    public static func generate() -> MeshSecret {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<byteCount).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
        return try! MeshSecret(bytes: bytes)  // exactly byteCount bytes
    }

    /// Parses the file format (one line of 64 hex digits); `path` is only used in the error.
    public static func parse(_ text: [UInt8], path: String = "<memory>") throws(MeshSecretError) -> MeshSecret {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        var slice = text[...]
        while let first = slice.first, isSpace(first) { slice.removeFirst() }
        while let last = slice.last, isSpace(last) { slice.removeLast() }
        guard slice.count == byteCount * 2 else {
            throw .malformed(path: path, reason: "expected 64 hex digits, found \(slice.count) non-blank characters")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(byteCount)
        var iterator = slice.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            guard let h = hexValue(high), let l = hexValue(low) else {
                throw .malformed(path: path, reason: "contains a character that is not a hex digit")
            }
            bytes.append(h << 4 | l)
        }
        return try MeshSecret(bytes: bytes)
    }

    /// The file content: 64 lower-case hex digits and a newline.
    public var fileContent: [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(Self.byteCount * 2 + 1)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        out.append(0x0A)
        return out
    }

    /// Reads a secret file, refusing it if its mode grants any group/other access, it is not a regular file,
    /// or its content is malformed. Permissions are checked on the opened descriptor (no check-then-open race).
    public static func load(path: String) throws(MeshSecretError) -> MeshSecret {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(path: path, operation: "fstat", errno: errno) }
        guard (UInt32(info.st_mode) & UInt32(S_IFMT)) == UInt32(S_IFREG) else { throw .notRegularFile(path: path) }
        let mode = UInt32(info.st_mode) & 0o7777
        guard mode & 0o077 == 0 else { throw .insecurePermissions(path: path, mode: mode) }

        var content: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            content.append(contentsOf: buffer[0..<n])
            guard content.count <= maxFileSize else { throw .malformed(path: path, reason: "file is larger than \(maxFileSize) bytes") }
        }
        defer {
            for i in content.indices { content[i] = 0 }
            for i in buffer.indices { buffer[i] = 0 }
        }
        return try parse(content, path: path)
    }

    /// Writes the secret to `path` with mode 0600; the file is never accessible to others, not even briefly.
    ///
    /// Without `force` the file is created with `open(O_CREAT | O_EXCL | O_NOFOLLOW, 0600)`, so an existing file
    /// (or symlink) is refused with ``MeshSecretError/alreadyExists(path:)``. With `force` the content goes to a
    /// fresh 0600 temporary file in the same directory, is fsynced, and is `rename`d over `path` (atomic replace).
    public func write(path: String, force: Bool = false) throws(MeshSecretError) {
        if force {
            try writeReplacing(path: path)
        } else {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                let code = errno
                if code == EEXIST { throw .alreadyExists(path: path) }
                throw .io(path: path, operation: "open", errno: code)
            }
            do throws(MeshSecretError) {
                try Self.fillAndClose(fd: fd, content: fileContent, path: path)
            } catch {
                unlink(path)
                throw error
            }
        }
    }

    private func writeReplacing(path: String) throws(MeshSecretError) {
        let directory: String
        let name: String
        if let slash = path.lastIndex(of: "/") {
            directory = slash == path.startIndex ? "/" : String(path[..<slash])
            name = String(path[path.index(after: slash)...])
        } else {
            directory = "."
            name = path
        }
        var rng = SystemRandomNumberGenerator()
        let suffix = String(rng.next() as UInt64, radix: 16)
        let temporary = (directory == "/" ? "" : directory) + "/." + name + ".tmp-" + suffix
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: temporary, operation: "open", errno: errno) }
        do throws(MeshSecretError) {
            try Self.fillAndClose(fd: fd, content: fileContent, path: temporary)
            guard rename(temporary, path) == 0 else { throw MeshSecretError.io(path: path, operation: "rename", errno: errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        let dirFD = open(directory, O_RDONLY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }

    /// Forces mode 0600 (umask can only remove bits, this also removes any set-id bits), writes, fsyncs, closes.
    private static func fillAndClose(fd: Int32, content: [UInt8], path: String) throws(MeshSecretError) {
        var closed = false
        defer { if !closed { close(fd) } }
        guard fchmod(fd, 0o600) == 0 else { throw .io(path: path, operation: "fchmod", errno: errno) }
        var written = 0
        while written < content.count {
            let n = content.withUnsafeBytes { posixWrite(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, operation: "write", errno: errno)
            }
            written += n
        }
        guard fsync(fd) == 0 else { throw .io(path: path, operation: "fsync", errno: errno) }
        closed = true
        guard close(fd) == 0 else { throw .io(path: path, operation: "close", errno: errno) }
    }

    /// The mesh's shared CURVE keypair: secret = SHA-256("meshd-curve-v1" ‖ secret), public from `zmq_curve_public`.
    public func curveKeyPair() throws(MeshZMQError) -> CurveKeyPair {
        try CurveKeyPair.fromSecretKey(SHA256.hash(Array(Self.curveDerivationLabel.utf8) + bytes))
    }

    public var description: String { "MeshSecret(<redacted>)" }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }
}
