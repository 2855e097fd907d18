import Foundation

/// One measured generation run.
public struct RunMeasurement: Codable, Equatable, Sendable {
    /// Seconds to load the model (0 when it was already loaded).
    public var loadTimeSeconds: Double
    /// Seconds from submitting the prompt to receiving the first generated token.
    public var timeToFirstTokenSeconds: Double
    public var promptTokens: Int
    /// Seconds spent processing the prompt.
    public var prefillSeconds: Double
    public var generatedTokens: Int
    /// Seconds spent generating `generatedTokens` tokens after the prefill.
    public var decodeSeconds: Double
    public var peakMemoryBytes: Int

    public init(
        loadTimeSeconds: Double, timeToFirstTokenSeconds: Double, promptTokens: Int, prefillSeconds: Double,
        generatedTokens: Int, decodeSeconds: Double, peakMemoryBytes: Int
    ) {
        self.loadTimeSeconds = loadTimeSeconds
        self.timeToFirstTokenSeconds = timeToFirstTokenSeconds
        self.promptTokens = promptTokens
        self.prefillSeconds = prefillSeconds
        self.generatedTokens = generatedTokens
        self.decodeSeconds = decodeSeconds
        self.peakMemoryBytes = peakMemoryBytes
    }

    enum CodingKeys: String, CodingKey {
        case loadTimeSeconds = "load_time_s"
        case timeToFirstTokenSeconds = "ttft_s"
        case promptTokens = "prompt_tokens"
        case prefillSeconds = "prefill_s"
        case generatedTokens = "generated_tokens"
        case decodeSeconds = "decode_s"
        case peakMemoryBytes = "peak_memory_bytes"
    }

    /// Prompt tokens per second of prefill (0 when the prefill time is 0).
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Generated tokens per second of decode (0 when the decode time is 0).
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(generatedTokens) / decodeSeconds : 0 }
}

/// Summary statistics of one quantity over several runs.
///
/// Percentiles use linear interpolation between closest ranks (NumPy's default "linear" method):
/// for sorted values `v[0...n-1]` and percentile `p`, the rank is `h = (n - 1) * p / 100` and the result is
/// `v[floor(h)] + (h - floor(h)) * (v[floor(h) + 1] - v[floor(h)])`. The median is the 50th percentile.
public struct Summary: Codable, Equatable, Sendable {
    public var count: Int
    public var mean: Double
    public var median: Double
    public var p90: Double
    public var min: Double
    public var max: Double

    /// Summarizes values; nil when there are none (NaN values are dropped first).
    public init?(_ values: [Double]) {
        let sorted = values.filter { !$0.isNaN }.sorted()
        guard let first = sorted.first, let last = sorted.last else { return nil }
        count = sorted.count
        mean = sorted.reduce(0, +) / Double(sorted.count)
        median = Summary.percentile(sorted: sorted, 50)
        p90 = Summary.percentile(sorted: sorted, 90)
        min = first
        max = last
    }

    /// The `p`-th percentile (0...100, clamped) of ascending values by linear interpolation; 0 for no values.
    public static func percentile(sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let clamped = Swift.min(100, Swift.max(0, p))
        let rank = Double(sorted.count - 1) * clamped / 100
        let lower = Int(rank.rounded(.down))
        let upper = Swift.min(lower + 1, sorted.count - 1)
        return sorted[lower] + (rank - Double(lower)) * (sorted[upper] - sorted[lower])
    }
}

/// Latency statistics over recorded runs: TTFT, prefill and decode throughput, load time and peak memory.
public struct LatencyStats: Codable, Equatable, Sendable {
    public var label: String
    public private(set) var runs: [RunMeasurement] = []

    public init(label: String, runs: [RunMeasurement] = []) {
        self.label = label
        self.runs = runs
    }

    public mutating func record(_ run: RunMeasurement) { runs.append(run) }

