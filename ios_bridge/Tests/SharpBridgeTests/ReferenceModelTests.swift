import Foundation
import XCTest

@testable import SharpBridge

final class ReferenceModelTests: XCTestCase {
    /// One layer, hidden 2, identity V/O/MLP matrices, one token: every step can be written out by hand.
    func testOneLayerLogitsComputedByHand() throws {
        let eps: Float = 1e-6
        let config = ModelConfig(
            hiddenSize: 2, numHiddenLayers: 1, intermediateSize: 2, numAttentionHeads: 1, rmsNormEps: eps, vocabSize: 3)
        let identity = Tensor(shape: [2, 2], values: [1, 0, 0, 1])
        let ones = Tensor(shape: [2], values: [1, 1])
        let tensors: [String: Tensor] = [
            "model.embed_tokens.weight": Tensor(shape: [3, 2], values: [1, 0, 0, 2, 3, 4]),
            "model.norm.weight": ones,
            "model.layers.0.input_layernorm.weight": ones,
            "model.layers.0.post_attention_layernorm.weight": ones,
            "model.layers.0.self_attn.q_proj.weight": Tensor(shape: [2, 2], values: [0.3, -1, 2, 0.5]),
            "model.layers.0.self_attn.k_proj.weight": Tensor(shape: [2, 2], values: [1, 2, 3, 4]),
            "model.layers.0.self_attn.v_proj.weight": identity,
            "model.layers.0.self_attn.o_proj.weight": identity,
            "model.layers.0.mlp.gate_proj.weight": identity,
            "model.layers.0.mlp.up_proj.weight": identity,
            "model.layers.0.mlp.down_proj.weight": identity,
        ]
        let logits = try ReferenceModel(config: config, tensors: tensors).logits(tokens: [2])

        func rms(_ v: [Double]) -> [Double] {
            let inverse = 1 / ((v.map { $0 * $0 }.reduce(0, +) / Double(v.count)) + Double(eps)).squareRoot()
            return v.map { $0 * inverse }
        }
        let x: [Double] = [3, 4]
        let attention = rms(x)  // one token attends only to itself: o(v(rms(x))) = rms(x)
        let h1 = zip(x, attention).map { $0 + $1 }
        let m = rms(h1)
        let mlp = m.map { ($0 / (1 + Foundation.exp(-$0))) * $0 }  // down(silu(gate m) * up m) with identities
        let h2 = zip(h1, mlp).map { $0 + $1 }
        let final = rms(h2)
        let embed: [[Double]] = [[1, 0], [0, 2], [3, 4]]
        let expected = embed.map { row in zip(row, final).map { $0 * $1 }.reduce(0, +) }
        XCTAssertEqual(logits.shape, [1, 3])
        for (actual, wanted) in zip(logits.values, expected) {
            XCTAssertEqual(Double(actual), wanted, accuracy: 1e-5)
        }
    }

    func testRoPERotatesHalvesByPositionTimesFrequency() {
        var x: [Float] = [1, 2, 3, 4, 1, 2, 3, 4]  // two rows (positions 0 and 1), one head of dim 4
        let frequencies: [Float] = [1, 0.01]
        ReferenceModel.rotate(&x, rows: 2, heads: 1, headDim: 4, offset: 0, inverseFrequencies: frequencies, positionScale: 1)
        XCTAssertEqual(Array(x[0..<4]), [1, 2, 3, 4], "position 0 is unrotated")
        let expected: [Float] = [
            1 * cos(1) - 3 * sin(1), 2 * cos(0.01) - 4 * sin(0.01), 1 * sin(1) + 3 * cos(1), 2 * sin(0.01) + 4 * cos(0.01),
        ]
        XCTAssertLessThan(maxAbsDifference(Array(x[4..<8]), expected), 1e-6)
    }

    func testRopeFrequenciesFollowTheta() throws {
        var config = ModelConfig(hiddenSize: 8, numHiddenLayers: 1, intermediateSize: 4, numAttentionHeads: 1, vocabSize: 4)
        config.ropeTheta = 10000
        let (frequencies, scale) = try ReferenceModel.ropeFrequencies(config)
        XCTAssertEqual(scale, 1)
        XCTAssertEqual(frequencies.count, 4)
        for (i, frequency) in frequencies.enumerated() {
            XCTAssertEqual(frequency, Float(pow(10000, -2 * Double(i) / 8)), accuracy: 1e-7)
        }
    }

