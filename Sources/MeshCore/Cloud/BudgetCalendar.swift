/// The budget periods an instant falls in: its local day and month, and when each resets.
public struct BudgetPeriods: Sendable, Equatable {
    /// `YYYY-MM-DD` in the budget's time zone.
    public var day: String
    /// `YYYY-MM` in the budget's time zone.
    public var month: String
    /// Unix seconds of the next local midnight.
    public var dayResetsAt: Int64
    /// Unix seconds of the first local midnight of the next month.
    public var monthResetsAt: Int64
}

/// Day and month boundaries in a time zone, with the zone's UTC offset injected (a fixed offset,
/// or Foundation's `TimeZone` rules from the I/O side), so the core stays free of system calls.
public struct BudgetCalendar: Sendable {
    /// UTC offset in seconds in effect at a Unix time.
    public let offsetSeconds: @Sendable (Int64) -> Int
    /// Name for messages (`UTC`, `Europe/Berlin`).
    public let zoneName: String

    public init(zoneName: String, offsetSeconds: @escaping @Sendable (Int64) -> Int) {
        self.zoneName = zoneName
        self.offsetSeconds = offsetSeconds
    }

    /// UTC.
    public static let utc = BudgetCalendar(zoneName: "UTC") { _ in 0 }

    /// A zone with a constant offset (e.g. `+02:00`).
    public static func fixed(offsetSeconds: Int, name: String? = nil) -> BudgetCalendar {
        BudgetCalendar(zoneName: name ?? Self.offsetName(offsetSeconds)) { _ in offsetSeconds }
    }

    static func offsetName(_ s: Int) -> String {
        let a = abs(s)
        return "UTC\(s < 0 ? "-" : "+")\(pad(a / 3600)):\(pad(a % 3600 / 60))"
    }

    static func pad(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    /// The periods of the instant `nanos` (Unix nanoseconds).
    public func periods(atNanos nanos: UInt64) -> BudgetPeriods {
        let t = Int64(nanos / 1_000_000_000)
        let localDays = floorDiv(t + Int64(offsetSeconds(t)), 86_400)
        let (y, m, d) = Self.civil(fromDays: localDays)
        let nextMonth = m == 12 ? (y + 1, 1) : (y, m + 1)
        return BudgetPeriods(
            day: "\(y)-\(Self.pad(m))-\(Self.pad(d))", month: "\(y)-\(Self.pad(m))",
            dayResetsAt: localMidnight(days: localDays + 1),
            monthResetsAt: localMidnight(days: Self.days(fromCivil: nextMonth.0, nextMonth.1, 1)))
    }

    /// Unix seconds of local midnight starting local day `days` (days since 1970-01-01 local).
    func localMidnight(days: Int64) -> Int64 {
        let guess = days * 86_400
        // The offset that applies is the one in effect at the result; one refinement covers a
        // DST change on either side of midnight.
        var t = guess - Int64(offsetSeconds(guess))
        t = guess - Int64(offsetSeconds(t))
        return t
    }

    func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

    /// Proleptic Gregorian date of a day count since 1970-01-01.
    static func civil(fromDays days: Int64) -> (Int, Int, Int) {
        let (y, m, d) = ISO8601.civil(days: days)
        return (Int(y), Int(m), Int(d))
    }

    /// Day count since 1970-01-01 of a proleptic Gregorian date.
    static func days(fromCivil y0: Int, _ m: Int, _ d: Int) -> Int64 {
        let y = Int64(m <= 2 ? y0 - 1 : y0)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mm = Int64(m)
        let doy = (153 * (mm > 2 ? mm - 3 : mm + 9) + 2) / 5 + Int64(d) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
