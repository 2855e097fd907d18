import Foundation
import MLX
import MLXLLM
import MLXLMCommon
import SharpBridge
import SharpLLM

/// Results for one model of the bundle (SHARP or original).
struct VariantResult: Sendable {
    let label: String
    let stats: LatencyStats
    let bytesOnDisk: Int
    let storage: StorageReport?
    let sampleText: String
}

enum BenchmarkError: LocalizedError {
    case verificationFailed([String])

    var errorDescription: String? {
        switch self {
        case .verificationFailed(let failures): return "bundle verification failed: " + failures.joined(separator: "; ")
        }
    }
}

/// Runs the fixed benchmark on a bundle: verify (optional), then for the SHARP model and, if present, the
/// original: load (timed), warm up, measure `repeats` runs, sample a short answer; then export JSON.
@MainActor
final class BenchmarkRunner: ObservableObject {
    @Published private(set) var log: [String] = []
    @Published private(set) var isRunning = false
    @Published private(set) var sharp: VariantResult?
    @Published private(set) var original: VariantResult?
    @Published private(set) var comparison: BenchmarkComparison?
    @Published private(set) var exportedFile: URL?

    static let samplePrompt = "In two sentences, why do phones need small language models?"

    func run(bundle: BundleEntry, settings: BenchmarkSettings) async {
        isRunning = true
        defer { isRunning = false }
        log = []
        sharp = nil
        original = nil
        comparison = nil
        exportedFile = nil
        do {
            await SharpModelRegistration.register()
            try await verifyIfRequested(bundle, settings)
            let sharpResult = try await measure(
                label: "sharp", directory: bundle.url.appendingPathComponent(bundle.manifest.modelDir), settings)
            sharp = sharpResult
            if let originalDir = bundle.manifest.originalDir {
                original = try await measure(
                    label: "original", directory: bundle.url.appendingPathComponent(originalDir), settings)
            }
            let result = BenchmarkComparison(
                sharp: sharpResult.stats, original: original?.stats, sharpBytesOnDisk: sharpResult.bytesOnDisk,
                originalBytesOnDisk: original?.bytesOnDisk, context: context(bundle, settings))
            comparison = result
            exportedFile = try export(result, bundleName: bundle.name)
            append("Saved \(exportedFile?.lastPathComponent ?? "results") to Documents.")
        } catch {
            append("Error: \(error.localizedDescription)")
        }
    }

    private func verifyIfRequested(_ bundle: BundleEntry, _ settings: BenchmarkSettings) async throws {
        guard settings.verifyChecksums else { return }
        append("Verifying size and sha256 of \(bundle.manifest.files.count) files…")
        let url = bundle.url
        let manifest = bundle.manifest
        let verification = try await Task.detached(priority: .userInitiated) {
            try BundleVerifier.verify(bundle: url, manifest: manifest)
        }.value
        guard verification.isValid else { throw BenchmarkError.verificationFailed(verification.failureMessages) }
        append("Bundle OK (\(verification.verifiedFiles.count) files).")
    }

    private func measure(label: String, directory: URL, _ settings: BenchmarkSettings) async throws -> VariantResult {
        Memory.clearCache()
        append("[\(label)] loading \(directory.lastPathComponent)…")
        let loadStart = Date.timeIntervalSinceReferenceDate
        let container = try await LLMModelFactory.shared.loadContainer(from: directory, using: makeTokenizerLoader())
        let loadSeconds = Date.timeIntervalSinceReferenceDate - loadStart
        append("[\(label)] loaded in \(format(loadSeconds)) s")

        var stats = LatencyStats(label: label)
        for index in 0 ..< (settings.warmupRuns + settings.repeats) {
            var run = try await container.perform { context in
                try GenerationProbe.run(context: context, settings: settings)
            }
            guard index >= settings.warmupRuns else { continue }
            run.loadTimeSeconds = loadSeconds
            stats.record(run)
            append(
                "[\(label)] run \(index - settings.warmupRuns + 1): TTFT \(format(run.timeToFirstTokenSeconds)) s, "
                    + "decode \(format(run.decodeTokensPerSecond)) tok/s")
        }
        let sample = try await GenerationProbe.sample(container: container, prompt: Self.samplePrompt, maxTokens: 48)
        let storage = try? StorageReport.make(directory: directory)
        return VariantResult(
            label: label, stats: stats, bytesOnDisk: try directoryByteCount(directory), storage: storage,
            sampleText: sample)
    }

    private func context(_ bundle: BundleEntry, _ settings: BenchmarkSettings) -> [String: String] {
        var context = settings.contextDescription
        context["bundle"] = bundle.name
        context["date"] = ISO8601DateFormatter().string(from: Date())
        context["device"] = DeviceInfo.model
        context["os"] = ProcessInfo.processInfo.operatingSystemVersionString
        if let accounting = bundle.manifest.accounting, let saving = accounting.netMlpSavingPercent {
            context["net_mlp_saving_percent"] = String(format: "%.2f", saving)
        }
        if let metrics = bundle.manifest.pythonMetrics?.sharp, let perplexity = metrics.perplexity {
            context["python_sharp_perplexity"] = String(format: "%.3f", perplexity)
        }
        if let metrics = bundle.manifest.pythonMetrics?.original, let perplexity = metrics.perplexity {
            context["python_original_perplexity"] = String(format: "%.3f", perplexity)
        }
        return context
    }

    private func export(_ comparison: BenchmarkComparison, bundleName: String) throws -> URL {
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "-")
        let url = BundleLibrary.documents.appendingPathComponent("sharp_benchmark_\(bundleName)_\(stamp).json")
        try comparison.jsonData().write(to: url)
        return url
    }

    private func append(_ line: String) { log.append(line) }
}

func format(_ value: Double, digits: Int = 3) -> String { String(format: "%.\(digits)f", value) }

/// The hardware model identifier (e.g. "iPhone16,1").
enum DeviceInfo {
    static var model: String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
