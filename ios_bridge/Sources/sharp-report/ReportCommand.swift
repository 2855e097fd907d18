import Foundation
import SharpBridge

/// Parsed command-line options.
struct ReportOptions {
    var path = ""
    var json = false
    var forward = false
    var promptTokens = 16
    var generateTokens = 8
    var maximumParameters = ReferenceModel.defaultMaximumParameters

    static let usage = """
        usage: sharp-report BUNDLE_OR_MODEL_DIR [--json] [--forward] [--tokens N] [--generate N] [--max-params N]
          --json        print the report as JSON
          --forward     run the reference CPU forward pass (tiny models only) and print tokens/s
          --tokens N    prompt length for --forward (default 16)
          --generate N  tokens to decode greedily after the prompt (default 8)
          --max-params N  refuse --forward above N parameters (default 300000000)
        """

    static func parse(_ arguments: [String]) throws -> ReportOptions {
        var options = ReportOptions()
        var remaining = arguments[...]
        func number(after flag: String) throws -> Int {
            guard let text = remaining.popFirst(), let value = Int(text), value >= 0 else {
                throw UsageError("\(flag) needs a non-negative integer")
            }
            return value
        }
        while let argument = remaining.popFirst() {
            switch argument {
            case "--json": options.json = true
            case "--forward": options.forward = true
            case "--tokens": options.promptTokens = try number(after: argument)
            case "--generate": options.generateTokens = try number(after: argument)
            case "--max-params": options.maximumParameters = try number(after: argument)
            case "-h", "--help": throw UsageError("")
            default:
                guard !argument.hasPrefix("-"), options.path.isEmpty else { throw UsageError("unexpected argument \(argument)") }
                options.path = argument
            }
        }
        guard !options.path.isEmpty else { throw UsageError("missing BUNDLE_OR_MODEL_DIR") }
        guard options.promptTokens > 0 else { throw UsageError("--tokens must be at least 1") }
        return options
    }
}

struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// One accounting figure as the manifest states it and as Swift recomputes it.
struct AccountingCheck: Codable {
    let field: String
    let manifest: Double?
    let swift: Double
    let matches: Bool
}

/// Timing of the reference forward pass.
struct ForwardResult: Codable {
    let promptTokens: Int
    let prefillSeconds: Double
    let prefillTokensPerSecond: Double
    let generatedTokens: Int
    let decodeSeconds: Double
    let decodeTokensPerSecond: Double
    let greedyTokenIds: [Int]
}

/// Everything the command found, as printed with --json.
struct FullReport: Codable {
    var path: String
    var isBundle: Bool
    var verification: BundleVerification?
    var sharp: StorageReport?
    var original: StorageReport?
    var comparison: StorageComparison?
    var accountingChecks: [AccountingCheck] = []
    var forward: ForwardResult?
    var failures: [String] = []
}

