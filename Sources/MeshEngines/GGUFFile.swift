#if canImport(Glibc)
import Glibc
#endif
import MeshCore

/// Reads a GGUF file's metadata from its first bytes (more only when the header is longer, up to
/// `maxHeaderBytes`), and its size.
public enum GGUFFile {
    public static func read(path: String, firstRead: Int = 1 << 20,
                            maxHeaderBytes: Int = 64 << 20) throws(GGUFError) -> (metadata: GGUFMetadata, fileBytes: Int64) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError(path: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError(path: path, "cannot stat: \(String(cString: strerror(errno)))") }
        let size = Int64(st.st_size)
        var want = min(Int(size), max(64, firstRead))
        var buffer: [UInt8] = []
        while true {
            if buffer.count < want {
                var chunk = [UInt8](repeating: 0, count: want - buffer.count)
                let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(buffer.count)) }
                guard n >= 0 else { throw GGUFError(path: path, "cannot read: \(String(cString: strerror(errno)))") }
                buffer += chunk.prefix(n)
                if n == 0 { want = buffer.count }
            }
            do {
                return (try GGUFReader.parse(buffer), size)
            } catch {
                // A header longer than what was read: read more, within the limit and the file.
                guard error.description.contains("the header ends inside"), buffer.count < min(Int(size), maxHeaderBytes) else {
                    throw GGUFError(path: path, error.description)
                }
                want = min(Int(size), maxHeaderBytes, buffer.count * 4)
            }
        }
    }
}

extension GGUFError {
    init(path: String, _ what: String) { self.init("\(path): \(what)") }
}
