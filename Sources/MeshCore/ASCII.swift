/// Byte-level ASCII comparisons for header names and media types on the request path: no
/// Foundation (whose `contains`/`lowercased` bridge through NSString and cost microseconds a call).
public enum ASCII {
    @inline(__always)
    static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    /// `a == b` ignoring the case of ASCII letters.
    public static func equalsIgnoringCase(_ a: String, _ b: String) -> Bool {
        let x = a.utf8, y = b.utf8
        guard x.count == y.count else { return false }
        return zip(x, y).allSatisfy { lower($0) == lower($1) }
    }

    /// Whether `haystack` contains `needle`, ignoring the case of ASCII letters.
    public static func contains(_ haystack: String, _ needle: String) -> Bool {
        var h = haystack, n = needle  // native strings give contiguous UTF-8 without a copy
        return h.withUTF8 { hb in n.withUTF8 { nb in contains(hb, nb) } }
    }

    static func contains(_ h: UnsafeBufferPointer<UInt8>, _ n: UnsafeBufferPointer<UInt8>) -> Bool {
        if n.isEmpty { return true }
        guard h.count >= n.count else { return false }
        outer: for start in 0...(h.count - n.count) {
            for k in 0..<n.count where lower(h[start + k]) != lower(n[k]) { continue outer }
            return true
        }
        return false
    }
}
