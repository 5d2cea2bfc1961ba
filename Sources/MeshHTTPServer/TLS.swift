import NIOCore
import NIOSSL
import Synchronization

/// The TLS identity the HTTP listener serves (`http.tls`): a certificate chain and its private key
/// read from PEM files. ``reload(certFile:keyFile:)`` reads them again (a renewed certificate):
/// new connections get the new one, open ones keep theirs.
public final class HTTPServerTLS: Sendable {
    private struct Current {
        var certFile: String
        var keyFile: String
        var context: NIOSSLContext
    }

    private let current: Mutex<Current>

    /// Reads the files now; throws ``HTTPServerTLSError`` naming the file that cannot be used.
    public init(certFile: String, keyFile: String) throws {
        current = Mutex(Current(certFile: certFile, keyFile: keyFile, context: try Self.context(certFile, keyFile)))
    }

    /// Reads the (possibly other) files again; on an error the current identity stays.
    public func reload(certFile: String, keyFile: String) throws {
        apply(try Self.prepare(certFile: certFile, keyFile: keyFile))
    }

    /// An identity read from files, not served yet (so a reload can check everything first).
    public struct Prepared: Sendable {
        let certFile: String
        let keyFile: String
        let context: NIOSSLContext
    }

    public static func prepare(certFile: String, keyFile: String) throws -> Prepared {
        Prepared(certFile: certFile, keyFile: keyFile, context: try context(certFile, keyFile))
    }

    /// Serves `p` to new connections from now on.
    public func apply(_ p: Prepared) {
        current.withLock { $0 = Current(certFile: p.certFile, keyFile: p.keyFile, context: p.context) }
    }

    public var files: (cert: String, key: String) { current.withLock { ($0.certFile, $0.keyFile) } }

    /// The handler that terminates TLS on a new connection, with the identity served now.
    func handler() -> NIOSSLServerHandler { NIOSSLServerHandler(context: current.withLock { $0.context }) }

    static func context(_ certFile: String, _ keyFile: String) throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certFile)
        } catch {
            throw HTTPServerTLSError(file: certFile, key: "http.tls.cert_file", reason: "not a readable PEM certificate chain (\(error))")
        }
        guard !chain.isEmpty else { throw HTTPServerTLSError(file: certFile, key: "http.tls.cert_file", reason: "holds no certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        } catch {
            throw HTTPServerTLSError(file: keyFile, key: "http.tls.key_file", reason: "not a readable PEM private key (\(error))")
        }
        var config = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        config.minimumTLSVersion = .tlsv12
        config.applicationProtocols = ["http/1.1"]
        do {
            return try NIOSSLContext(configuration: config)
        } catch {
            throw HTTPServerTLSError(file: keyFile, key: "http.tls.key_file", reason: "does not match the certificate in \(certFile) (\(error))")
        }
    }
}

/// A TLS file that cannot be served, with the configuration key that names it.
public struct HTTPServerTLSError: Error, Sendable, CustomStringConvertible {
    public let file: String
    public let key: String
    public let reason: String
    public var description: String { "\(key): \(file): \(reason)" }
}
