import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.0 client over meshd's admin unix socket (one request per connection).
struct AdminClient {
    let socketPath: String

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    func get(_ path: String) throws -> (Int, Data) { try request("GET", path) }

    func post(_ path: String) throws -> (Int, Data) { try request("POST", path) }

    /// The whole response (status, body); at most 64 MiB, 10 s of silence at most.
    func request(_ method: String, _ path: String, body: [UInt8] = []) throws -> (Int, Data) {
        var out: [UInt8] = []
        let status = try stream(method, path, body: body, silenceSeconds: 10) { bytes in
            out += bytes
            if out.count > 64 << 20 { throw Failure(description: "response too large") }
        }
        return (status, Data(out))
    }

    /// Sends the request and hands the body to `onBody` as it arrives (a streamed answer: a model
    /// copy's progress lines); returns the status once the node closes. `silenceSeconds`: the
    /// longest wait for the next bytes.
    func stream(_ method: String, _ path: String, body: [UInt8] = [], silenceSeconds: Int,
                onBody: ([UInt8]) throws -> Void) throws -> Int {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: String(cString: strerror(errno))) }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw Failure(description: "socket path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw Failure(description: String(cString: strerror(errno))) }
        var tv = timeval(tv_sec: silenceSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var request = Array("\(method) \(path) HTTP/1.0\r\nHost: meshd\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
        request += body
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: String(cString: strerror(errno))) }
            sent += n
        }
        var head: [UInt8] = []
        var status: Int?
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else {
                if errno == EAGAIN || errno == EWOULDBLOCK { throw Failure(description: "meshd sent nothing for \(silenceSeconds) s") }
                throw Failure(description: "read failed: \(String(cString: strerror(errno)))")
            }
            if status != nil {
                try onBody(Array(buf[0..<n]))
                continue
            }
            head += buf[0..<n]
            guard let sep = head.firstRange(of: Array("\r\n\r\n".utf8)) else {
                if head.count > 64 << 10 { throw Failure(description: "malformed HTTP response") }
                continue
            }
            let text = String(decoding: head[..<sep.lowerBound], as: UTF8.self)
            let parts = (text.split(separator: "\r\n").first ?? "").split(separator: " ")
            guard parts.count >= 2, let s = Int(parts[1]) else { throw Failure(description: "malformed status line") }
            status = s
            let rest = Array(head[sep.upperBound...])
            if !rest.isEmpty { try onBody(rest) }
        }
        guard let status else { throw Failure(description: "malformed HTTP response") }
        return status
    }
}
