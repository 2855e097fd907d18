import Foundation
import XCTest

@testable import SharpBridge

/// Python <-> Swift parity on the tiny SHARP model exported by `tools/make_parity_fixture.py`:
/// `Fixtures/tiny_sharp/{config.json, model.safetensors, parity.json}` with
/// `parity.json = {"tokens": [[Int]], "logits": [[[Float]]]}` (batch, length, vocab) computed by mlx-lm.
/// `SHARP_PARITY_FIXTURE=/path/to/dir` checks another directory of the same layout instead.
final class ParityTests: XCTestCase {
    static let fixtureDirectory: URL = {
        if let override = ProcessInfo.processInfo.environment["SHARP_PARITY_FIXTURE"], !override.isEmpty {
            return URL(fileURLWithPath: override)
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tiny_sharp")
    }()

    struct ParityFile: Decodable {
        let tokens: [[Int]]
        let logits: [[[Float]]]
    }

    func testLogitsMatchPython() throws {
        let directory = ParityTests.fixtureDirectory
        guard FileManager.default.fileExists(atPath: directory.path) else {
            throw XCTSkip("parity fixture \(directory.path) is absent; generate it with tools/make_parity_fixture.py")
        }
        let parity = try JSONDecoder().decode(ParityFile.self, from: Data(contentsOf: directory.appendingPathComponent("parity.json")))
        XCTAssertEqual(parity.tokens.count, parity.logits.count)
        let model = try ReferenceModel(directory: directory)
        for (tokens, expectedRows) in zip(parity.tokens, parity.logits) {
            let logits = try model.logits(tokens: tokens)
            XCTAssertEqual(logits.shape, [tokens.count, model.config.vocabSize])
            XCTAssertEqual(expectedRows.count, tokens.count)
            let difference = maxAbsDifference(logits.values, expectedRows.flatMap { $0 })
            print("parity: \(tokens.count) tokens, plan \(model.plan.referenceByTarget), max |swift - python| = \(difference)")
            XCTAssertLessThan(difference, 1e-3)
        }
    }

    func testFixtureStorageIsSound() throws {
        let directory = ParityTests.fixtureDirectory
        guard FileManager.default.fileExists(atPath: directory.path) else {
            throw XCTSkip("parity fixture \(directory.path) is absent; generate it with tools/make_parity_fixture.py")
        }
        let report = try StorageReport.make(directory: directory)
        XCTAssertEqual(report.problems, [])
    }
}
