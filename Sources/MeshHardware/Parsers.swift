import MeshCore

/// A parsed value together with what could not be parsed (each problem a short sentence).
public struct Parsed<Value: Sendable>: Sendable {
    public var value: Value
    public var problems: [String]

    public init(_ value: Value, problems: [String] = []) {
        self.value = value
        self.problems = problems
    }
}

/// The pure parsers for what hardware tools and kernel files print. None of them throws: bad
/// input yields what could be read plus problems.
public enum HardwareParsers {
    static let mebibyte: Int64 = 1 << 20

    /// Arguments that make `nvidia-smi` print the CSV ``nvidiaSMI(_:)`` reads.
    public static let nvidiaSMIArguments = ["--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]
    /// Arguments for `rocm-smi` memory sizes (``rocmSMI(memory:names:)``).
    public static let rocmSMIMemoryArguments = ["--showmeminfo", "vram", "--json"]
    /// Arguments for `rocm-smi` product names.
    public static let rocmSMINameArguments = ["--showproductname", "--json"]

    // MARK: nvidia-smi

    /// Parses `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`
    /// (sizes in MiB). `[N/A]`-style values become unknown sizes; unreadable lines are skipped.
    public static func nvidiaSMI(_ text: String) -> Parsed<[DeviceMemory]> {
        var devices: [DeviceMemory] = []
        var bad: [String] = []
        var unknown = Set<String>()
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmed
            if line.isEmpty { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmed }
            // A name with a comma in it spreads over the middle fields.
            guard fields.count >= 4, let index = Int(fields[0]), index >= 0 else {
                bad.append(line)
                continue
            }
            let name = fields[1..<(fields.count - 2)].joined(separator: ", ")
            let totalField = fields[fields.count - 2], freeField = fields[fields.count - 1]
            let total = mebibytes(totalField), free = mebibytes(freeField)
            // `[N/A]` is an honest "unknown"; anything else unreadable makes the line garbage.
            guard total != nil || isPlaceholder(totalField), free != nil || isPlaceholder(freeField) else {
                bad.append(line)
                continue
            }
            if total == nil || free == nil { unknown.insert("GPU \(index)") }
            devices.append(DeviceMemory(kind: .nvidia, index: index, name: isPlaceholder(name) || name.isEmpty ? "NVIDIA GPU" : name,
                                        totalBytes: total, freeBytes: free))
        }
        var problems: [String] = []
        if !unknown.isEmpty {
            problems.append("nvidia-smi does not report the memory of \(unknown.sorted().joined(separator: ", "))")
        }
        if let first = bad.first {
            problems.append(lines(bad.count, "of nvidia-smi output", "index, name, memory.total, memory.free", first))
        }
        if devices.isEmpty && bad.isEmpty { problems.append("nvidia-smi printed no GPU") }
        return Parsed(devices, problems: problems)
    }

    /// `[N/A]`, `[Not Supported]`, `[Insufficient Permissions]`, `N/A`.
    static func isPlaceholder(_ s: String) -> Bool {
        (s.hasPrefix("[") && s.hasSuffix("]")) || s == "N/A"
    }

    static func mebibytes(_ s: String) -> Int64? {
        guard let v = Int64(s), v >= 0, v < Int64.max / mebibyte else { return nil }
        return v * mebibyte
    }

    // MARK: rocm-smi

    /// Parses `rocm-smi --showmeminfo vram --json` (sizes in bytes, as strings or numbers) and,
    /// when given, `rocm-smi --showproductname --json` for names. Cards are keyed `card0`, `card1`...
    public static func rocmSMI(memory: String, names: String? = nil) -> Parsed<[DeviceMemory]> {
        var problems: [String] = []
        let json: JSON
        do {
            json = try JSONParser.parse(memory, maxDepth: 8)
        } catch {
            return Parsed([], problems: ["rocm-smi --showmeminfo output is not JSON (\(error)): \(quote(memory))"])
        }
        guard let cards = json.objectValue else {
            return Parsed([], problems: ["rocm-smi --showmeminfo output is not a JSON object: \(quote(memory))"])
        }
        let nameByCard = names.map(rocmSMINames) ?? Parsed([:])
        problems += nameByCard.problems
        var devices: [DeviceMemory] = []
        for (key, value) in cards {
            guard let number = cardNumber(key) else { continue }
            let total = member(value, containing: "vram total memory").flatMap(byteCount)
            let used = member(value, containing: "vram total used memory").flatMap(byteCount)
            if total == nil || used == nil { problems.append("rocm-smi does not report the VRAM of \(key)") }
            let free = total.flatMap { t in used.map { max(0, t - $0) } }
            devices.append(DeviceMemory(kind: .amd, index: number, name: nameByCard.value[number] ?? "AMD GPU",
                                        totalBytes: total, freeBytes: free))
        }
        if devices.isEmpty { problems.append("rocm-smi printed no card: \(quote(memory))") }
        devices.sort { $0.index < $1.index }
        return Parsed(devices, problems: problems)
    }

