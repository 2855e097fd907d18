import Foundation
import MLXLMCommon
import SharpBridge

/// Configuration of a SHARP llama (`model_type: "sharp"`) for the MLX port.
///
/// SharpBridge decodes and validates the llama hyper-parameters and the `sharp` block (plan rules: in range,
/// no self references, no chains); the RoPE fields MLX's `initializeRope` wants are decoded alongside.
public struct SharpLlamaConfiguration: Sendable {
    public let base: ModelConfig
    public let plan: SharpPlan
    /// nil for a plain llama (no `sharp` block): every layer then owns its MLP.
    public let recovery: RecoveryConfig?
    let ropeScaling: [String: StringOrNumber]?
    let ropeTraditional: Bool
    let maxPositionEmbeddings: Int?

    /// Base architectures whose layers are exactly llama's (same attention, norms and SwiGLU MLP).
    public static let supportedBaseTypes = ["llama", "mistral"]

    public init(data: Data) throws {
        base = try ModelConfig.decode(data)
        guard SharpLlamaConfiguration.supportedBaseTypes.contains(base.baseArchitecture) else {
            throw SharpError.unsupported(
                "SHARP base model type \"\(base.baseArchitecture)\"; this app ports llama/mistral only")
        }
        plan = try base.resolvedPlan()
        recovery = base.sharp?.recovery
        let rope = try JSONDecoder().decode(RopeFields.self, from: data)
        ropeScaling = rope.ropeScaling
        ropeTraditional = rope.ropeTraditional ?? false
        maxPositionEmbeddings = rope.maxPositionEmbeddings
    }

    var hiddenSize: Int { base.hiddenSize }
    var intermediateSize: Int { base.intermediateSize }
    var headDim: Int { base.headDim }

    /// Recovery settings of one matrix of a target layer; nil when that matrix uses the shared weights as is.
    func recovery(for matrix: MLPMatrix) -> RecoveryConfig? {
        guard let recovery, recovery.matrices.contains(matrix.rawValue) else { return nil }
        return recovery
    }
}

/// The RoPE keys of config.json that SharpBridge does not model.
private struct RopeFields: Decodable {
    let ropeScaling: [String: StringOrNumber]?
    let ropeTraditional: Bool?
    let maxPositionEmbeddings: Int?

    enum CodingKeys: String, CodingKey {
        case ropeScaling = "rope_scaling"
        case ropeTraditional = "rope_traditional"
        case maxPositionEmbeddings = "max_position_embeddings"
    }
}

/// The three matrices of a llama MLP, named as in the weight files.
enum MLPMatrix: String, CaseIterable {
    case gate = "gate_proj"
    case up = "up_proj"
    case down = "down_proj"

    /// (inputs, outputs) of the matrix.
    func dimensions(_ configuration: SharpLlamaConfiguration) -> (inputs: Int, outputs: Int) {
        switch self {
        case .gate, .up: return (configuration.hiddenSize, configuration.intermediateSize)
        case .down: return (configuration.intermediateSize, configuration.hiddenSize)
        }
    }
}
