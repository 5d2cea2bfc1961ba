import CZeroMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin typed wrappers over libzmq socket calls, used only on the loop thread.
enum ZMQSocketOps {
    static func setInt(_ socket: UnsafeMutableRawPointer, _ option: Int32, _ value: Int32, _ name: String) throws(MeshZMQError) {
        var v = value
        guard zmq_setsockopt(socket, option, &v, MemoryLayout<Int32>.size) == 0 else { throw .lastZMQ("zmq_setsockopt(\(name))") }
    }

    static func setInt64(_ socket: UnsafeMutableRawPointer, _ option: Int32, _ value: Int64, _ name: String) throws(MeshZMQError) {
        var v = value
        guard zmq_setsockopt(socket, option, &v, MemoryLayout<Int64>.size) == 0 else { throw .lastZMQ("zmq_setsockopt(\(name))") }
    }

    static func setBytes(_ socket: UnsafeMutableRawPointer, _ option: Int32, _ value: [UInt8], _ name: String) throws(MeshZMQError) {
        let rc = value.withUnsafeBytes { zmq_setsockopt(socket, option, $0.baseAddress, $0.count) }
        guard rc == 0 else { throw .lastZMQ("zmq_setsockopt(\(name))") }
    }

    static func setString(_ socket: UnsafeMutableRawPointer, _ option: Int32, _ value: String, _ name: String) throws(MeshZMQError) {
        try setBytes(socket, option, Array(value.utf8), name)
    }

    /// `ZMQ_EVENTS` (`ZMQ_POLLIN`/`ZMQ_POLLOUT` bits); 0 when it cannot be read.
    static func events(_ socket: UnsafeMutableRawPointer) -> Int32 {
        var value: Int32 = 0
        var length = MemoryLayout<Int32>.size
        return zmq_getsockopt(socket, ZMQ_EVENTS, &value, &length) == 0 ? value : 0
    }

    /// `ZMQ_FD`: the descriptor that becomes readable when the socket may have events (edge-triggered).
    static func fileDescriptor(_ socket: UnsafeMutableRawPointer) -> Int32? {
        var fd: Int32 = -1
        var length = MemoryLayout<Int32>.size
        return zmq_getsockopt(socket, ZMQ_FD, &fd, &length) == 0 && fd >= 0 ? fd : nil
    }

    static func lastEndpoint(_ socket: UnsafeMutableRawPointer) -> String? {
        var buffer = [CChar](repeating: 0, count: 512)
        var length = buffer.count
        guard zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, &buffer, &length) == 0 else { return nil }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Sets linger 0 and closes; used on every path that tears a socket down during stop.
    static func closeNow(_ socket: UnsafeMutableRawPointer) {
        var zero: Int32 = 0
        _ = zmq_setsockopt(socket, ZMQ_LINGER, &zero, MemoryLayout<Int32>.size)
        _ = zmq_close(socket)
    }

    /// Sends `frames` as one multi-part message without blocking. Returns nil on success or the errno of the
    /// first frame's failure (libzmq accepts the rest of a multi-part message once the first frame is queued).
    static func sendMultipart(_ socket: UnsafeMutableRawPointer, _ frames: [[UInt8]]) -> Int32? {
        for (index, frame) in frames.enumerated() {
            let flags = ZMQ_DONTWAIT | (index < frames.count - 1 ? ZMQ_SNDMORE : 0)
            while true {
                let rc = frame.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, flags) }
                if rc >= 0 { break }
                let code = zmq_errno()
                if code == EINTR { continue }
                return code
            }
        }
        return nil
    }

    /// A message read from a socket.
    struct Received {
        var frames: [[UInt8]]
        /// Set when a limit was exceeded: the frames were drained and discarded.
        var violation: String?
        var userID: String?
        var peerAddress: String?
    }

    /// Reads one whole multi-part message without blocking (nil when none is ready). When it has more than
    /// `maxFrames` frames or more than `maxBytes` in total, the rest is drained and discarded, only the first frame
    /// is kept (a ROUTER's routing id), and the message is returned with a `violation`.
    /// `metadataFrame` is the index of the frame whose "User-Id"/"Peer-Address" properties are read.
    static func receiveMultipart(_ socket: UnsafeMutableRawPointer, maxFrames: Int, maxBytes: Int, metadataFrame: Int) -> Received? {
        var received = Received(frames: [], violation: nil)
        var total = 0
        var index = 0
        while true {
            var message = zmq_msg_t()
            zmq_msg_init(&message)
            defer { zmq_msg_close(&message) }
            let rc = zmq_msg_recv(&message, socket, index == 0 ? ZMQ_DONTWAIT : 0)
            if rc < 0 {
                let code = zmq_errno()
                if code == EINTR { continue }
                if index == 0 { return nil }
                received.violation = "receive failed mid-message: \(zmqErrorMessage(code))"
                return received
            }
            let size = zmq_msg_size(&message)
            total += size
            if received.violation == nil {
                if index >= maxFrames {
                    received.violation = "more than \(maxFrames) frames"
                } else if total > maxBytes {
                    received.violation = "more than \(maxBytes) bytes in total"
                }
                if received.violation != nil {
                    received.frames = Array(received.frames.prefix(1))  // keep a ROUTER's routing id
                } else {
                    let base = zmq_msg_data(&message)
                    received.frames.append(size == 0 || base == nil ? [] : Array(UnsafeRawBufferPointer(start: base, count: size)))
                }
            }
            if index == metadataFrame {
                if let value = zmq_msg_gets(&message, "User-Id") { received.userID = String(cString: value) }
                if let value = zmq_msg_gets(&message, "Peer-Address") { received.peerAddress = String(cString: value) }
            }
            index += 1
            if zmq_msg_more(&message) == 0 { return received }
        }
    }
}