    /// Card number → marketing name from `rocm-smi --showproductname --json`.
    static func rocmSMINames(_ text: String) -> Parsed<[Int: String]> {
        guard let json = try? JSONParser.parse(text, maxDepth: 8), let cards = json.objectValue else {
            return Parsed([:], problems: ["rocm-smi --showproductname output is not a JSON object: \(quote(text))"])
        }
        var out: [Int: String] = [:]
        for (key, value) in cards {
            guard let number = cardNumber(key) else { continue }
            let series = member(value, containing: "card series")?.stringValue
            let model = member(value, containing: "card model")?.stringValue
            if let name = amdName(series) ?? amdName(model) { out[number] = name }
        }
        return Parsed(out)
    }

    /// `card3` → 3.
    static func cardNumber(_ key: String) -> Int? {
        guard key.hasPrefix("card") else { return nil }
        return Int(key.dropFirst(4))
    }

    /// The member of an object whose key contains `fragment` (case-insensitive); the shortest such
    /// key wins, so "vram total memory" does not pick "vram total used memory".
    static func member(_ object: JSON, containing fragment: String) -> JSON? {
        guard let members = object.objectValue else { return nil }
        return members.filter { $0.0.lowercased().contains(fragment) }.min { $0.0.count < $1.0.count }?.1
    }

    static func byteCount(_ value: JSON) -> Int64? {
        if let s = value.stringValue { return Int64(s.trimmed).flatMap { $0 >= 0 ? $0 : nil } }
        if let i = value.intValue, i >= 0 { return Int64(i) }
        return nil
    }

    /// A display name for an AMD product string: `Navi 31 [Radeon RX 7900 XTX]` → `AMD Radeon RX 7900 XTX`.
    /// Nil for empty, placeholder or bare PCI-id (`0x744c`) strings.
    public static func amdName(_ raw: String?) -> String? {
        guard var s = raw?.trimmed, !s.isEmpty, !isPlaceholder(s), !s.lowercased().hasPrefix("0x") else { return nil }
        if let open = s.lastIndex(of: "["), let close = s.lastIndex(of: "]"), open < close {
            let inner = s[s.index(after: open)..<close].trimmed
            if !inner.isEmpty { s = inner }
        }
        let lower = s.lowercased()
        return lower.hasPrefix("amd") || lower.hasPrefix("advanced micro devices") ? s : "AMD " + s
    }

    // MARK: kernel files

    /// A decimal integer as sysfs prints it (`25753026560\n`).
    public static func sysfsInteger(_ text: String) -> Int64? {
        let t = text.trimmed
        guard let v = Int64(t), v >= 0 else { return nil }
        return v
    }

    /// The PCI vendor id a sysfs `vendor` file holds (`0x1002\n`).
    public static func pciVendor(_ text: String) -> UInt16? {
        let t = text.trimmed.lowercased()
        guard t.hasPrefix("0x") else { return nil }
        return UInt16(t.dropFirst(2), radix: 16)
    }

    /// `MemTotal` and `MemAvailable` (or `MemFree` on kernels without it) from `/proc/meminfo`.
    public static func meminfo(_ text: String) -> Parsed<SystemMemory?> {
        var values: [String: Int64] = [:]
        for raw in text.split(whereSeparator: \.isNewline) {
            guard let colon = raw.firstIndex(of: ":") else { continue }
            let key = String(raw[..<colon])
            let parts = raw[raw.index(after: colon)...].split(separator: " ")
            guard let first = parts.first, let n = Int64(first), n >= 0, n < Int64.max / 1024 else { continue }
            let unit = parts.count > 1 ? parts[1].lowercased() : ""
            values[key] = unit == "kb" ? n * 1024 : n
        }
        guard let total = values["MemTotal"] else {
            return Parsed(nil, problems: ["/proc/meminfo has no readable MemTotal: \(quote(text))"])
        }
        if let available = values["MemAvailable"] {
            return Parsed(SystemMemory(totalBytes: total, availableBytes: min(total, available)))
        }
        let free = values["MemFree"] ?? 0
        return Parsed(SystemMemory(totalBytes: total, availableBytes: min(total, free)),
                      problems: ["/proc/meminfo has no MemAvailable; using MemFree"])
    }

    /// The first `model name` of `/proc/cpuinfo`, nil when absent (many ARM kernels).
    public static func cpuModel(_ text: String) -> String? {
        for raw in text.split(whereSeparator: \.isNewline) {
            guard let colon = raw.firstIndex(of: ":"), raw[..<colon].trimmed == "model name" else { continue }
            let name = raw[raw.index(after: colon)...].trimmed
            return name.isEmpty ? nil : name
        }
        return nil
    }

    // MARK: messages

    /// At most 80 characters of `text`, quoted, for messages.
    static func quote(_ text: some StringProtocol) -> String {
        let t = text.trimmed
        if t.isEmpty { return "(empty)" }
        return "\"" + (t.count > 80 ? t.prefix(80) + "…" : t) + "\""
    }

    static func lines(_ count: Int, _ what: String, _ expected: String, _ first: String) -> String {
        let more = count > 1 ? " (and \(count - 1) more)" : ""
        return "unreadable line \(what), expected \(expected): \(quote(first))\(more)"
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs and line breaks.
    var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