enum ReportCommand {
    static func run(arguments: [String]) -> Int32 {
        let options: ReportOptions
        do {
            options = try ReportOptions.parse(arguments)
        } catch let error as UsageError {
            if !error.message.isEmpty { printError("sharp-report: \(error.message)") }
            printError(ReportOptions.usage)
            return 2
        } catch {
            printError("sharp-report: \(error)")
            return 2
        }
        do {
            let report = try buildReport(options)
            if options.json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                encoder.keyEncodingStrategy = .convertToSnakeCase
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(TextFormatter.render(report))
            }
            for failure in report.failures { printError("FAILED: \(failure)") }
            return report.failures.isEmpty ? 0 : 1
        } catch {
            printError("sharp-report: \(error)")
            return 2
        }
    }

    static func buildReport(_ options: ReportOptions) throws -> FullReport {
        let root = URL(fileURLWithPath: options.path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SharpError.io(path: root.path, reason: "not a directory")
        }
        let manifestURL = root.appendingPathComponent(BundleManifest.fileName)
        let isBundle = FileManager.default.fileExists(atPath: manifestURL.path)
        var report = FullReport(path: root.path, isBundle: isBundle)
        var modelDirectory = root
        var originalDirectory: URL?
        var manifest: BundleManifest?
        if isBundle {
            let loaded = try BundleManifest.load(bundle: root)
            manifest = loaded
            let verification = try BundleVerifier.verify(bundle: root, manifest: loaded)
            report.verification = verification
            report.failures += verification.failureMessages
            modelDirectory = root.appendingPathComponent(loaded.modelDir)
            originalDirectory = loaded.originalDir.map { root.appendingPathComponent($0) }
        }
        do {
            let sharp = try StorageReport.make(directory: modelDirectory)
            report.sharp = sharp
            report.failures += sharp.problems.map { "\(sharp.directory): \($0)" }
            if let accounting = manifest?.accounting {
                report.accountingChecks = accountingChecks(accounting, sharp)
            }
            if let originalDirectory {
                let original = try StorageReport.make(directory: originalDirectory)
                report.original = original
                report.comparison = StorageComparison(sharp: sharp, original: original)
            }
        } catch {
            report.failures.append("\(error)")
            return report
        }
        if options.forward && report.failures.isEmpty {
            report.forward = try runForward(directory: modelDirectory, options: options)
        }
        return report
    }

    static func accountingChecks(_ accounting: BundleManifest.Accounting, _ sharp: StorageReport) -> [AccountingCheck] {
        let rows: [(String, Double?, Double, Double)] = [
            ("num_layers", accounting.numLayers.map(Double.init), Double(sharp.numLayers), 0),
            ("tensor_bytes", accounting.tensorBytes.map(Double.init), Double(sharp.tensorBytes), 0),
            ("total_params", accounting.totalParams.map(Double.init), Double(sharp.totalParameters), 0),
            ("mlp_params_original", accounting.mlpParamsOriginal.map(Double.init), Double(sharp.mlp.originalParameters), 0),
            ("mlp_params_stored", accounting.mlpParamsStored.map(Double.init), Double(sharp.mlp.storedParameters), 0),
            ("recovery_params", accounting.recoveryParams.map(Double.init), Double(sharp.mlp.recoveryParameters), 0),
            ("net_mlp_saving_percent", accounting.netMlpSavingPercent, sharp.mlp.netSavingPercent, 0.01),
        ]
        return rows.map { field, manifest, swift, tolerance in
            AccountingCheck(field: field, manifest: manifest, swift: swift, matches: manifest.map { abs($0 - swift) <= tolerance } ?? true)
        }
    }

    static func runForward(directory: URL, options: ReportOptions) throws -> ForwardResult {
        let model = try ReferenceModel(directory: directory, maximumParameters: options.maximumParameters)
        let vocab = model.config.vocabSize
        let prompt = (0..<options.promptTokens).map { (($0 * 7919) + 1) % vocab }
        var cache = ReferenceKVCache(layers: model.config.numHiddenLayers)
        let prefillStart = Date()
        var logits = try model.logits(tokens: prompt, cache: &cache)
        let prefillSeconds = Date().timeIntervalSince(prefillStart)
        var generated: [Int] = []
        let decodeStart = Date()
        for _ in 0..<options.generateTokens {
            let next = argmaxOfLastRow(logits)
            generated.append(next)
            logits = try model.logits(tokens: [next], cache: &cache)
        }
        let decodeSeconds = Date().timeIntervalSince(decodeStart)
        return ForwardResult(
            promptTokens: prompt.count, prefillSeconds: prefillSeconds,
            prefillTokensPerSecond: prefillSeconds > 0 ? Double(prompt.count) / prefillSeconds : 0,
            generatedTokens: generated.count, decodeSeconds: decodeSeconds,
            decodeTokensPerSecond: decodeSeconds > 0 ? Double(generated.count) / decodeSeconds : 0,
            greedyTokenIds: generated)
    }

    static func argmaxOfLastRow(_ logits: Tensor) -> Int {
        let vocab = logits.shape.last ?? 0
        let start = logits.values.count - vocab
        var best = 0
        for index in 0..<vocab where logits.values[start + index] > logits.values[start + best] { best = index }
        return best
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
