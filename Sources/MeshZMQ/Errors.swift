import CZeroMQ

/// Errors from the ZeroMQ layer: libzmq failures, invalid keys, and calls made after the loop stopped.
public enum MeshZMQError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A libzmq call failed; `errno` is `zmq_errno()` and `message` is `zmq_strerror(errno)`.
    case zmq(operation: String, errno: Int32, message: String)
    /// libzmq was built without CURVE support (`zmq_has("curve") == 0`); the mesh refuses to run unencrypted.
    case curveUnavailable
    /// A key was not 32 bytes / not valid Z85.
    case invalidKey(String)
    /// The loop has been stopped (or is stopping); the command was not accepted.
    case stopped
    /// `connect` was called with a peer id that already has a DEALER.
    case peerExists(MeshPeerID)
    /// The loop thread could not be started.
    case threadStartFailed(Int32)

    public var description: String {
        switch self {
        case let .zmq(operation, errno, message): "\(operation) failed: \(message) (errno \(errno))"
        case .curveUnavailable: "libzmq was built without CURVE (libsodium) support; refusing to run an unencrypted mesh"
        case let .invalidKey(reason): "invalid CURVE key: \(reason)"
        case .stopped: "the ZeroMQ loop is stopped"
        case let .peerExists(peer): "a connection to peer \(peer) already exists"
        case let .threadStartFailed(rc): "could not start the ZeroMQ loop thread (pthread_create: \(rc))"
        }
    }

    /// Builds `.zmq` from the calling thread's current `zmq_errno()`.
    static func lastZMQ(_ operation: String) -> MeshZMQError {
        let code = zmq_errno()
        return .zmq(operation: operation, errno: code, message: zmqErrorMessage(code))
    }
}

func zmqErrorMessage(_ code: Int32) -> String {
    guard let text = zmq_strerror(code) else { return "error \(code)" }
    return String(cString: text)
}
