import Foundation

/// The parts of a model's `config.json` SharpBridge needs: the llama hyper-parameters, the optional
/// quantization block and the optional `sharp` block. A config without a `sharp` block is a plain llama
/// model (empty plan).
public struct ModelConfig: Codable, Equatable, Sendable {
    public var modelType: String
    public var modelFile: String?
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    public var intermediateSize: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Float
    public var ropeScaling: RopeScaling?
    public var vocabSize: Int
    public var tieWordEmbeddings: Bool
    public var attentionBias: Bool
    public var mlpBias: Bool
    public var quantization: QuantizationConfig?
    public var sharp: SharpBlock?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case modelFile = "model_file"
        case hiddenSize = "hidden_size"
        case numHiddenLayers = "num_hidden_layers"
        case intermediateSize = "intermediate_size"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case vocabSize = "vocab_size"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case mlpBias = "mlp_bias"
        case quantization
        case sharp
    }

    public init(
        modelType: String = "llama", hiddenSize: Int, numHiddenLayers: Int, intermediateSize: Int,
        numAttentionHeads: Int, numKeyValueHeads: Int? = nil, headDim: Int? = nil, rmsNormEps: Float = 1e-5,
        ropeTheta: Float = 10000, vocabSize: Int, tieWordEmbeddings: Bool = true, sharp: SharpBlock? = nil
    ) {
        self.modelType = modelType
        self.modelFile = nil
        self.hiddenSize = hiddenSize
        self.numHiddenLayers = numHiddenLayers
        self.intermediateSize = intermediateSize
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads ?? numAttentionHeads
        self.headDim = headDim ?? (numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0)
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = nil
        self.vocabSize = vocabSize
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = false
        self.mlpBias = false
        self.quantization = nil
        self.sharp = sharp
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try container.decodeIfPresent(String.self, forKey: .modelType) ?? "llama"
        modelFile = try container.decodeIfPresent(String.self, forKey: .modelFile)
        hiddenSize = try container.decode(Int.self, forKey: .hiddenSize)
        numHiddenLayers = try container.decode(Int.self, forKey: .numHiddenLayers)
        intermediateSize = try container.decode(Int.self, forKey: .intermediateSize)
        numAttentionHeads = try container.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try container.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        let defaultHeadDim = numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0
        headDim = try container.decodeIfPresent(Int.self, forKey: .headDim) ?? defaultHeadDim
        rmsNormEps = try container.decodeIfPresent(Float.self, forKey: .rmsNormEps) ?? 1e-5
        ropeTheta = try container.decodeIfPresent(Float.self, forKey: .ropeTheta) ?? 10000
        ropeScaling = try container.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling)
        vocabSize = try container.decode(Int.self, forKey: .vocabSize)
        tieWordEmbeddings = try container.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? true
        attentionBias = try container.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? false
        mlpBias = try container.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
        quantization = try container.decodeIfPresent(QuantizationConfig.self, forKey: .quantization)
        sharp = try container.decodeIfPresent(SharpBlock.self, forKey: .sharp)
    }

    /// Reads and validates `config.json` from a model directory.
    public static func load(directory: URL) throws -> ModelConfig {
        let url = directory.appendingPathComponent("config.json")
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw SharpError.io(path: url.path, reason: error.localizedDescription)
        }
        return try decode(data, source: url.path)
    }

    /// Decodes and validates config JSON bytes; `source` names them in error messages.
    public static func decode(_ data: Data, source: String = "config.json") throws -> ModelConfig {
        let config: ModelConfig
        do {
            config = try JSONDecoder().decode(ModelConfig.self, from: data)
        } catch let error as SharpError {
            throw error
        } catch {
            throw SharpError.invalidConfig("\(source): \(describeDecodingError(error))")
        }
        try config.validate()
        return config
    }

    /// Checks the hyper-parameters are usable (positive sizes, heads divide evenly).
    public func validate() throws {
        let positive: [(String, Int)] = [
            ("hidden_size", hiddenSize), ("num_hidden_layers", numHiddenLayers),
            ("intermediate_size", intermediateSize), ("num_attention_heads", numAttentionHeads),
            ("num_key_value_heads", numKeyValueHeads), ("head_dim", headDim), ("vocab_size", vocabSize),
        ]
        for (name, value) in positive where value <= 0 {
            throw SharpError.invalidConfig("\(name) must be positive, got \(value)")
        }
        if numAttentionHeads % numKeyValueHeads != 0 {
            throw SharpError.invalidConfig(
                "num_attention_heads (\(numAttentionHeads)) is not a multiple of num_key_value_heads (\(numKeyValueHeads))"
            )
        }
        let products: [(String, Int, Int)] = [
            ("num_attention_heads * head_dim", numAttentionHeads, headDim),
            ("num_key_value_heads * head_dim", numKeyValueHeads, headDim),
            ("vocab_size * hidden_size", vocabSize, hiddenSize),
            ("intermediate_size * hidden_size", intermediateSize, hiddenSize),
        ]
        for (name, a, b) in products where a.multipliedReportingOverflow(by: b).overflow {
            throw SharpError.invalidConfig("\(name) overflows")
        }
        if headDim % 2 != 0 {
            throw SharpError.invalidConfig("head_dim must be even for RoPE, got \(headDim)")
        }
        if let sharp {
            if sharp.version != 1 {
                throw SharpError.invalidConfig("unsupported sharp.version \(sharp.version) (expected 1)")
            }
            _ = try resolvedPlan()
        }
    }

    /// True when the config carries a `sharp` block (a plain llama config has none).
    public var isSharp: Bool { sharp != nil }

    /// The architecture the layers follow: `sharp.base_model_type` for a SHARP model, else `model_type`.
    public var baseArchitecture: String { sharp?.baseModelType ?? modelType }

    /// The validated plan (empty for a plain llama model).
    public func resolvedPlan() throws -> SharpPlan {
        try SharpPlan(rawPlan: sharp?.plan ?? [:], numLayers: numHiddenLayers)
    }
}

