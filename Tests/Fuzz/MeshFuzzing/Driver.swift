#if canImport(Glibc)
import Glibc
#endif

/// The target libFuzzer's callback runs (set once, before fuzzing starts).
nonisolated(unsafe) var selectedTarget: FuzzTarget?

/// libFuzzer's entry point. Present in every build; only a `-sanitize=fuzzer` build calls it.
@_cdecl("LLVMFuzzerTestOneInput")
public func meshdFuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let target = selectedTarget else { fatalError("no fuzz target selected") }
    target.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

#if MESHD_FUZZING
/// libFuzzer's driver, for a program with its own `main` (the libFuzzer runtime is linked in by
/// `-sanitize=fuzzer`). Its arguments are plain C ones, passed the same way by Swift's convention here.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
#endif

/// `meshd-fuzz`: one program for every target.
///
///     meshd-fuzz TARGET [libFuzzer flags] [CORPUS_DIR|FILE ...]   # -sanitize=fuzzer build: fuzz (or run FILEs)
///     meshd-fuzz TARGET FILE|DIR ...                              # ordinary build: replay inputs
///     meshd-fuzz seed DIR                                         # write the seed corpus under DIR/TARGET/
///     meshd-fuzz list                                             # the targets and their -max_len
///
/// The target can also come from `MESHD_FUZZ_TARGET` (libFuzzer's fork and merge modes start the
/// program again with its flags only).
public enum FuzzDriver {
    public static func main() -> Never {
        var args = CommandLine.arguments
        let program = args.removeFirst()
        if args.first == "list" {
            for t in FuzzTarget.allCases { print("\(t.rawValue) -max_len=\(t.maxLength)") }
            exit(0)
        }
        if args.first == "seed" {
            guard args.count == 2 else { usage(program) }
            exit(Seeds.write(to: args[1]) ? 0 : 1)
        }
        let target: FuzzTarget
        if let first = args.first, let t = FuzzTarget(rawValue: first) {
            target = t
            args.removeFirst()
            setenv("MESHD_FUZZ_TARGET", t.rawValue, 1)
        } else if let name = getenv("MESHD_FUZZ_TARGET").map({ String(cString: $0) }), let t = FuzzTarget(rawValue: name) {
            target = t
        } else {
            usage(program)
        }
        selectedTarget = target
        #if MESHD_FUZZING
        // The target's -max_len first: a flag given later wins.
        var cArgs: [UnsafeMutablePointer<CChar>?] = ([program, "-max_len=\(target.maxLength)"] + args).map { strdup($0) }
        cArgs.append(nil)
        var argc = CInt(cArgs.count - 1)
        let rc = cArgs.withUnsafeMutableBufferPointer { buf -> CInt in
            var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buf.baseAddress
            return LLVMFuzzerRunDriver(&argc, &argv, meshdFuzzTestOneInput)
        }
        exit(rc)
        #else
        exit(replay(target, paths: args.filter { !$0.hasPrefix("-") }) ? 0 : 1)
        #endif
    }

    static func usage(_ program: String) -> Never {
        let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")
        printError("usage: \(program) \(names) [FILE|DIR ...]  |  \(program) seed DIR  |  \(program) list\n")
        exit(2)
    }

    /// Runs every input under `paths` (files, or directories of files) through `target`.
    public static func replay(_ target: FuzzTarget, paths: [String]) -> Bool {
        var count = 0
        for path in paths {
            let files = Corpus.files(path)
            if files.isEmpty { printError("\(path): no inputs\n") }
            for file in files {
                guard let bytes = Corpus.read(file) else {
                    printError("\(file): cannot read\n")
                    return false
                }
                target.run(bytes)
                count += 1
            }
        }
        print("\(target.rawValue): \(count) inputs ran")
        return true
    }
}

/// Writes to standard error.
func printError(_ text: String) {
    var text = text
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Files of a corpus, without Foundation.
public enum Corpus {
    /// `path` itself when it is a file, the regular files in it (sorted, not recursing) when it is a directory.
    public static func files(_ path: String) -> [String] {
        var st = stat()
        guard stat(path, &st) == 0 else { return [] }
        if st.st_mode & S_IFMT != S_IFDIR { return [path] }
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix(".") { continue }
            let full = path + "/" + name
            var fst = stat()
            if stat(full, &fst) == 0, fst.st_mode & S_IFMT == S_IFREG { out.append(full) }
        }
        return out.sorted()
    }

    public static func read(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n == 0 { break }
            out += chunk[..<n]
        }
        return ferror(f) == 0 ? out : nil
    }

    public static func write(_ bytes: [UInt8], to path: String) -> Bool {
        guard let f = fopen(path, "wb") else { return false }
        defer { fclose(f) }
        return bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) } == bytes.count
    }
}
