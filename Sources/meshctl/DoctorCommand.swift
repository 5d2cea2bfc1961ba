import ArgumentParser
import Foundation

/// `meshctl doctor`: asks the local node to check itself (secret file, avahi-daemon and our
/// published service, TCP reachability of known peers, engines) and prints what to fix.
/// Exits 0 when every check passes, 1 when one fails, 3 when meshd itself is unreachable.
struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor", abstract: "Check this node's setup and say what to fix.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let data: Data
        do {
            (_, data) = try AdminClient(socketPath: global.socket).request("GET", "/v1/doctor")
        } catch {
            let fix = "start it (`systemctl start meshd`, then `journalctl -u meshd` if it does not stay up), or point meshctl at its admin socket with --socket PATH"
            if global.json {
                let o: [String: Any] = ["status": "fail", "checks": [["check": "meshd", "status": "fail",
                                                                       "detail": "cannot reach meshd at \(global.socket): \(error)", "fix": fix]]]
                print(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print("✗ meshd: cannot reach meshd at \(global.socket): \(error)\n    fix: \(fix)")
            }
            throw ExitCode(3)
        }
        guard let report = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        if global.json {
            global.printJSON(data)
        } else {
            let checks = report["checks"] as? [[String: Any]] ?? []
            for c in checks {
                let mark = switch c["status"] as? String { case "ok": "✓"; case "warn": "!"; default: "✗" }
                print("\(mark) \(c["check"] as? String ?? "?"): \(c["detail"] as? String ?? "")")
                if let fix = c["fix"] as? String { print("    fix: \(fix)") }
            }
            let fails = checks.filter { ($0["status"] as? String) == "fail" }.count
            let warns = checks.filter { ($0["status"] as? String) == "warn" }.count
            print(fails == 0 && warns == 0 ? "\nall \(checks.count) checks passed" : "\n\(fails) problem(s), \(warns) warning(s)")
        }
        if (report["status"] as? String) == "fail" { throw ExitCode(1) }
    }
}
