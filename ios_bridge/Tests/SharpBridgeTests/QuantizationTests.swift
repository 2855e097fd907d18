import Foundation
import XCTest

@testable import SharpBridge

final class QuantizationTests: XCTestCase {
    func testFourBitPackingIsLowBitsFirst() throws {
        let layout = try AffineQuantizationLayout(
            weightShape: [1, 1], scalesShape: [1, 1], biasesShape: [1, 1], preferredGroupSize: 8, name: "w")
        XCTAssertEqual(layout.bits, 4)
        XCTAssertEqual(layout.dequantize(words: [0x7654_3210], scales: [1], biases: [0]), [0, 1, 2, 3, 4, 5, 6, 7])
        XCTAssertEqual(layout.dequantize(words: [0x0000_00f1], scales: [0.5], biases: [-1]), [-0.5, 6.5, -1, -1, -1, -1, -1, -1])
    }

    func testBitsAreInferredFromShapes() throws {
        func bits(_ weight: [Int], _ scales: [Int], group: Int?) throws -> Int {
            try AffineQuantizationLayout(weightShape: weight, scalesShape: scales, biasesShape: scales, preferredGroupSize: group, name: "w").bits
        }
        XCTAssertEqual(try bits([576, 72], [576, 18], group: 32), 4)  // 576 inputs, 4-bit, group 32
        XCTAssertEqual(try bits([576, 144], [576, 18], group: 32), 8)  // 8-bit embedding in the same model
        XCTAssertEqual(try bits([576, 72], [576, 9], group: 64), 4)
        XCTAssertEqual(try bits([576, 72], [576, 18], group: 64), 2)  // the preferred group size decides ambiguous shapes
        XCTAssertEqual(try bits([8, 6], [8, 1], group: 64), 3)
        XCTAssertThrowsError(try bits([8, 7], [8, 1], group: 64))
        XCTAssertThrowsError(try bits([0, 1 << 62], [0, 1], group: 64))  // empty but absurd: no overflow trap
        XCTAssertThrowsError(try bits([8, 6], [4, 1], group: 64))
    }

    func testQuantizeDequantizeRoundTripForAllWidths() throws {
        var rng = SeededGenerator(seed: 8)
        let (rows, columns, group) = (3, 64, 32)
        let values = rng.floats(rows * columns)
        for bits in AffineQuantizationLayout.supportedBits {
            let packed = AffineQuantizationLayout.quantize(values, rows: rows, columns: columns, groupSize: group, bits: bits)
            let layout = try AffineQuantizationLayout(
                weightShape: [rows, columns * bits / 32], scalesShape: [rows, columns / group],
                biasesShape: [rows, columns / group], preferredGroupSize: group, name: "w")
            XCTAssertEqual(layout.bits, bits)
            let restored = layout.dequantize(words: packed.words, scales: packed.scales, biases: packed.biases)
            let step = 2 / Float((1 << bits) - 1)
            XCTAssertLessThanOrEqual(maxAbsDifference(restored, values), step / 2 + 1e-5, "bits \(bits)")
        }
    }

    /// A model directory with 4-bit MLP and 8-bit embedding weights runs as the fp32 model holding the
    /// dequantized values, and its parameters are counted mlx-lm style.
    func testQuantizedModelDirectory() throws {
        let directory = try makeTemporaryDirectory(self)
        var model = TinyModel.random(layers: 2, hidden: 16, intermediate: 32, vocab: 32, seed: 30)
        model.config.quantization = QuantizationConfig(
            groupSize: 16, bits: 4, overrides: ["model.embed_tokens": QuantizationConfig(groupSize: 16, bits: 8)])
        var dequantized = model
        var writable: [WritableTensor] = []
        for name in model.tensors.keys.sorted() {
            guard let tensor = model.tensors[name] else { continue }
            let quantize = name.contains(".mlp.") || name.contains("embed_tokens")
            guard quantize else {
                writable.append(.float32(name, shape: tensor.shape, values: tensor.values))
                continue
            }
            let bits = name.contains("embed_tokens") ? 8 : 4
            let (rows, columns) = (tensor.shape[0], tensor.shape[1])
            let packed = AffineQuantizationLayout.quantize(tensor.values, rows: rows, columns: columns, groupSize: 16, bits: bits)
            let module = String(name.dropLast(".weight".count))
            writable.append(.uint32(name, shape: [rows, columns * bits / 32], values: packed.words))
            writable.append(.float16(module + ".scales", shape: [rows, columns / 16], values: packed.scales))
            writable.append(.float16(module + ".biases", shape: [rows, columns / 16], values: packed.biases))
            let scales = packed.scales.map { floatFromHalfBits(halfBitsFromFloat($0)) }
            let biases = packed.biases.map { floatFromHalfBits(halfBitsFromFloat($0)) }
            let layout = try AffineQuantizationLayout(
                weightShape: [rows, columns * bits / 32], scalesShape: [rows, columns / 16], biasesShape: [rows, columns / 16],
                preferredGroupSize: 16, name: name)
            dequantized.tensors[name] = Tensor(shape: tensor.shape, values: layout.dequantize(words: packed.words, scales: scales, biases: biases))
        }
        try model.write(to: directory)
        try SafetensorsWriter.write(writable, to: directory.appendingPathComponent("model.safetensors"))

        let tokens = [4, 8, 15, 16, 23]
        let loaded = try ReferenceModel(directory: directory).logits(tokens: tokens)
        dequantized.config.quantization = nil
        XCTAssertLessThan(maxAbsDifference(loaded.values, try dequantized.logits(tokens).values), 1e-5)

        let report = try StorageReport.make(directory: directory)
        XCTAssertEqual(report.usage(.mlpStored).parameters, 2 * 3 * 16 * 32)
        XCTAssertEqual(report.usage(.embedding).parameters, 32 * 16)
        let expectedEmbeddingBytes = 32 * 16 + 2 * 2 * 32 * (16 / 16)  // 8-bit values + f16 scales and biases
        XCTAssertEqual(report.usage(.embedding).bytes, expectedEmbeddingBytes)
    }
}
