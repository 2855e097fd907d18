import Foundation
import XCTest

@testable import SharpBridge

final class LatencyStatsTests: XCTestCase {
    /// Expected values are NumPy's `np.percentile(values, p)` (method "linear").
    func testPercentilesInterpolateLinearly() {
        let sorted: [Double] = [1, 2, 3, 4, 10]
        XCTAssertEqual(Summary.percentile(sorted: sorted, 50), 3, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: sorted, 90), 7.6, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: sorted, 25), 2, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: sorted, 0), 1, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: sorted, 100), 10, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: [1, 2, 3, 4], 50), 2.5, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: [1, 2, 3, 4], 90), 3.7, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: [5], 90), 5, accuracy: 1e-12)
        XCTAssertEqual(Summary.percentile(sorted: [], 90), 0)
    }

    func testSummaryOfUnsortedValues() throws {
        let summary = try XCTUnwrap(Summary([10, 1, 4, 3, 2]))
        XCTAssertEqual(summary.count, 5)
        XCTAssertEqual(summary.mean, 4, accuracy: 1e-12)
        XCTAssertEqual(summary.median, 3, accuracy: 1e-12)
        XCTAssertEqual(summary.p90, 7.6, accuracy: 1e-12)
        XCTAssertEqual(summary.min, 1)
        XCTAssertEqual(summary.max, 10)
        XCTAssertNil(Summary([]))
    }

    func testThroughputSummariesAndJSON() throws {
        var stats = LatencyStats(label: "sharp")
        for (index, decode) in [2.0, 1.0, 4.0].enumerated() {
            stats.record(
                RunMeasurement(
                    loadTimeSeconds: 1, timeToFirstTokenSeconds: 0.1 * Double(index + 1), promptTokens: 100,
                    prefillSeconds: 0.5, generatedTokens: 40, decodeSeconds: decode, peakMemoryBytes: 1000 * (index + 1)))
        }
        XCTAssertEqual(stats.decodeTokensPerSecond?.median ?? 0, 20, accuracy: 1e-9)
        XCTAssertEqual(stats.decodeTokensPerSecond?.max ?? 0, 40, accuracy: 1e-9)
        XCTAssertEqual(stats.prefillTokensPerSecond?.mean ?? 0, 200, accuracy: 1e-9)
        XCTAssertEqual(stats.timeToFirstToken?.p90 ?? 0, 0.28, accuracy: 1e-9)
        XCTAssertEqual(stats.peakMemoryBytes?.median ?? 0, 2000, accuracy: 1e-9)

        let comparison = BenchmarkComparison(
            sharp: stats, original: stats, sharpBytesOnDisk: 80, originalBytesOnDisk: 100, context: ["device": "test"])
        XCTAssertEqual(comparison.sizeRatio ?? 0, 0.8, accuracy: 1e-12)
        XCTAssertEqual(comparison.decodeSpeedRatio ?? 0, 1, accuracy: 1e-12)
        let json = try JSONSerialization.jsonObject(with: comparison.jsonData()) as? [String: Any]
        let sharp = json?["sharp"] as? [String: Any]
        XCTAssertNotNil(sharp?["decode_tok_s"])
        XCTAssertEqual(sharp?["runs"] as? Int, 3)
        let decoded = try JSONDecoder().decode(BenchmarkComparison.self, from: comparison.jsonData())
        XCTAssertEqual(decoded, comparison)
    }

    func testZeroDurationsGiveZeroThroughput() {
        let run = RunMeasurement(
            loadTimeSeconds: 0, timeToFirstTokenSeconds: 0, promptTokens: 5, prefillSeconds: 0, generatedTokens: 5,
            decodeSeconds: 0, peakMemoryBytes: 0)
        XCTAssertEqual(run.prefillTokensPerSecond, 0)
        XCTAssertEqual(run.decodeTokensPerSecond, 0)
    }
}
