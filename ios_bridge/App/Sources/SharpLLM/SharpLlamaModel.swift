import Foundation
import MLX
import MLXLLM
import MLXLMCommon
import MLXNN
import SharpBridge

// A port of the SHARP llama (sharp_mlx's sharp_model.py) to mlx-swift-lm: llama attention and norms per layer,
// MLP weights shared by reference between a target layer and its reference layer, LoRA / vector recovery.

/// Llama self-attention with grouped KV heads, non-traditional RoPE (configurable) and a KV cache.
final class SharpAttention: Module {
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let scale: Float
    let rope: RoPELayer

    @ModuleInfo(key: "q_proj") var queryProjection: Linear
    @ModuleInfo(key: "k_proj") var keyProjection: Linear
    @ModuleInfo(key: "v_proj") var valueProjection: Linear
    @ModuleInfo(key: "o_proj") var outputProjection: Linear

    init(_ configuration: SharpLlamaConfiguration) {
        let base = configuration.base
        let (heads, kvHeads, headDim) = (base.numAttentionHeads, base.numKeyValueHeads, base.headDim)
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        scale = 1 / Float(headDim).squareRoot()
        rope = initializeRope(
            dims: headDim, base: base.ropeTheta, traditional: configuration.ropeTraditional,
            scalingConfig: configuration.ropeScaling, maxPositionEmbeddings: configuration.maxPositionEmbeddings)
        let bias = base.attentionBias
        _queryProjection.wrappedValue = Linear(base.hiddenSize, heads * headDim, bias: bias)
        _keyProjection.wrappedValue = Linear(base.hiddenSize, kvHeads * headDim, bias: bias)
        _valueProjection.wrappedValue = Linear(base.hiddenSize, kvHeads * headDim, bias: bias)
        _outputProjection.wrappedValue = Linear(heads * headDim, base.hiddenSize, bias: bias)
    }

    func callAsFunction(_ x: MLXArray, mask: MLXFast.ScaledDotProductAttentionMaskMode, cache: KVCache?) -> MLXArray {
        let (batch, length) = (x.dim(0), x.dim(1))
        // (batch, length, count * headDim) -> (batch, count, length, headDim)
        func splitHeads(_ projected: MLXArray, _ count: Int) -> MLXArray {
            projected.reshaped(batch, length, count, headDim).transposed(0, 2, 1, 3)
        }
        let offset = cache?.ropeOffset
        let queries = applyRotaryPosition(rope, to: splitHeads(queryProjection(x), heads), offset: offset)
        let keys = applyRotaryPosition(rope, to: splitHeads(keyProjection(x), kvHeads), offset: offset)
        let values = splitHeads(valueProjection(x), kvHeads)
        let attended = attentionWithCacheUpdate(
            queries: queries, keys: keys, values: values, cache: cache, scale: scale, mask: mask)
        return outputProjection(attended.transposed(0, 2, 1, 3).reshaped(batch, length, -1))
    }
}

/// One decoder layer: `h = x + attn(norm(x))`, `out = h + mlp(norm(h))`.
final class SharpDecoderLayer: Module {
    @ModuleInfo(key: "self_attn") var attention: SharpAttention
    @ModuleInfo(key: "mlp") var mlp: Module & UnaryLayer
    @ModuleInfo(key: "input_layernorm") var inputNorm: RMSNorm
    @ModuleInfo(key: "post_attention_layernorm") var postAttentionNorm: RMSNorm

    init(_ configuration: SharpLlamaConfiguration, mlp: Module & UnaryLayer) {
        _attention.wrappedValue = SharpAttention(configuration)
        _mlp.wrappedValue = mlp
        _inputNorm.wrappedValue = RMSNorm(dimensions: configuration.hiddenSize, eps: configuration.base.rmsNormEps)
        _postAttentionNorm.wrappedValue = RMSNorm(
            dimensions: configuration.hiddenSize, eps: configuration.base.rmsNormEps)
    }

    func callAsFunction(_ x: MLXArray, mask: MLXFast.ScaledDotProductAttentionMaskMode, cache: KVCache?) -> MLXArray {
        let h = x + attention(inputNorm(x), mask: mask, cache: cache)
        return h + mlp(postAttentionNorm(h))
    }
}

