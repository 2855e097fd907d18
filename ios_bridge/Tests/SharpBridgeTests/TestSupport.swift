import Foundation
import XCTest

@testable import SharpBridge

/// SplitMix64: a tiny seeded generator so every random test is reproducible.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func floats(_ count: Int, scale: Float = 1) -> [Float] {
        (0..<count).map { _ in Float.random(in: -scale...scale, using: &self) }
    }
}

/// A fresh temporary directory, removed when the test ends.
func makeTemporaryDirectory(_ test: XCTestCase) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("sharp-bridge-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
}

/// A small random llama (or SHARP llama) held as named fp32 tensors, writable as a model directory.
struct TinyModel {
    var config: ModelConfig
    var tensors: [String: Tensor]

    /// A plain llama with random weights.
    static func random(
        layers: Int = 3, hidden: Int = 16, intermediate: Int = 24, heads: Int = 4, kvHeads: Int = 2, vocab: Int = 32,
        tied: Bool = true, seed: UInt64 = 1
    ) -> TinyModel {
        var rng = SeededGenerator(seed: seed)
        let config = ModelConfig(
            hiddenSize: hidden, numHiddenLayers: layers, intermediateSize: intermediate, numAttentionHeads: heads,
            numKeyValueHeads: kvHeads, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: vocab, tieWordEmbeddings: tied)
        let headDim = config.headDim
        var tensors: [String: Tensor] = [:]
        func add(_ name: String, _ shape: [Int], scale: Float = 0.3, offset: Float = 0) {
            tensors[name] = Tensor(shape: shape, values: rng.floats(shape.reduce(1, *), scale: scale).map { $0 + offset })
        }
        add("model.embed_tokens.weight", [vocab, hidden], scale: 1)
        if !tied { add("lm_head.weight", [vocab, hidden]) }
        add("model.norm.weight", [hidden], scale: 0.1, offset: 1)
        for layer in 0..<layers {
            let prefix = "model.layers.\(layer)"
            add(prefix + ".input_layernorm.weight", [hidden], scale: 0.1, offset: 1)
            add(prefix + ".post_attention_layernorm.weight", [hidden], scale: 0.1, offset: 1)
            add(prefix + ".self_attn.q_proj.weight", [heads * headDim, hidden])
            add(prefix + ".self_attn.k_proj.weight", [kvHeads * headDim, hidden])
            add(prefix + ".self_attn.v_proj.weight", [kvHeads * headDim, hidden])
            add(prefix + ".self_attn.o_proj.weight", [hidden, heads * headDim])
            add(prefix + ".mlp.gate_proj.weight", [intermediate, hidden])
            add(prefix + ".mlp.up_proj.weight", [intermediate, hidden])
            add(prefix + ".mlp.down_proj.weight", [hidden, intermediate])
        }
        return TinyModel(config: config, tensors: tensors)
    }

    /// The SHARP version: target layers drop their MLP weights and gain random recovery tensors.
    func sharpened(plan: [Int: Int], kind: RecoveryKind = .lora, rank: Int = 2, scale: Float = 1, seed: UInt64 = 7) -> TinyModel {
        var rng = SeededGenerator(seed: seed)
        var model = self
        model.config.modelType = "sharp"
        model.config.modelFile = "sharp_model.py"
        model.config.sharp = SharpBlock(
            plan: Dictionary(uniqueKeysWithValues: plan.map { (String($0.key), $0.value) }),
            recovery: RecoveryConfig(kind: kind, rank: rank, scale: scale))
        for target in plan.keys {
            for matrix in RecoveryConfig.allMatrices {
                let prefix = "model.layers.\(target).mlp.\(matrix)"
                guard let weight = model.tensors.removeValue(forKey: prefix + ".weight") else { continue }
                let (outputs, inputs) = (weight.shape[0], weight.shape[1])
                if kind.usesVectors {
                    model.tensors[prefix + ".in_scale"] = Tensor(shape: [inputs], values: rng.floats(inputs, scale: 0.2).map { $0 + 1 })
                    model.tensors[prefix + ".out_scale"] = Tensor(shape: [outputs], values: rng.floats(outputs, scale: 0.2).map { $0 + 1 })
                }
                if kind.usesLoRA {
                    model.tensors[prefix + ".lora_a"] = Tensor(shape: [inputs, rank], values: rng.floats(inputs * rank, scale: 0.2))
                    model.tensors[prefix + ".lora_b"] = Tensor(shape: [rank, outputs], values: rng.floats(rank * outputs, scale: 0.2))
                }
            }
        }
        return model
    }

    /// Writes `config.json` and `model.safetensors` (fp32) into `directory`.
    func write(to directory: URL, fileName: String = "model.safetensors") throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(config).write(to: directory.appendingPathComponent("config.json"))
        let writable = tensors.keys.sorted().map { name in
            WritableTensor.float32(name, shape: tensors[name]?.shape ?? [], values: tensors[name]?.values ?? [])
        }
        try SafetensorsWriter.write(writable, metadata: ["format": "mlx"], to: directory.appendingPathComponent(fileName))
    }

    func logits(_ tokens: [Int]) throws -> Tensor {
        try ReferenceModel(config: config, tensors: tensors).logits(tokens: tokens)
    }
}

/// Largest absolute element-wise difference (infinity when the sizes differ).
func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    guard a.count == b.count else { return .infinity }
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}