    /// A plan whose recovery reconstructs the target's own weights exactly must give the plain model's logits.
    func testExactRecoveryMatchesPlainModel() throws {
        for kind in RecoveryKind.allCases {
            let plain = TinyModel.random(layers: 3, seed: 11)
            let sharp = plain.sharpened(plan: [2: 1, 0: 1], kind: kind, rank: 3, scale: 0.5, seed: 5)
            var reconstructed = plain
            for target in [0, 2] {
                for matrix in RecoveryConfig.allMatrices {
                    let name = "model.layers.\(target).mlp.\(matrix)"
                    reconstructed.tensors[name + ".weight"] = try effectiveWeight(sharp, target: target, reference: 1, matrix: matrix)
                }
            }
            let tokens = [3, 1, 4, 1, 5, 9, 2, 6]
            let expected = try reconstructed.logits(tokens)
            let actual = try sharp.logits(tokens)
            XCTAssertLessThan(maxAbsDifference(actual.values, expected.values), 1e-4, "kind \(kind.rawValue)")
            // And the sharing really changes the output compared with the unshared original.
            XCTAssertGreaterThan(maxAbsDifference(actual.values, try plain.logits(tokens).values), 1e-3)
        }
    }

    /// `W_eff[o][i] = s_out[o] * W_ref[o][i] * s_in[i] + scale * (A B)[i][o]`.
    private func effectiveWeight(_ model: TinyModel, target: Int, reference: Int, matrix: String) throws -> Tensor {
        let base = try XCTUnwrap(model.tensors["model.layers.\(reference).mlp.\(matrix).weight"])
        let prefix = "model.layers.\(target).mlp.\(matrix)"
        let (outputs, inputs) = (base.shape[0], base.shape[1])
        let inScale = model.tensors[prefix + ".in_scale"]?.values ?? Array(repeating: 1, count: inputs)
        let outScale = model.tensors[prefix + ".out_scale"]?.values ?? Array(repeating: 1, count: outputs)
        let scale = model.config.sharp?.recovery.scale ?? 1
        var values = [Float](repeating: 0, count: outputs * inputs)
        for o in 0..<outputs {
            for i in 0..<inputs {
                var lora: Float = 0
                if let a = model.tensors[prefix + ".lora_a"], let b = model.tensors[prefix + ".lora_b"] {
                    let rank = a.shape[1]
                    for r in 0..<rank { lora += a.values[i * rank + r] * b.values[r * outputs + o] }
                }
                values[o * inputs + i] = outScale[o] * base.values[o * inputs + i] * inScale[i] + scale * lora
            }
        }
        return Tensor(shape: base.shape, values: values)
    }

    func testIncrementalDecodingMatchesFullSequence() throws {
        let model = try ReferenceModel(
            config: TinyModel.random(seed: 2).sharpened(plan: [1: 0], kind: .loraAndVectors).config,
            tensors: TinyModel.random(seed: 2).sharpened(plan: [1: 0], kind: .loraAndVectors).tensors)
        let tokens = [5, 17, 2, 30, 8, 8]
        let full = try model.logits(tokens: tokens)
        var cache = ReferenceKVCache(layers: 3)
        var stepwise: [Float] = try model.logits(tokens: Array(tokens[0..<2]), cache: &cache).values
        for token in tokens[2...] {
            stepwise += try model.logits(tokens: [token], cache: &cache).values
        }
        XCTAssertEqual(cache.length, tokens.count)
        XCTAssertLessThan(maxAbsDifference(full.values, stepwise), 1e-5)
    }

    func testCausalMaskLeavesPrefixUnchanged() throws {
        let model = TinyModel.random(seed: 4)
        let long = try model.logits([1, 2, 3, 4, 5])
        let short = try model.logits([1, 2, 3])
        XCTAssertLessThan(maxAbsDifference(Array(long.values[0..<(3 * 32)]), short.values), 1e-6)
        XCTAssertGreaterThan(maxAbsDifference(Array(long.values[(2 * 32)..<(3 * 32)]), Array(long.values[(3 * 32)..<(4 * 32)])), 1e-4)
    }

