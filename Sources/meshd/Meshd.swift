import ArgumentParser
import Foundation
import Logging
import MeshConfigLoader
import MeshCore
import MeshNode
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// `meshd`: one node of the inference mesh.
@main
struct Meshd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshd",
        abstract: "Serve the OpenAI and Ollama APIs over this machine's LLM engines.",
        version: APIResponder.version)

    @Option(name: .long, help: "Configuration file (default /etc/meshd/meshd.yaml; built-in defaults when that is absent).")
    var config: String?

    @Flag(name: .long, help: "Print the effective configuration (secrets redacted) or the errors, then exit.")
    var checkConfig = false

    @Option(name: .long, help: "Override logging.level (trace, debug, info, notice, warning, error, critical).")
    var logLevel: String?

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let loaded: LoadedConfig
        do {
            loaded = try ConfigLoader.load(path: config, environment: env, hostName: ProcessInfo.processInfo.hostName)
        } catch {
            FileHandle.standardError.write(Data("meshd: configuration error\n\(error.description)\n".utf8))
            throw ExitCode(ConfigLoadError.exitCode)
        }
        for w in loaded.warnings {
            FileHandle.standardError.write(Data("\(w.description)\n".utf8))
        }
        if checkConfig {
            print("# effective configuration (source: \(loaded.sourceFile ?? "built-in defaults"))")
            print(ConfigLoader.render(loaded.config), terminator: "")
            return
        }
        let levelName = logLevel ?? loaded.config.logging.level
        guard let level = Logger.Level(rawValue: levelName) else {
            FileHandle.standardError.write(Data("meshd: --log-level: unknown level '\(levelName)'\n".utf8))
            throw ExitCode(2)
        }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: "meshd")
        logger[metadataKey: "node"] = "\(loaded.config.nodeName)"
        logger.info("starting", metadata: [
            "version": "\(APIResponder.version)", "config": "\(loaded.sourceFile ?? "built-in defaults")",
            "listen": "\(loaded.config.http.listen)",
        ])
        raiseOpenFileLimit(maxConnections: loaded.config.http.maxConnections, logger: logger)
        // One set of threads for everything async: NIO's event loops run Swift tasks too, so a
        // request does not bounce between the NIO loop and the cooperative pool (measured: the
        // thread hand-offs dominated meshd's per-request cost on 2 cores).
        NIOSingletons.groupLoopCountSuggestion = max(1, loaded.config.http.threads)
        let takeover = EventLoopExecutor.install()
        if takeover {
            logger.debug("executor", metadata: ["nio_global_executor": "true"])
        } else {
            logger.warning("Swift tasks stay on the default thread pool (another global executor hook is installed): each request and streamed chunk costs more thread hand-offs")
        }
        let node: MeshdNode
        do {
            node = try MeshdNode(config: loaded.config, logger: logger, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
            node.metrics.recordTasksOnEventLoops(takeover, jobsRun: { EventLoopExecutor.jobsRun.load(ordering: .relaxed) })
        } catch let error as ConfigLoadError {
            // The prices file is configuration too: same message shape and exit status.
            FileHandle.standardError.write(Data("meshd: configuration error\n\(error.description)\n".utf8))
            throw ExitCode(ConfigLoadError.exitCode)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: node)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        // `systemctl reload meshd` (SIGHUP): read the configuration again and take what can change
        // while serving; a broken file is refused with --check-config's errors, and nothing changes.
        let path = config
        let reloads = Task {
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                await Self.reload(node, path: path, logger: logger)
            }
        }
        defer { reloads.cancel() }
        do {
            try await group.run()
        } catch {
            logger.critical("stopped with an error", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
    }
}

extension Meshd {
    /// One reload: load and check the file as at start, then hand it to the node.
    static func reload(_ node: MeshdNode, path: String?, logger: Logger) async {
        node.notifier.reloading()
        defer { node.notifier.ready() }
        let loaded: LoadedConfig
        do {
            loaded = try ConfigLoader.load(path: path, environment: ProcessInfo.processInfo.environment,
                                           hostName: ProcessInfo.processInfo.hostName)
        } catch {
            logger.error("reload refused: the configuration has errors; the running configuration stays",
                         metadata: ["errors": "\(error.description)"])
            return
        }
        for w in loaded.warnings { logger.warning("reload: \(w.description)") }
        do {
            let report = try await node.reload(loaded.config)
            logger.notice("configuration reloaded", metadata: [
                "config": "\(loaded.sourceFile ?? "built-in defaults")",
                "applied": "\(report.applied.isEmpty ? "nothing changed" : report.applied.joined(separator: "; "))"])
            if !report.needsRestart.isEmpty {
                logger.warning("reload: changed, but only a restart applies it (the running values stay)",
                               metadata: ["sections": "\(report.needsRestart.joined(separator: ", "))"])
            }
        } catch {
            logger.error("reload refused; the running configuration stays", metadata: ["errors": "\(error)"])
        }
    }
}

/// Raises the soft open-file limit to the hard one: every client connection is a descriptor, and
/// the usual soft limit (1024) is far below `http.max_connections`. Says so when the cap cannot be reached.
func raiseOpenFileLimit(maxConnections: Int, logger: Logger) {
    var limit = rlimit()
    guard getrlimit(RLIMIT_NOFILE_RESOURCE, &limit) == 0 else {
        logger.info("cannot read the open-file limit", metadata: ["errno": "\(errno)"])
        return
    }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(RLIMIT_NOFILE_RESOURCE, &raised) == 0 { limit = raised }
    }
    let needed = maxConnections * 2 + 256
    if maxConnections > 0 && limit.rlim_cur != rlim_t.max && limit.rlim_cur < rlim_t(needed) {
        logger.info("open-file limit is low for http.max_connections; raise LimitNOFILE (or ulimit -n)", metadata: [
            "nofile": "\(limit.rlim_cur)", "max_connections": "\(maxConnections)", "suggested": "\(needed)",
        ])
    }
}

#if canImport(Glibc)
private let RLIMIT_NOFILE_RESOURCE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
#else
private let RLIMIT_NOFILE_RESOURCE = RLIMIT_NOFILE
#endif
