// swift-tools-version: 6.2
import PackageDescription
#if canImport(Glibc)
import Glibc
#endif

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

/// How the shipped executables (meshd, meshctl) are linked in a release build on Linux: with the
/// toolchain's lld, exporting no symbols (the static Swift runtime's link arguments export all of
/// the executable's, ~40,000, which nothing looks up), and with relative relocations packed
/// (DT_RELR) where the build machine's glibc loads them (2.36 and later). Together they take ~3 MB
/// of relocation table and ~2 MB of symbol table out of what an idle node keeps resident
/// (benches/memory.md). A debug build links as SwiftPM does by default.
let shippedLink: [LinkerSetting] = {
    var flags = ["-use-ld=lld", "-Xlinker", "--no-export-dynamic"]
    #if canImport(Glibc)
    var buffer = [CChar](repeating: 0, count: 64)  // "glibc 2.36"
    _ = confstr(Int32(_CS_GNU_LIBC_VERSION), &buffer, buffer.count)
    let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let version = text.split(separator: " ").last?.split(separator: ".").compactMap { Int($0) } ?? []
    if version.count >= 2, (version[0], version[1]) >= (2, 36) {
        flags += ["-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"]
    }
    #endif
    return [.unsafeFlags(flags, .when(platforms: [.linux], configuration: .release))]
}()

let package = Package(
    name: "meshd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "meshd", targets: ["meshd"]),
        .executable(name: "meshctl", targets: ["meshctl"]),
        .executable(name: "meshd-sim-engine", targets: ["meshd-sim-engine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.0.0", traits: ["YAML"]),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
    ],
    targets: [
        // MARK: thin C modules (system libraries, apt providers, typed shims where the C API is variadic)
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CAvahi", pkgConfig: "avahi-client", providers: [.apt(["libavahi-client-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The Swift runtime's global-executor hook, found by the linker (a static runtime hides it from dlsym).
        .target(name: "CSwiftHooks"),

        // MARK: pure core: no I/O
        .target(name: "MeshCore", swiftSettings: strict),

        // MARK: I/O modules
        .target(name: "MeshHTTPClient", dependencies: ["CCurl", "MeshCore", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "MeshConfigLoader", dependencies: [
            "MeshCore",
            .product(name: "Configuration", package: "swift-configuration"),
            .product(name: "Yams", package: "Yams"),
        ], swiftSettings: strict),
        .target(name: "MeshCloud", dependencies: [
            "MeshCore", "MeshHTTPClient", .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),  // SigV4 (Bedrock): SHA-256, HMAC
        ], swiftSettings: strict),
        .target(name: "MeshEngines", dependencies: [
            "MeshCore", "MeshHTTPClient",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "MeshHTTPServer", dependencies: [
            "MeshCore",
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "MeshHardware", dependencies: [
            "MeshCore", .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "MeshZMQ", dependencies: ["CZeroMQ", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "MeshLedger", dependencies: [
            "MeshCore", .product(name: "GRDB", package: "GRDB.swift"),
        ], swiftSettings: strict),
        .target(name: "MeshDiscovery", dependencies: [
            "CAvahi", "MeshCore", .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "MeshNet", dependencies: [
            "MeshCore", "MeshZMQ", .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "MeshRelay", dependencies: [
            "MeshNet", "MeshCore", "MeshZMQ",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),
        .target(name: "MeshNode", dependencies: [
            "MeshCore", "MeshHTTPClient", "MeshEngines", "MeshHTTPServer", "MeshConfigLoader", "MeshNet", "MeshZMQ", "MeshRelay",
            "MeshDiscovery", "MeshHardware", "MeshLedger", "MeshCloud", "CZeroMQ", "CAvahi",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),

        // MARK: thin executables
        .executableTarget(name: "meshd", dependencies: [
            "MeshNode", "MeshConfigLoader", "MeshCore", "CSwiftHooks",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ], swiftSettings: strict, linkerSettings: shippedLink),
        .executableTarget(name: "meshctl", dependencies: [
            "MeshCore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: strict, linkerSettings: shippedLink),
        .executableTarget(name: "meshd-sim-engine", dependencies: [
            "MeshCore", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: strict),

        // MARK: fuzzing (Tests/Fuzz: tools/fuzz.sh builds meshd-fuzz with -sanitize=fuzzer,address; an
        // ordinary build of it replays inputs, and MeshFuzzingTests replays the committed corpus)
        .target(name: "MeshFuzzing", dependencies: [
            "MeshCore", "MeshConfigLoader", "MeshHTTPServer",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], path: "Tests/Fuzz/MeshFuzzing", swiftSettings: strict),
        .executableTarget(name: "meshd-fuzz", dependencies: ["MeshFuzzing"], path: "Tests/Fuzz/meshd-fuzz", swiftSettings: strict),

        // MARK: tests
        .testTarget(name: "MeshCoreTests", dependencies: ["MeshCore"]),
        .testTarget(name: "MeshHTTPClientTests", dependencies: [
            "MeshHTTPClient", "MeshCore",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .testTarget(name: "MeshConfigLoaderTests", dependencies: ["MeshConfigLoader", "MeshCore"]),
        .testTarget(name: "MeshHTTPServerTests", dependencies: [
            "MeshHTTPServer", "MeshCore",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .testTarget(name: "MeshCloudTests", dependencies: [
            "MeshCloud", "MeshCore", "MeshHTTPClient", "MeshEngines", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "MeshEnginesTests", dependencies: ["MeshEngines", "MeshCore", "MeshHTTPClient"]),
        .testTarget(name: "MeshHardwareTests", dependencies: [
            "MeshHardware", "MeshCore", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "MeshZMQTests", dependencies: ["MeshZMQ", "CZeroMQ"]),
        .testTarget(name: "MeshLedgerTests", dependencies: ["MeshLedger", "MeshCore"]),
        .testTarget(name: "MeshDiscoveryTests", dependencies: ["MeshDiscovery", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "MeshRelayTests", dependencies: [
            "MeshRelay", "MeshNet", "MeshZMQ", "MeshCore",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "MeshFuzzingTests", dependencies: ["MeshFuzzing"]),
        .testTarget(name: "MeshNodeTests", dependencies: ["MeshNode", "MeshCore", "CZeroMQ", "CAvahi", "CCurl"]),
    ]
)