    /// Query head j must use KV head j / (heads / kv_heads): a GQA model equals the MHA model whose K/V heads
    /// are the GQA heads repeated in that order.
    func testGroupedQueryAttentionMapping() throws {
        let grouped = TinyModel.random(layers: 2, hidden: 16, heads: 4, kvHeads: 2, seed: 9)
        var expanded = grouped
        expanded.config.numKeyValueHeads = 4
        let headDim = grouped.config.headDim
        for layer in 0..<2 {
            for projection in ["k_proj", "v_proj"] {
                let name = "model.layers.\(layer).self_attn.\(projection).weight"
                let weight = try XCTUnwrap(grouped.tensors[name])
                let rowsPerHead = headDim * 16
                var values: [Float] = []
                for head in 0..<4 {
                    let source = head / 2
                    values += weight.values[(source * rowsPerHead)..<((source + 1) * rowsPerHead)]
                }
                expanded.tensors[name] = Tensor(shape: [4 * headDim, 16], values: values)
            }
        }
        let tokens = [7, 3, 11, 0, 31]
        XCTAssertLessThan(maxAbsDifference(try grouped.logits(tokens).values, try expanded.logits(tokens).values), 1e-5)
    }

    func testUntiedHeadUsesLMHead() throws {
        let untied = TinyModel.random(tied: false, seed: 12)
        var tiedCopy = untied
        tiedCopy.config.tieWordEmbeddings = true
        tiedCopy.tensors["model.embed_tokens.weight"] = untied.tensors["lm_head.weight"]
        // Same output head, different embeddings: logits differ, so the untied path must read lm_head.
        XCTAssertGreaterThan(maxAbsDifference(try untied.logits([1, 2]).values, try tiedCopy.logits([1, 2]).values), 1e-4)
        var noHead = untied
        noHead.tensors["lm_head.weight"] = nil
        XCTAssertThrowsError(try noHead.logits([1])) { XCTAssertTrue("\($0)".contains("lm_head.weight")) }
    }

    func testLoadsFromDirectoryLikeInMemory() throws {
        let directory = try makeTemporaryDirectory(self)
        let model = TinyModel.random(seed: 21).sharpened(plan: [2: 0], kind: .lora)
        try model.write(to: directory)
        let loaded = try ReferenceModel(directory: directory)
        XCTAssertEqual(loaded.plan.referenceByTarget, [2: 0])
        let tokens = [0, 9, 4]
        XCTAssertEqual(try loaded.logits(tokens: tokens).values, try model.logits(tokens).values)
        XCTAssertThrowsError(try ReferenceModel(directory: directory, maximumParameters: 100)) { error in
            XCTAssertTrue("\(error)".contains("tiny models"), "\(error)")
        }
    }

    func testMissingRecoveryTensorIsNamed() throws {
        var model = TinyModel.random(seed: 3).sharpened(plan: [1: 0], kind: .lora)
        model.tensors["model.layers.1.mlp.up_proj.lora_b"] = nil
        XCTAssertThrowsError(try model.logits([1])) { error in
            XCTAssertTrue("\(error)".contains("model.layers.1.mlp.up_proj.lora_b"), "\(error)")
        }
    }

    func testRefusesOtherArchitectures() throws {
        var model = TinyModel.random(seed: 3).sharpened(plan: [1: 0])
        model.config.sharp?.baseModelType = "qwen3"
        XCTAssertThrowsError(try model.logits([1])) { XCTAssertTrue("\($0)".contains("qwen3"), "\($0)") }
        var plain = TinyModel.random(seed: 3)
        plain.config.modelType = "mistral"
        XCTAssertNoThrow(try plain.logits([1]))
    }

    func testRejectsOutOfRangeTokens() throws {
        XCTAssertThrowsError(try TinyModel.random().logits([32]))
        XCTAssertThrowsError(try TinyModel.random().logits([-1]))
    }
}
