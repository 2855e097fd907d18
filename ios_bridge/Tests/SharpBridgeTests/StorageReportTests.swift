import Foundation
import XCTest

@testable import SharpBridge

final class StorageReportTests: XCTestCase {
    /// 3 layers, hidden 16, MLP 24, layer 2 shares layer 1's MLP with rank-2 LoRA on all three matrices.
    func makeSharpDirectory() throws -> (URL, TinyModel) {
        let directory = try makeTemporaryDirectory(self).appendingPathComponent("sharp")
        let model = TinyModel.random(layers: 3, hidden: 16, intermediate: 24, heads: 4, kvHeads: 2, vocab: 32)
            .sharpened(plan: [2: 1], kind: .lora, rank: 2)
        try model.write(to: directory)
        return (directory, model)
    }

    func testCategoriesAndMLPAccounting() throws {
        let (directory, _) = try makeSharpDirectory()
        let report = try StorageReport.make(directory: directory)
        XCTAssertEqual(report.problems, [])
        XCTAssertEqual(report.plan, ["2": 1])
        XCTAssertEqual(report.recoveryKind, "lora")
        let mlpMatrix = 24 * 16
        XCTAssertEqual(report.usage(.mlpStored).parameters, 2 * 3 * mlpMatrix)
        XCTAssertEqual(report.usage(.mlpStored).tensors, 6)
        XCTAssertEqual(report.usage(.recovery).parameters, 3 * (16 * 2 + 2 * 24))
        XCTAssertEqual(report.usage(.embedding).parameters, 32 * 16)
        XCTAssertEqual(report.usage(.attention).parameters, 3 * (16 * 16 + 2 * 8 * 16 + 16 * 16))
        XCTAssertEqual(report.usage(.norm).parameters, 16 + 3 * 2 * 16)
        XCTAssertEqual(report.usage(.other).tensors, 0)
        XCTAssertEqual(report.mlp.originalParameters, 3 * 3 * mlpMatrix)
        XCTAssertEqual(report.mlp.storedParameters, 2 * 3 * mlpMatrix)
        XCTAssertEqual(report.mlp.recoveryParameters, 240)
        XCTAssertEqual(report.mlp.netSavingPercent, 100 * Double(3456 - 2304 - 240) / 3456, accuracy: 1e-9)
        XCTAssertEqual(report.tensorBytes, report.totalParameters * 4)
        XCTAssertEqual(report.categories.values.reduce(0) { $0 + $1.bytes }, report.tensorBytes)
        let header = try SafetensorsHeader.read(fileAt: directory.appendingPathComponent("model.safetensors"))
        XCTAssertEqual(report.weightFileBytes, 8 + header.headerByteCount + report.tensorBytes)
        XCTAssertGreaterThan(report.directoryBytes, report.weightFileBytes)
    }

    func testCategoryNames() {
        XCTAssertEqual(TensorCategory.of("model.embed_tokens.weight"), .embedding)
        XCTAssertEqual(TensorCategory.of("model.embed_tokens.scales"), .embedding)
        XCTAssertEqual(TensorCategory.of("lm_head.weight"), .embedding)
        XCTAssertEqual(TensorCategory.of("model.layers.3.self_attn.q_proj.biases"), .attention)
        XCTAssertEqual(TensorCategory.of("model.layers.3.mlp.down_proj.scales"), .mlpStored)
        XCTAssertEqual(TensorCategory.of("model.layers.3.mlp.down_proj.bias"), .mlpStored)
        XCTAssertEqual(TensorCategory.of("model.layers.3.mlp.down_proj.lora_a"), .recovery)
        XCTAssertEqual(TensorCategory.of("model.layers.3.mlp.gate_proj.in_scale"), .recovery)
        XCTAssertEqual(TensorCategory.of("model.layers.3.input_layernorm.weight"), .norm)
        XCTAssertEqual(TensorCategory.of("model.norm.weight"), .norm)
        XCTAssertEqual(TensorCategory.of("model.rotary_emb.inv_freq"), .other)
    }