/// The `model.*` part: embeddings, layers, final norm.
public final class SharpLlamaBackbone: Module {
    @ModuleInfo(key: "embed_tokens") var embedTokens: Embedding
    let layers: [SharpDecoderLayer]
    let norm: RMSNorm

    init(_ configuration: SharpLlamaConfiguration) {
        _embedTokens.wrappedValue = Embedding(
            embeddingCount: configuration.base.vocabSize, dimensions: configuration.hiddenSize)
        layers = SharpLlamaBackbone.makeLayers(configuration)
        norm = RMSNorm(dimensions: configuration.hiddenSize, eps: configuration.base.rmsNormEps)
    }

    /// Non-target layers own an MLP; each target borrows its reference layer's MLP (never a child module).
    private static func makeLayers(_ configuration: SharpLlamaConfiguration) -> [SharpDecoderLayer] {
        let plan = configuration.plan
        let layerCount = configuration.base.numHiddenLayers
        var owned: [Int: OwnedMLP] = [:]
        for layer in 0 ..< layerCount where !plan.isTarget(layer) {
            owned[layer] = OwnedMLP(configuration)
        }
        return (0 ..< layerCount).map { layer in
            let mlp: Module & UnaryLayer
            if let reference = plan.referenceByTarget[layer], let owner = owned[reference] {
                mlp = SharedMLP(configuration, shared: SharedWeightsReference(owner: owner, referenceLayer: reference))
            } else {
                mlp = owned[layer] ?? OwnedMLP(configuration)
            }
            return SharpDecoderLayer(configuration, mlp: mlp)
        }
    }

    func callAsFunction(_ tokens: MLXArray, cache: [KVCache]?) -> MLXArray {
        var h = embedTokens(tokens)
        let mask = createAttentionMask(h: h, cache: cache?.first)
        for (index, layer) in layers.enumerated() {
            h = layer(h, mask: mask, cache: cache?[index])
        }
        return norm(h)
    }
}

/// The SHARP llama as an mlx-swift-lm language model (`model_type: "sharp"`).
public final class SharpLlamaModel: Module, LLMModel, KVCacheDimensionProvider {
    public let vocabularySize: Int
    public let kvHeads: [Int]
    public let configuration: SharpLlamaConfiguration
    public let model: SharpLlamaBackbone
    @ModuleInfo(key: "lm_head") var lmHead: Linear?

    public init(_ configuration: SharpLlamaConfiguration) {
        self.configuration = configuration
        vocabularySize = configuration.base.vocabSize
        kvHeads = Array(repeating: configuration.base.numKeyValueHeads, count: configuration.base.numHiddenLayers)
        model = SharpLlamaBackbone(configuration)
        if !configuration.base.tieWordEmbeddings {
            _lmHead.wrappedValue = Linear(configuration.hiddenSize, configuration.base.vocabSize, bias: false)
        }
    }

    public func callAsFunction(_ inputs: MLXArray, cache: [KVCache]?) -> MLXArray {
        let hidden = model(inputs, cache: cache)
        if let lmHead { return lmHead(hidden) }
        return model.embedTokens.asLinear(hidden)
    }

    /// Drops tensors the module tree does not have: precomputed rotary frequencies and, for tied embeddings,
    /// any `lm_head.*` a converter left in.
    public func sanitize(weights: [String: MLXArray]) -> [String: MLXArray] {
        weights.filter { key, _ in
            if key.contains("self_attn.rotary_emb.inv_freq") { return false }
            if configuration.base.tieWordEmbeddings && key.hasPrefix("lm_head.") { return false }
            return true
        }
    }

    public var loraLayers: [Module] { model.layers }
}

/// Registers model type `"sharp"` with mlx-swift-lm's `LLMTypeRegistry` so `LLMModelFactory` can load
/// exported SHARP directories. Call once before loading (idempotent).
public enum SharpModelRegistration {
    public static let modelType = "sharp"

    public static func register() async {
        await LLMTypeRegistry.shared.registerModelType(
            modelType,
            creator: { @Sendable data in try SharpLlamaModel(SharpLlamaConfiguration(data: data)) })
    }
}
