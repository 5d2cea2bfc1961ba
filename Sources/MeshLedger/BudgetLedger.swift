import Foundation
import GRDB
import MeshCore
import Synchronization

/// One row of the ledger: a reservation, its settlement, release, or reconciliation after a crash.
public struct LedgerEntry: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "ledger"

    /// Kinds of rows.
    public enum Kind: String, Codable, Sendable {
        /// Worst case admitted (amount = reserved).
        case reserve
        /// Real cost known (amount = spent).
        case settle
        /// Nothing spent (the request never reached the provider).
        case release
        /// Found open at start: counted as spent at the reserved amount.
        case reconcile
    }

    public var id: Int64?
    /// Unix milliseconds.
    public var ts: Int64
    public var kind: Kind
    public var requestID: String
    public var node: String
    public var provider: String
    public var model: String
    /// Name of the client API key (never the key).
    public var apiKey: String?
    public var promptTokens: Int
    public var completionTokens: Int
    public var amountMicros: Int64
    /// Budget day and month the reservation counts in.
    public var day: String
    public var month: String

    enum CodingKeys: String, CodingKey {
        case id, ts, kind, requestID = "request_id", node, provider, model, apiKey = "api_key",
             promptTokens = "prompt_tokens", completionTokens = "completion_tokens", amountMicros = "amount_micros", day, month
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

/// Errors of the ledger.
public enum LedgerError: Error, CustomStringConvertible {
    case open(path: String, reason: String)
    case write(String)

    public var description: String {
        switch self {
        case .open(let p, let r): return "cannot open \((p as NSString).lastPathComponent == "usage.sqlite" ? "the usage log" : "the budget ledger") \(p): \(r)"
        case .write(let r): return "cannot write the budget ledger: \(r)"
        }
    }
}

/// The durable budget: a ``BudgetBook`` whose every step is first written to SQLite (GRDB, WAL,
/// file mode 0600) under the same lock, so concurrent admissions never exceed a cap and a kill -9 at
/// any moment loses nothing. At start the rows are replayed; a reservation with no settlement is
/// counted as spent at its full amount and a `reconcile` row records that.
public final class BudgetLedger: Sendable {
    let db: DatabaseQueue
    let book: Mutex<BudgetBook>
    let clock: any WallClock
    let node: String
    public let path: String
    /// Reservations found open at start and reconciled as spent.
    public let reconciledAtStart: [BudgetBook.Open]

    public init(path: String, caps: BudgetCaps, calendar: BudgetCalendar = .utc, clock: any WallClock, node: String) throws {
        self.path = path
        self.clock = clock
        self.node = node
        db = try Self.openDatabase(path, migrator: Self.migrator)
        var b = BudgetBook(caps: caps, calendar: calendar)
        let rows: [LedgerEntry]
        do {
            rows = try db.read { try LedgerEntry.order(Column("id")).fetchAll($0) }
        } catch {
            throw LedgerError.open(path: path, reason: "\(error)")
        }
        for r in rows {
            switch r.kind {
            case .reserve:
                if b.open[r.requestID] == nil {
                    b.apply(reserve: BudgetRequest(id: r.requestID, provider: r.provider, apiKey: r.apiKey, amount: r.amountMicros),
                            day: r.day, month: r.month)
                }
            case .settle, .reconcile: b.settle(id: r.requestID, actual: r.amountMicros)
            case .release: b.release(id: r.requestID)
            }
        }
        let open = b.reconcileOpen()
        let now = Int64(clock.nowNanos() / 1_000_000)
        do {
            try db.write { d in
                for o in open {
                    let e = LedgerEntry(id: nil, ts: now, kind: .reconcile, requestID: o.request.id, node: node, provider: o.request.provider,
                                        model: "", apiKey: o.request.apiKey, promptTokens: 0, completionTokens: 0,
                                        amountMicros: o.request.amount, day: o.day, month: o.month)
                    try e.insert(d)
                }
            }
        } catch {
            throw LedgerError.write("\(error)")
        }
        reconciledAtStart = open
        book = Mutex(b)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: LedgerEntry.databaseTableName) { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("ts", .integer).notNull()
                t.column("kind", .text).notNull()
                t.column("request_id", .text).notNull()
                t.column("node", .text).notNull()
                t.column("provider", .text).notNull()
                t.column("model", .text).notNull()
                t.column("api_key", .text)
                t.column("prompt_tokens", .integer).notNull()
                t.column("completion_tokens", .integer).notNull()
                t.column("amount_micros", .integer).notNull()
                t.column("day", .text).notNull()
                t.column("month", .text).notNull()
            }
            try db.create(index: "ledger_request", on: LedgerEntry.databaseTableName, columns: ["request_id"])
        }
        return m
    }

    /// Opens (creating it private) the SQLite file at `path` in WAL mode with full syncs (a commit
    /// is one append; after kill -9 the log is replayed by the next open), and migrates it.
    static func openDatabase(_ path: String, migrator: DatabaseMigrator) throws -> DatabaseQueue {
        do {
            try createPrivate(path)
            var config = Configuration()
            config.prepareDatabase { db in
                try db.execute(sql: "PRAGMA journal_mode = WAL")
                try db.execute(sql: "PRAGMA synchronous = FULL")
            }
            let db = try DatabaseQueue(path: path, configuration: config)
            try migrator.migrate(db)
            return db
        } catch let e as LedgerError {
            throw e
        } catch {
            throw LedgerError.open(path: path, reason: "\(error)")
        }
    }

    /// Creates the database file with mode 0600 if absent (SQLite gives its -wal and -shm files
    /// the database file's mode), and refuses a file others can read.
    static func createPrivate(_ path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
        let fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LedgerError.open(path: path, reason: String(cString: strerror(errno))) }
        var st = stat()
        fstat(fd, &st)
        close(fd)
        if st.st_mode & 0o077 != 0 {
            throw LedgerError.open(path: path, reason: "mode \(String(st.st_mode & 0o777, radix: 8)) lets others read it; chmod 600 \(path)")
        }
    }

    /// Admits `request` (its worst case) if every cap has room: the reservation row is committed
    /// before the admission is visible. Alerts the admission triggers are returned.
    public func reserve(_ request: BudgetRequest, model: String, estimatedPromptTokens: Int) throws -> Result<[BudgetAlert], BudgetDenial> {
        let now = clock.nowNanos()
        return try book.withLock { b in
            var next = b
            let result = next.reserve(request, nowNanos: now)
            guard case .success = result, let o = next.open[request.id] else { return result }
            try write(LedgerEntry(id: nil, ts: Int64(now / 1_000_000), kind: .reserve, requestID: request.id, node: node,
                                  provider: request.provider, model: model, apiKey: request.apiKey, promptTokens: estimatedPromptTokens,
                                  completionTokens: 0, amountMicros: request.amount, day: o.day, month: o.month))
            b = next
            return result
        }
    }

    /// Settles reservation `id` to its real cost; nil if there is no such open reservation.
    @discardableResult
    public func settle(id: String, model: String, promptTokens: Int, completionTokens: Int, cost: MicroUSD) throws -> [BudgetAlert]? {
        try finish(id: id, kind: .settle, model: model, promptTokens: promptTokens, completionTokens: completionTokens, amount: cost)
    }

    /// Releases reservation `id` with nothing spent; false if there is no such open reservation.
    @discardableResult
    public func release(id: String) throws -> Bool {
        try finish(id: id, kind: .release, model: "", promptTokens: 0, completionTokens: 0, amount: 0) != nil
    }

    func finish(id: String, kind: LedgerEntry.Kind, model: String, promptTokens: Int, completionTokens: Int, amount: MicroUSD) throws -> [BudgetAlert]? {
        let now = clock.nowNanos()
        return try book.withLock { b in
            guard let o = b.open[id] else { return nil }
            try write(LedgerEntry(id: nil, ts: Int64(now / 1_000_000), kind: kind, requestID: id, node: node, provider: o.request.provider,
                                  model: model, apiKey: o.request.apiKey, promptTokens: promptTokens, completionTokens: completionTokens,
                                  amountMicros: max(0, amount), day: o.day, month: o.month))
            return b.settle(id: id, actual: amount)
        }
    }

    func write(_ entry: LedgerEntry) throws {
        do {
            try db.write { d in
                let e = entry
                try e.insert(d)
            }
        } catch {
            throw LedgerError.write("\(error)")
        }
    }

    /// Every row, oldest first (tests, audits).
    public func entries() throws -> [LedgerEntry] {
        try db.read { try LedgerEntry.order(Column("id")).fetchAll($0) }
    }

    /// Standing of every cap now.
    public func usage() -> [CapUsage] {
        let now = clock.nowNanos()
        return book.withLock { b in
            b.scopes().flatMap { s in BudgetPeriod.allCases.map { b.usage(s, $0, nowNanos: now) } }
        }
    }

    /// Replaces the caps (a configuration reload): what was reserved and spent stays counted; a
    /// cap already crossed refuses from now on, and its alert fires again only in a new period.
    public func setCaps(_ caps: BudgetCaps) {
        book.withLock { $0.caps = caps }
    }

    /// Open reservations (requests in flight to the cloud).
    public var openReservations: Int { book.withLock { $0.open.count } }
}
