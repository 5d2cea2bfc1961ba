/// Who may see the dashboard (`/ui`, `/ui/state`): clients on loopback, and others that present
/// one of `http.admin_keys` (client keys never grant it). Browsers send the key as HTTP Basic
/// authentication's password (any user name), scripts as `Authorization: Bearer KEY`. Pure.
public enum DashboardAccess {
    public enum Decision: Equatable, Sendable {
        case allowed
        /// 401 with `WWW-Authenticate: Basic`, and why.
        case unauthorized(String)
    }

    /// Whether `ip` (as the socket reports it) is a loopback address: 127.0.0.0/8, ::1, or
    /// 127.0.0.0/8 mapped into IPv6.
    public static func isLoopback(_ ip: String) -> Bool { HostPort.isLoopbackAddress(ip) }

    /// The key an `Authorization` header presents: a Bearer token, or a Basic password.
    public static func presentedKey(_ authorization: String?) -> [UInt8]? {
        guard let auth = authorization else { return nil }
        let parts = auth.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        let scheme = parts[0].lowercased()
        let value = parts[1].drop { $0 == " " }
        if scheme == "bearer" { return Array(value.utf8) }
        guard scheme == "basic", let decoded = base64Decode(Array(value.utf8)), let colon = decoded.firstIndex(of: 0x3A) else { return nil }
        return Array(decoded[(colon + 1)...])
    }

    /// The decision for a request from `remoteIP` carrying `authorization`.
    public static func decide(remoteIP: String?, authorization: String?, adminKeys: [[UInt8]]) -> Decision {
        if let ip = remoteIP, isLoopback(ip) { return .allowed }
        guard !adminKeys.isEmpty else {
            return .unauthorized("the dashboard is served to loopback clients only; set http.admin_keys to open it to others")
        }
        guard let presented = presentedKey(authorization) else {
            return .unauthorized("an admin key (http.admin_keys) is required: HTTP Basic authentication with the key as password, or Authorization: Bearer KEY")
        }
        var found = false
        for k in adminKeys where constantTimeEqual(k, presented) { found = true }
        return found ? .allowed : .unauthorized("the key presented is not one of http.admin_keys")
    }

    /// Compares without an early exit, so timing does not reveal how much of a key matched.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }

    /// Standard base64 (RFC 4648, padding optional); nil when malformed.
    static func base64Decode(_ s: [UInt8]) -> [UInt8]? {
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 65...90: return c - 65
            case 97...122: return c - 71
            case 48...57: return c + 4
            case 43: return 62
            case 47: return 63
            default: return nil
            }
        }
        var input = s[...]
        while input.last == 61 { input = input.dropLast() }
        guard input.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        var acc: UInt32 = 0
        var bits = 0
        for c in input {
            guard let v = value(c) else { return nil }
            acc = (acc << 6) | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((acc >> UInt32(bits)) & 0xFF))
            }
        }
        return out
    }
}
