import Foundation
import XCTest

@testable import SharpBridge

final class BundleTests: XCTestCase {
    /// A bundle with `sharp/` and `original/` model directories and a manifest listing every file.
    func makeBundle() throws -> URL {
        let bundle = try makeTemporaryDirectory(self).appendingPathComponent("bundle")
        let original = TinyModel.random(layers: 3, hidden: 16, intermediate: 24)
        try original.write(to: bundle.appendingPathComponent("original"))
        try original.sharpened(plan: [2: 1]).write(to: bundle.appendingPathComponent("sharp"))
        try Data("{}".utf8).write(to: bundle.appendingPathComponent("sharp/tokenizer.json"))
        let manifest = try BundleVerifier.makeManifest(bundle: bundle, modelDir: "sharp", originalDir: "original")
        try write(manifest, to: bundle)
        return bundle
    }

    func write(_ manifest: BundleManifest, to bundle: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(manifest).write(to: bundle.appendingPathComponent(BundleManifest.fileName))
    }

    func testGoodBundleVerifies() throws {
        let bundle = try makeBundle()
        let result = try BundleVerifier.verify(bundle: bundle)
        XCTAssertTrue(result.isValid, "\(result.failureMessages)")
        XCTAssertEqual(result.verifiedFiles.count, 5)
        XCTAssertEqual(result.unlistedFiles, [])
        let manifest = try BundleManifest.load(bundle: bundle)
        XCTAssertEqual(result.modelTensorBytes, manifest.accounting?.tensorBytes)
        XCTAssertEqual(manifest.plan, ["2": 1])
        XCTAssertNotNil(manifest.original?.tensorBytes)
    }

    func testOneTamperedByteIsNamed() throws {
        let bundle = try makeBundle()
        let url = bundle.appendingPathComponent("sharp/model.safetensors")
        var bytes = try Data(contentsOf: url)
        bytes[bytes.count - 5] ^= 0x01  // inside the tensor data: the header still parses
        try bytes.write(to: url)
        let result = try BundleVerifier.verify(bundle: bundle)
        XCTAssertFalse(result.isValid)
        XCTAssertEqual(result.issues, [.sha256Mismatch(path: "sharp/model.safetensors")])
        XCTAssertEqual(result.failureMessages, ["sha256 mismatch: sharp/model.safetensors"])
    }

    func testMissingResizedAndUnlistedFiles() throws {
        let bundle = try makeBundle()
        try FileManager.default.removeItem(at: bundle.appendingPathComponent("original/config.json"))
        try Data("{ }".utf8).write(to: bundle.appendingPathComponent("sharp/tokenizer.json"))
        try Data("notes".utf8).write(to: bundle.appendingPathComponent("README.txt"))
        let result = try BundleVerifier.verify(bundle: bundle)
        XCTAssertTrue(result.issues.contains(.missing(path: "original/config.json")), "\(result.issues)")
        XCTAssertTrue(result.issues.contains(.sizeMismatch(path: "sharp/tokenizer.json", expected: 2, actual: 3)), "\(result.issues)")
        XCTAssertEqual(result.unlistedFiles, ["README.txt"])
    }

    func testTensorBytesMustMatchHeaders() throws {
        let bundle = try makeBundle()
        var manifest = try BundleManifest.load(bundle: bundle)
        let actual = manifest.accounting?.tensorBytes ?? 0
        manifest.accounting?.tensorBytes = actual + 4
        try write(manifest, to: bundle)
        let result = try BundleVerifier.verify(bundle: bundle)
        XCTAssertEqual(result.issues, [.tensorBytesMismatch(manifest: actual + 4, headers: actual)])
    }

    func testDecodesExporterSchemaLeniently() throws {
        let json = """
            {"format": "sharp-bundle", "version": 1, "model_dir": "sharp", "original_dir": "original",
             "files": [{"path": "sharp/config.json", "bytes": 1234, "sha256": "ab"}],
             "plan": {"17": 16},
             "accounting": {"num_layers": 30, "mlp_params_original": 79626240, "mlp_params_stored": 76972032,
                            "recovery_params": 147456, "net_mlp_saving_percent": 3.15, "total_params": 131980000,
                            "tensor_bytes": 75000000, "future_field": [1, 2]},
             "quantization": {"bits": 4, "group_size": 64},
             "original": {"tensor_bytes": 80000000, "total_params": 134515008},
             "python_metrics": {"sharp": {"perplexity": 9.1, "decode_tok_s": 120.5, "prompt_tok_s": 900.0, "peak_memory_gb": 0.4},
                                "original": {"perplexity": 8.2, "decode_tok_s": 118.0, "prompt_tok_s": 880.0, "peak_memory_gb": 0.45}},
             "created_by": "sharp_mlx 0.1"}
            """
        let manifest = try JSONDecoder().decode(BundleManifest.self, from: Data(json.utf8))
        try manifest.validate()
        XCTAssertEqual(manifest.accounting?.numLayers, 30)
        XCTAssertEqual(manifest.accounting?.netMlpSavingPercent, 3.15)
        XCTAssertEqual(manifest.quantization, QuantizationConfig(groupSize: 64, bits: 4))
        XCTAssertEqual(manifest.pythonMetrics?.original?.perplexity, 8.2)
        XCTAssertEqual(manifest.pythonMetrics?.sharp?.decodeTokS, 120.5)

        let minimal = #"{"format": "sharp-bundle", "version": 1, "model_dir": "sharp", "files": [], "quantization": null, "original": null, "python_metrics": null}"#
        let decoded = try JSONDecoder().decode(BundleManifest.self, from: Data(minimal.utf8))
        XCTAssertNil(decoded.originalDir)
        XCTAssertNil(decoded.quantization)
    }

    func testRejectsUnsafeOrWrongManifests() throws {
        func rejects(_ json: String, mentioning fragment: String, line: UInt = #line) {
            do {
                let manifest = try JSONDecoder().decode(BundleManifest.self, from: Data(json.utf8))
                try manifest.validate()
                XCTFail("accepted \(json)", line: line)
            } catch {
                XCTAssertTrue("\(error)".contains(fragment), "\(error)", line: line)
            }
        }
        let file = #"{"path": "sharp/config.json", "bytes": 1, "sha256": "00"}"#
        rejects(#"{"format": "other", "version": 1, "model_dir": "sharp", "files": []}"#, mentioning: "format")
        rejects(#"{"format": "sharp-bundle", "version": 2, "model_dir": "sharp", "files": []}"#, mentioning: "version 2")
        rejects(#"{"format": "sharp-bundle", "version": 1, "model_dir": "../x", "files": []}"#, mentioning: "../x")
        rejects(#"{"format": "sharp-bundle", "version": 1, "model_dir": "sharp", "files": [{"path": "/etc/passwd", "bytes": 1, "sha256": "00"}]}"#, mentioning: "/etc/passwd")
        rejects(#"{"format": "sharp-bundle", "version": 1, "model_dir": "sharp", "files": [\#(file), \#(file)]}"#, mentioning: "listed twice")
        XCTAssertFalse(isSafeRelativePath("a/../b"))
        XCTAssertFalse(isSafeRelativePath("a//b"))
        XCTAssertTrue(isSafeRelativePath("sharp/model-00001-of-00002.safetensors"))
    }
}