/// `rope_scaling` as mlx-lm's llama reads it (`type`/`rope_type`, `factor`, llama3 frequency settings).
public struct RopeScaling: Codable, Equatable, Sendable {
    public var type: String?
    public var ropeType: String?
    public var factor: Float?
    public var lowFreqFactor: Float?
    public var highFreqFactor: Float?
    public var originalMaxPositionEmbeddings: Float?

    enum CodingKeys: String, CodingKey {
        case type
        case ropeType = "rope_type"
        case factor
        case lowFreqFactor = "low_freq_factor"
        case highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }

    /// `rope_type` if given, else `type`, else "default".
    public var kind: String { ropeType ?? type ?? "default" }
}

/// The `quantization` block of an mlx-lm config: default `group_size`/`bits`, an optional `mode`
/// (only "affine" is understood) and per-module overrides (`"model.embed_tokens": {"group_size": 32, "bits": 8}`).
public struct QuantizationConfig: Codable, Equatable, Sendable {
    public var groupSize: Int
    public var bits: Int
    public var mode: String?
    /// Module path (e.g. `model.layers.0.mlp.gate_proj`) -> its own settings.
    public var overrides: [String: QuantizationConfig]

    public init(groupSize: Int, bits: Int, mode: String? = nil, overrides: [String: QuantizationConfig] = [:]) {
        self.groupSize = groupSize
        self.bits = bits
        self.mode = mode
        self.overrides = overrides
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: AnyCodingKey.self)
        groupSize = try container.decodeIfPresent(Int.self, forKey: AnyCodingKey(stringValue: "group_size")) ?? 64
        bits = try container.decodeIfPresent(Int.self, forKey: AnyCodingKey(stringValue: "bits")) ?? 4
        mode = try container.decodeIfPresent(String.self, forKey: AnyCodingKey(stringValue: "mode"))
        overrides = [:]
        for key in container.allKeys where !["group_size", "bits", "mode"].contains(key.stringValue) {
            if let nested = try? container.decode(QuantizationConfig.self, forKey: key) {
                overrides[key.stringValue] = nested
            }
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: AnyCodingKey.self)
        try container.encode(groupSize, forKey: AnyCodingKey(stringValue: "group_size"))
        try container.encode(bits, forKey: AnyCodingKey(stringValue: "bits"))
        try container.encodeIfPresent(mode, forKey: AnyCodingKey(stringValue: "mode"))
        for (key, value) in overrides {
            try container.encode(value, forKey: AnyCodingKey(stringValue: key))
        }
    }

    /// The settings for one module (its override if any, else the defaults).
    public func settings(forModule module: String) -> QuantizationConfig {
        overrides[module] ?? QuantizationConfig(groupSize: groupSize, bits: bits, mode: mode)
    }
}

