import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `meshctl init --secret-file PATH`: writes a new mesh secret (32 random bytes as hex, mode
/// 0600). Copy the same file to every machine of the mesh; it is what lets nodes in.
struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a new mesh secret file (mode 0600).")
    @Option(name: .long, help: "Where to write the secret.") var secretFile: String = "/etc/meshd/mesh.secret"
    @Flag(name: .long, help: "Overwrite an existing secret (every node must then get the new one).") var force = false

    func run() async throws {
        // SystemRandomNumberGenerator is the kernel CSPRNG (getrandom) on Linux.
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let text = bytes.map { String(format: "%02x", $0) }.joined() + "\n"
        let dir = (secretFile as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let target = force ? secretFile + ".tmp-\(getpid())" : secretFile
        let fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let why = errno == EEXIST ? "\(secretFile) exists; use --force to replace it (every node must get the new secret)"
                : "\(target): \(String(cString: strerror(errno)))"
            FileHandle.standardError.write(Data("meshctl: \(why)\n".utf8))
            throw ExitCode(1)
        }
        let ok = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, text.utf8.count) } == text.utf8.count
        _ = fchmod(fd, 0o600)
        _ = fsync(fd)
        close(fd)
        guard ok, !force || rename(target, secretFile) == 0 else {
            unlink(target)
            FileHandle.standardError.write(Data("meshctl: cannot write \(secretFile)\n".utf8))
            throw ExitCode(1)
        }
        print("wrote a new mesh secret to \(secretFile) (mode 0600); copy it to every node's mesh.secret_file")
    }
}
