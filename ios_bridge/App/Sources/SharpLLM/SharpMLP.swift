import Foundation
import MLX
import MLXNN
import SharpBridge

/// An MLP that stores its own `gate_proj`, `up_proj` and `down_proj` (a plain layer or a reference layer).
///
/// The projections are `Linear` so mlx-swift-lm's weight loader can swap in `QuantizedLinear` for quantized
/// weights, exactly as for its Llama; layers sharing these weights read them through the module at call time,
/// so they always use the current (possibly quantized) modules.
final class OwnedMLP: Module, UnaryLayer {
    @ModuleInfo(key: "gate_proj") var gate: Linear
    @ModuleInfo(key: "up_proj") var up: Linear
    @ModuleInfo(key: "down_proj") var down: Linear

    init(_ configuration: SharpLlamaConfiguration) {
        let bias = configuration.base.mlpBias
        _gate.wrappedValue = Linear(configuration.hiddenSize, configuration.intermediateSize, bias: bias)
        _up.wrappedValue = Linear(configuration.hiddenSize, configuration.intermediateSize, bias: bias)
        _down.wrappedValue = Linear(configuration.intermediateSize, configuration.hiddenSize, bias: bias)
    }

    func projection(_ matrix: MLPMatrix) -> Linear {
        switch matrix {
        case .gate: return gate
        case .up: return up
        case .down: return down
        }
    }

    func callAsFunction(_ x: MLXArray) -> MLXArray {
        down(silu(gate(x)) * up(x))
    }
}

/// Points at the reference layer's MLP without making it a child module.
///
/// `Module` discovers parameters and children by reflection; a property of this (non-Module) type is an opaque
/// value to it, so parameters(), weight loading, quantization and parameter counts see the shared weights once,
/// under the reference layer only.
final class SharedWeightsReference {
    let owner: OwnedMLP
    let referenceLayer: Int

    init(owner: OwnedMLP, referenceLayer: Int) {
        self.owner = owner
        self.referenceLayer = referenceLayer
    }
}

/// The MLP of a SHARP target layer: the reference layer's weights plus this layer's recovery parameters.
/// Its only parameters are the recovery tensors under `mlp.<matrix>.{lora_a, lora_b, in_scale, out_scale}`.
final class SharedMLP: Module, UnaryLayer {
    private let shared: SharedWeightsReference
    @ModuleInfo(key: "gate_proj") var gateRecovery: MatrixRecovery?
    @ModuleInfo(key: "up_proj") var upRecovery: MatrixRecovery?
    @ModuleInfo(key: "down_proj") var downRecovery: MatrixRecovery?

    init(_ configuration: SharpLlamaConfiguration, shared: SharedWeightsReference) {
        self.shared = shared
        _gateRecovery.wrappedValue = MatrixRecovery.make(for: .gate, configuration)
        _upRecovery.wrappedValue = MatrixRecovery.make(for: .up, configuration)
        _downRecovery.wrappedValue = MatrixRecovery.make(for: .down, configuration)
    }

    func callAsFunction(_ x: MLXArray) -> MLXArray {
        let gate = project(x, .gate, gateRecovery)
        let up = project(x, .up, upRecovery)
        return project(silu(gate) * up, .down, downRecovery)
    }

    private func project(_ x: MLXArray, _ matrix: MLPMatrix, _ recovery: MatrixRecovery?) -> MLXArray {
        let weights = shared.owner.projection(matrix)
        return recovery?.apply(x, base: weights) ?? weights(x)
    }
}

/// Recovery parameters of one matrix. The subclasses own exactly the tensors their kind stores, so strict
/// weight loading (`verify: .all`) matches the exported file key for key.
class MatrixRecovery: Module {
    /// `base(x)` adjusted by the recovery parameters.
    func apply(_ x: MLXArray, base: Linear) -> MLXArray { base(x) }

    static func make(for matrix: MLPMatrix, _ configuration: SharpLlamaConfiguration) -> MatrixRecovery? {
        guard let recovery = configuration.recovery(for: matrix) else { return nil }
        let (inputs, outputs) = matrix.dimensions(configuration)
        switch recovery.kind {
        case .lora:
            return LoRARecovery(inputs: inputs, outputs: outputs, rank: recovery.rank, scale: recovery.scale)
        case .vectors:
            return VectorRecovery(inputs: inputs, outputs: outputs)
        case .loraAndVectors:
            return LoRAVectorRecovery(inputs: inputs, outputs: outputs, rank: recovery.rank, scale: recovery.scale)
        }
    }
}

/// `y = base(x) + scale * (x A) B` with `A` (inputs, rank) and `B` (rank, outputs).
final class LoRARecovery: MatrixRecovery {
    let scale: Float
    @ParameterInfo(key: "lora_a") var loraA: MLXArray
    @ParameterInfo(key: "lora_b") var loraB: MLXArray

    init(inputs: Int, outputs: Int, rank: Int, scale: Float) {
        self.scale = scale
        _loraA.wrappedValue = MLXArray.zeros([inputs, rank])
        _loraB.wrappedValue = MLXArray.zeros([rank, outputs])
    }

    override func apply(_ x: MLXArray, base: Linear) -> MLXArray {
        let y = base(x)
        return y + lowRankUpdate(x, loraA, loraB, scale: scale, like: y)
    }
}

/// `y = base(x * s_in) * s_out`.
final class VectorRecovery: MatrixRecovery {
    @ParameterInfo(key: "in_scale") var inScale: MLXArray
    @ParameterInfo(key: "out_scale") var outScale: MLXArray

    init(inputs: Int, outputs: Int) {
        _inScale.wrappedValue = MLXArray.ones([inputs])
        _outScale.wrappedValue = MLXArray.ones([outputs])
    }

    override func apply(_ x: MLXArray, base: Linear) -> MLXArray {
        base(x * inScale) * outScale
    }
}

/// `y = base(x * s_in) * s_out + scale * (x A) B`.
final class LoRAVectorRecovery: MatrixRecovery {
    let scale: Float
    @ParameterInfo(key: "in_scale") var inScale: MLXArray
    @ParameterInfo(key: "out_scale") var outScale: MLXArray
    @ParameterInfo(key: "lora_a") var loraA: MLXArray
    @ParameterInfo(key: "lora_b") var loraB: MLXArray

    init(inputs: Int, outputs: Int, rank: Int, scale: Float) {
        self.scale = scale
        _inScale.wrappedValue = MLXArray.ones([inputs])
        _outScale.wrappedValue = MLXArray.ones([outputs])
        _loraA.wrappedValue = MLXArray.zeros([inputs, rank])
        _loraB.wrappedValue = MLXArray.zeros([rank, outputs])
    }

    override func apply(_ x: MLXArray, base: Linear) -> MLXArray {
        let y = base(x * inScale) * outScale
        return y + lowRankUpdate(x, loraA, loraB, scale: scale, like: y)
    }
}

/// `scale * (x A) B`, cast to the dtype of `like` so fp32 recovery tensors do not promote a half-precision stream.
private func lowRankUpdate(_ x: MLXArray, _ a: MLXArray, _ b: MLXArray, scale: Float, like: MLXArray) -> MLXArray {
    (matmul(matmul(x, a), b) * scale).asType(like.dtype)
}