    public var timeToFirstToken: Summary? { Summary(runs.map(\.timeToFirstTokenSeconds)) }
    public var prefillTokensPerSecond: Summary? { Summary(runs.map(\.prefillTokensPerSecond)) }
    public var decodeTokensPerSecond: Summary? { Summary(runs.map(\.decodeTokensPerSecond)) }
    public var loadTime: Summary? { Summary(runs.map(\.loadTimeSeconds)) }
    public var peakMemoryBytes: Summary? { Summary(runs.map { Double($0.peakMemoryBytes) }) }

    /// The summaries in one encodable value.
    public var report: LatencyReport {
        LatencyReport(
            label: label, runs: runs.count, timeToFirstTokenSeconds: timeToFirstToken,
            prefillTokensPerSecond: prefillTokensPerSecond, decodeTokensPerSecond: decodeTokensPerSecond,
            loadTimeSeconds: loadTime, peakMemoryBytes: peakMemoryBytes)
    }
}

/// Encodable summary of a `LatencyStats`.
public struct LatencyReport: Codable, Equatable, Sendable {
    public var label: String
    public var runs: Int
    public var timeToFirstTokenSeconds: Summary?
    public var prefillTokensPerSecond: Summary?
    public var decodeTokensPerSecond: Summary?
    public var loadTimeSeconds: Summary?
    public var peakMemoryBytes: Summary?

    enum CodingKeys: String, CodingKey {
        case label, runs
        case timeToFirstTokenSeconds = "ttft_s"
        case prefillTokensPerSecond = "prefill_tok_s"
        case decodeTokensPerSecond = "decode_tok_s"
        case loadTimeSeconds = "load_time_s"
        case peakMemoryBytes = "peak_memory_bytes"
    }
}

/// SHARP against original on the same benchmark, as the app exports it.
public struct BenchmarkComparison: Codable, Equatable, Sendable {
    public var sharp: LatencyReport
    public var original: LatencyReport?
    public var sharpBytesOnDisk: Int?
    public var originalBytesOnDisk: Int?
    /// Median decode tok/s, sharp / original.
    public var decodeSpeedRatio: Double?
    /// Median TTFT, sharp / original.
    public var timeToFirstTokenRatio: Double?
    /// Median peak memory, sharp / original.
    public var peakMemoryRatio: Double?
    /// Bytes on disk, sharp / original.
    public var sizeRatio: Double?
    /// Free-form context: device, prompt length, tokens generated, repeats, dates.
    public var context: [String: String]

    enum CodingKeys: String, CodingKey {
        case sharp, original
        case sharpBytesOnDisk = "sharp_bytes_on_disk"
        case originalBytesOnDisk = "original_bytes_on_disk"
        case decodeSpeedRatio = "decode_speed_ratio"
        case timeToFirstTokenRatio = "ttft_ratio"
        case peakMemoryRatio = "peak_memory_ratio"
        case sizeRatio = "size_ratio"
        case context
    }

    public init(
        sharp: LatencyStats, original: LatencyStats?, sharpBytesOnDisk: Int?, originalBytesOnDisk: Int?,
        context: [String: String] = [:]
    ) {
        func ratio(_ a: Double?, _ b: Double?) -> Double? {
            guard let a, let b, b != 0 else { return nil }
            return a / b
        }
        self.sharp = sharp.report
        self.original = original?.report
        self.sharpBytesOnDisk = sharpBytesOnDisk
        self.originalBytesOnDisk = originalBytesOnDisk
        decodeSpeedRatio = ratio(sharp.decodeTokensPerSecond?.median, original?.decodeTokensPerSecond?.median)
        timeToFirstTokenRatio = ratio(sharp.timeToFirstToken?.median, original?.timeToFirstToken?.median)
        peakMemoryRatio = ratio(sharp.peakMemoryBytes?.median, original?.peakMemoryBytes?.median)
        sizeRatio = ratio(sharpBytesOnDisk.map(Double.init), originalBytesOnDisk.map(Double.init))
        self.context = context
    }

    /// Pretty-printed, key-sorted JSON.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }
}