/// The `sharp` block: which layers share which MLP and how the shared weights are recovered.
public struct SharpBlock: Codable, Equatable, Sendable {
    public var version: Int
    public var baseModelType: String
    /// Target layer (decimal string) -> reference layer, exactly as stored in JSON.
    public var plan: [String: Int]
    public var recovery: RecoveryConfig

    enum CodingKeys: String, CodingKey {
        case version
        case baseModelType = "base_model_type"
        case plan
        case recovery
    }

    public init(version: Int = 1, baseModelType: String = "llama", plan: [String: Int], recovery: RecoveryConfig) {
        self.version = version
        self.baseModelType = baseModelType
        self.plan = plan
        self.recovery = recovery
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decodeIfPresent(Int.self, forKey: .version) ?? 1
        baseModelType = try container.decodeIfPresent(String.self, forKey: .baseModelType) ?? "llama"
        plan = try container.decodeIfPresent([String: Int].self, forKey: .plan) ?? [:]
        recovery = try container.decode(RecoveryConfig.self, forKey: .recovery)
    }
}

/// How a target layer recovers from using the reference layer's MLP weights.
public enum RecoveryKind: String, Codable, Equatable, Sendable, CaseIterable {
    /// `y = x W^T + scale * (x A) B`
    case lora
    /// `y = ((x * s_in) W^T) * s_out`
    case vectors
    /// `y = ((x * s_in) W^T) * s_out + scale * (x A) B`
    case loraAndVectors = "lora+vectors"

    public var usesLoRA: Bool { self != .vectors }
    public var usesVectors: Bool { self != .lora }

    /// Tensor name suffixes a target layer must carry for each recovered matrix.
    public var tensorSuffixes: [String] {
        var suffixes: [String] = []
        if usesVectors { suffixes += ["in_scale", "out_scale"] }
        if usesLoRA { suffixes += ["lora_a", "lora_b"] }
        return suffixes
    }
}

/// The `sharp.recovery` block.
public struct RecoveryConfig: Codable, Equatable, Sendable {
    public static let allMatrices = ["gate_proj", "up_proj", "down_proj"]

    public var kind: RecoveryKind
    public var rank: Int
    public var matrices: [String]
    public var scale: Float

    public init(kind: RecoveryKind, rank: Int, matrices: [String] = RecoveryConfig.allMatrices, scale: Float = 1.0) {
        self.kind = kind
        self.rank = rank
        self.matrices = matrices
        self.scale = scale
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        kind = try container.decode(RecoveryKind.self, forKey: .kind)
        rank = try container.decodeIfPresent(Int.self, forKey: .rank) ?? 0
        matrices = try container.decodeIfPresent([String].self, forKey: .matrices) ?? RecoveryConfig.allMatrices
        scale = try container.decodeIfPresent(Float.self, forKey: .scale) ?? 1.0
        for matrix in matrices where !RecoveryConfig.allMatrices.contains(matrix) {
            throw SharpError.invalidConfig("sharp.recovery.matrices has unknown matrix \"\(matrix)\"")
        }
        if kind.usesLoRA && rank <= 0 {
            throw SharpError.invalidConfig("sharp.recovery.rank must be positive for kind \(kind.rawValue)")
        }
    }
}

/// A one-line explanation of a `DecodingError` (which key, what went wrong).
func describeDecodingError(_ error: Error) -> String {
    guard let decodingError = error as? DecodingError else { return error.localizedDescription }
    func path(_ context: DecodingError.Context) -> String {
        let keys = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }
        return keys.isEmpty ? "<root>" : keys.joined(separator: ".")
    }
    switch decodingError {
    case .keyNotFound(let key, let context):
        let parent = path(context)
        return "missing key \"\(key.stringValue)\"" + (parent == "<root>" ? "" : " in \(parent)")
    case .typeMismatch(let type, let context):
        return "wrong type at \(path(context)) (expected \(type)): \(context.debugDescription)"
    case .valueNotFound(let type, let context):
        return "null at \(path(context)) (expected \(type))"
    case .dataCorrupted(let context):
        return "corrupted data at \(path(context)): \(context.debugDescription)"
    @unknown default:
        return error.localizedDescription
    }
}