    func testDetectsStoredSharedWeightAndMissingRecovery() throws {
        let (directory, model) = try makeSharpDirectory()
        var broken = model
        broken.tensors["model.layers.2.mlp.up_proj.weight"] = model.tensors["model.layers.1.mlp.up_proj.weight"]
        broken.tensors["model.layers.2.mlp.down_proj.lora_b"] = nil
        broken.tensors["model.layers.0.mlp.gate_proj.lora_a"] = Tensor(shape: [16, 2], values: Array(repeating: 0, count: 32))
        try broken.write(to: directory)
        let problems = try StorageReport.make(directory: directory).problems
        XCTAssertTrue(problems.contains { $0.contains("model.layers.2.mlp.up_proj.weight is stored") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("model.layers.2.mlp.down_proj.lora_b is missing") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("model.layers.0.mlp.gate_proj.lora_a is a recovery tensor on layer 0") }, "\(problems)")
    }

    func testDetectsWrongLoRARank() throws {
        let (directory, model) = try makeSharpDirectory()
        var broken = model
        broken.tensors["model.layers.2.mlp.gate_proj.lora_a"] = Tensor(shape: [16, 3], values: Array(repeating: 0, count: 48))
        try broken.write(to: directory)
        let problems = try StorageReport.make(directory: directory).problems
        XCTAssertTrue(problems.contains { $0.contains("lora_a has shape [16, 3]") }, "\(problems)")
    }

    func testComparisonWithOriginal() throws {
        let root = try makeTemporaryDirectory(self)
        let original = TinyModel.random(layers: 3, hidden: 16, intermediate: 24)
        try original.write(to: root.appendingPathComponent("original"))
        try original.sharpened(plan: [2: 1], kind: .vectors).write(to: root.appendingPathComponent("sharp"))
        let sharpReport = try StorageReport.make(directory: root.appendingPathComponent("sharp"))
        let originalReport = try StorageReport.make(directory: root.appendingPathComponent("original"))
        XCTAssertEqual(originalReport.plan, [:])
        XCTAssertEqual(originalReport.mlp.netSavingPercent, 0)
        XCTAssertEqual(sharpReport.usage(.recovery).parameters, 3 * (16 + 24))  // in_scale + out_scale per matrix
        let comparison = StorageComparison(sharp: sharpReport, original: originalReport)
        let expectedRatio = Double(sharpReport.tensorBytes) / Double(originalReport.tensorBytes)
        XCTAssertEqual(comparison.tensorBytesRatio, expectedRatio, accuracy: 1e-12)
        XCTAssertLessThan(comparison.tensorBytesRatio, 1)
        XCTAssertEqual(originalReport.totalParameters - sharpReport.totalParameters, 3 * 24 * 16 - 120)
    }

    func testMultipleWeightFilesAndDuplicates() throws {
        let directory = try makeTemporaryDirectory(self)
        try TinyModel.random().write(to: directory)
        try SafetensorsWriter.write(
            [.float32("model.extra.weight", shape: [2], values: [1, 2])], to: directory.appendingPathComponent("model-00002-of-00002.safetensors"))
        let index = try ModelTensorIndex(directory: directory)
        XCTAssertEqual(index.fileNames, ["model-00002-of-00002.safetensors", "model.safetensors"])
        XCTAssertEqual(index.location(of: "model.extra.weight")?.file, "model-00002-of-00002.safetensors")
        try SafetensorsWriter.write(
            [.float32("model.norm.weight", shape: [2], values: [1, 2])], to: directory.appendingPathComponent("model-00002-of-00002.safetensors"))
        XCTAssertThrowsError(try ModelTensorIndex(directory: directory)) { XCTAssertTrue("\($0)".contains("stored in both")) }
    }
}
