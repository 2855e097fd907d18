import Foundation

/// A dense layer `y = x W^T (+ b)` with `W` of shape (outputs, inputs).
struct DenseLinear {
    let weight: [Float]
    let bias: [Float]?
    let inputs: Int
    let outputs: Int

    func callAsFunction(_ x: [Float], rows: Int) -> [Float] {
        var y = LinearAlgebra.matmulTransposed(x, rows: rows, inner: inputs, weight, outputs: outputs)
        if let bias { LinearAlgebra.addRowVector(&y, columns: outputs, bias) }
        return y
    }
}

/// An MLP projection: the layer's own weights, or a reference layer's weights plus recovery parameters.
///
/// Recovered: `y = ((x * s_in) W^T + b) * s_out + scale * (x A) B`, where the vector terms are present for
/// kinds `vectors` / `lora+vectors` and the LoRA term for `lora` / `lora+vectors`.
struct MLPProjection {
    let base: DenseLinear
    var inScale: [Float]? = nil
    var outScale: [Float]? = nil
    /// `A` (inputs, rank) and `B` (rank, outputs).
    var lora: (a: [Float], b: [Float], rank: Int)? = nil
    var loraScale: Float = 1

    func callAsFunction(_ x: [Float], rows: Int) -> [Float] {
        let scaledInput = inScale.map { LinearAlgebra.scaleColumns(x, columns: base.inputs, by: $0) } ?? x
        var y = base(scaledInput, rows: rows)
        if let outScale { y = LinearAlgebra.scaleColumns(y, columns: base.outputs, by: outScale) }
        if let lora {
            let down = LinearAlgebra.matmul(x, rows: rows, inner: base.inputs, lora.a, columns: lora.rank)
            let update = LinearAlgebra.matmul(down, rows: rows, inner: lora.rank, lora.b, columns: base.outputs)
            for index in y.indices { y[index] += loraScale * update[index] }
        }
        return y
    }
}

struct DecoderLayer {
    let inputNorm: [Float]
    let postAttentionNorm: [Float]
    let query: DenseLinear
    let key: DenseLinear
    let value: DenseLinear
    let output: DenseLinear
    let gate: MLPProjection
    let up: MLPProjection
    let down: MLPProjection
}

/// Keys and values of past positions, per layer, for incremental decoding.
public struct ReferenceKVCache: Sendable {
    var keys: [[Float]]
    var values: [[Float]]
    /// Number of positions already processed.
    public private(set) var length = 0

    public init(layers: Int) {
        keys = Array(repeating: [], count: layers)
        values = Array(repeating: [], count: layers)
    }

    mutating func advance(by count: Int) { length += count }
}

/// A naive but exact fp32 CPU forward pass of the SHARP llama (mlx-lm llama math, non-traditional RoPE),
/// used to prove Python <-> Swift parity on tiny exported models.
public final class ReferenceModel {
    /// Models above this many parameters are refused unless the caller raises the limit.
    public static let defaultMaximumParameters = 300_000_000
    /// Architectures whose decoder is the llama one computed here (qwen2 only adds optional q/k/v biases,
    /// which are read when present). Others, e.g. qwen3 with its q/k norms, are refused.
    public static let supportedArchitectures = ["llama", "mistral", "qwen2"]

    public let config: ModelConfig
    public let plan: SharpPlan
    private let embedding: [Float]
    private let outputProjection: [Float]
    private let finalNorm: [Float]
    private let layers: [DecoderLayer]
    /// Per RoPE frequency `i`: the angle per position, `1 / period_i`.
    private let ropeInverseFrequencies: [Float]
    private let ropePositionScale: Float

    /// Loads a model directory (fp32/fp16/bf16 weights, MLX affine-quantized weights are dequantized).
    public convenience init(directory: URL, maximumParameters: Int = ReferenceModel.defaultMaximumParameters) throws {
        let config = try ModelConfig.load(directory: directory)
        let index = try ModelTensorIndex(directory: directory)
        let counter = ParameterCounter(index: index, quantization: config.quantization)
        let parameters = index.allTensors.reduce(0) { $0 + counter.parameters(of: $1.info) }
        guard parameters <= maximumParameters else {
            throw SharpError.unsupported(
                "the reference forward pass is for tiny models; this one has \(parameters) parameters (limit \(maximumParameters))")
        }
        let reader = TensorReader(index: index, quantization: config.quantization)
        try self.init(config: config, tensor: { try reader.optionalTensor($0) })
    }

    /// Builds the model from named tensors (mlx-lm names), e.g. hand-made weights in tests.
    public convenience init(config: ModelConfig, tensors: [String: Tensor]) throws {
        try self.init(config: config, tensor: { tensors[$0] })
    }

    /// Builds the model from a tensor source that returns nil for absent names.
    public init(config: ModelConfig, tensor: @escaping (String) throws -> Tensor?) throws {
        try config.validate()
        guard ReferenceModel.supportedArchitectures.contains(config.baseArchitecture) else {
            throw SharpError.unsupported(
                "architecture \"\(config.baseArchitecture)\" in the reference forward pass (supported: \(ReferenceModel.supportedArchitectures.joined(separator: ", ")))")
        }
        let loader = WeightLoader(config: config, source: tensor)
        self.config = config
        self.plan = try config.resolvedPlan()
        embedding = try loader.matrix("model.embed_tokens.weight", rows: config.vocabSize, columns: config.hiddenSize)
        if config.tieWordEmbeddings {
            outputProjection = embedding
        } else {
            outputProjection = try loader.matrix("lm_head.weight", rows: config.vocabSize, columns: config.hiddenSize)
        }
        finalNorm = try loader.vector("model.norm.weight", count: config.hiddenSize)
        layers = try loader.layers(plan: plan)
        (ropeInverseFrequencies, ropePositionScale) = try ReferenceModel.ropeFrequencies(config)
    }

    /// Logits (tokens.count, vocab) for a sequence starting at position 0.
    public func logits(tokens: [Int]) throws -> Tensor {
        var cache = ReferenceKVCache(layers: layers.count)
        return try logits(tokens: tokens, cache: &cache)
    }

    /// Logits (tokens.count, vocab) for tokens that continue the sequence held in `cache`; the cache is extended.
    public func logits(tokens: [Int], cache: inout ReferenceKVCache) throws -> Tensor {
        let hiddenSize = config.hiddenSize
        var hidden: [Float] = []
        hidden.reserveCapacity(tokens.count * hiddenSize)
        for token in tokens {
            guard (0..<config.vocabSize).contains(token) else {
                throw SharpError.invalidTensor(name: "tokens", reason: "token id \(token) is outside 0..<\(config.vocabSize)")
            }
            hidden.append(contentsOf: embedding[(token * hiddenSize)..<((token + 1) * hiddenSize)])
        }
        let rows = tokens.count
        for (layerIndex, layer) in layers.enumerated() {
            let attentionInput = LinearAlgebra.rmsNorm(hidden, columns: hiddenSize, weight: layer.inputNorm, eps: config.rmsNormEps)
            let attended = attention(attentionInput, rows: rows, layer: layer, layerIndex: layerIndex, cache: &cache)
            for index in hidden.indices { hidden[index] += attended[index] }
            let mlpInput = LinearAlgebra.rmsNorm(hidden, columns: hiddenSize, weight: layer.postAttentionNorm, eps: config.rmsNormEps)
            let mlpOutput = mlp(mlpInput, rows: rows, layer: layer)
            for index in hidden.indices { hidden[index] += mlpOutput[index] }
        }
        cache.advance(by: rows)
        let normalized = LinearAlgebra.rmsNorm(hidden, columns: hiddenSize, weight: finalNorm, eps: config.rmsNormEps)
        let logits = LinearAlgebra.matmulTransposed(
            normalized, rows: rows, inner: hiddenSize, outputProjection, outputs: config.vocabSize)
        return Tensor(shape: [rows, config.vocabSize], values: logits)
    }

    private func mlp(_ x: [Float], rows: Int, layer: DecoderLayer) -> [Float] {
        let gate = layer.gate(x, rows: rows)
        let up = layer.up(x, rows: rows)
        var activated = gate
        for index in activated.indices { activated[index] = LinearAlgebra.silu(gate[index]) * up[index] }
        return layer.down(activated, rows: rows)
    }

    private func attention(_ x: [Float], rows: Int, layer: DecoderLayer, layerIndex: Int, cache: inout ReferenceKVCache) -> [Float] {
        let headDim = config.headDim
        let heads = config.numAttentionHeads
        let kvHeads = config.numKeyValueHeads
        let offset = cache.length
        var queries = layer.query(x, rows: rows)
        var keys = layer.key(x, rows: rows)
        applyRoPE(&queries, rows: rows, heads: heads, offset: offset)
        applyRoPE(&keys, rows: rows, heads: kvHeads, offset: offset)
        cache.keys[layerIndex].append(contentsOf: keys)
        cache.values[layerIndex].append(contentsOf: layer.value(x, rows: rows))
        let allKeys = cache.keys[layerIndex]
        let allValues = cache.values[layerIndex]
        let kvWidth = kvHeads * headDim
        let scale = 1 / Float(headDim).squareRoot()
        let headsPerKV = heads / kvHeads
        var output = [Float](repeating: 0, count: rows * heads * headDim)
        for row in 0..<rows {
            let visible = offset + row + 1
            for head in 0..<heads {
                let kvHead = head / headsPerKV
                let queryStart = (row * heads + head) * headDim
                var scores = [Float](repeating: 0, count: visible)
                for position in 0..<visible {
                    let keyStart = position * kvWidth + kvHead * headDim
                    var total: Float = 0
                    for d in 0..<headDim { total += queries[queryStart + d] * allKeys[keyStart + d] }
                    scores[position] = total * scale
                }
                LinearAlgebra.softmax(&scores)
                for position in 0..<visible {
                    let valueStart = position * kvWidth + kvHead * headDim
                    let weight = scores[position]
                    for d in 0..<headDim { output[queryStart + d] += weight * allValues[valueStart + d] }
                }
            }
        }
        return layer.output(output, rows: rows)
    }

    private func applyRoPE(_ x: inout [Float], rows: Int, heads: Int, offset: Int) {
        ReferenceModel.rotate(
            &x, rows: rows, heads: heads, headDim: config.headDim, offset: offset,
            inverseFrequencies: ropeInverseFrequencies, positionScale: ropePositionScale)
    }

    /// Non-traditional RoPE on rows of `heads * headDim` values: in each head, (x[i], x[i + d/2]) is rotated
    /// by `(offset + row) * positionScale * inverseFrequencies[i]`.
    static func rotate(
        _ x: inout [Float], rows: Int, heads: Int, headDim: Int, offset: Int, inverseFrequencies: [Float],
        positionScale: Float
    ) {
        let half = headDim / 2
        for row in 0..<rows {
            let position = Float(offset + row) * positionScale
            for head in 0..<heads {
                let start = (row * heads + head) * headDim
                for i in 0..<half {
                    let angle = position * inverseFrequencies[i]
                    let cosine = Foundation.cos(angle)
                    let sine = Foundation.sin(angle)
                    let x1 = x[start + i]
                    let x2 = x[start + half + i]
                    x[start + i] = x1 * cosine - x2 * sine
                    x[start + half + i] = x1 * sine + x2 * cosine
                }
            }
        }
    }

    /// Inverse frequencies `theta^(-2i/d)` and the position scale, with mlx-lm's `linear` and `llama3` scaling.
    static func ropeFrequencies(_ config: ModelConfig) throws -> ([Float], Float) {
        let dims = config.headDim
        let theta = Double(config.ropeTheta)
        let periods = (0..<(dims / 2)).map { pow(theta, Double(2 * $0) / Double(dims)) }
        guard let scaling = config.ropeScaling else { return (periods.map { Float(1 / $0) }, 1) }
        switch scaling.kind {
        case "default":
            return (periods.map { Float(1 / $0) }, 1)
        case "linear":
            guard let factor = scaling.factor, factor > 0 else { throw SharpError.invalidConfig("rope_scaling.factor missing") }
            return (periods.map { Float(1 / $0) }, 1 / factor)
        case "llama3":
            return (llama3Periods(periods, scaling).map { Float(1 / $0) }, 1)
        default:
            throw SharpError.unsupported("rope_scaling type \"\(scaling.kind)\" in the reference forward pass")
        }
    }

    /// mlx-lm's Llama3RoPE period adjustment.
    private static func llama3Periods(_ periods: [Double], _ scaling: RopeScaling) -> [Double] {
        let factor = Double(scaling.factor ?? 1)
        let lowFactor = Double(scaling.lowFreqFactor ?? 1)
        let highFactor = Double(scaling.highFreqFactor ?? 4)
        let oldContext = Double(scaling.originalMaxPositionEmbeddings ?? 8192)
        let lowWavelength = oldContext / lowFactor
        let highWavelength = oldContext / highFactor
        return periods.map { period in
            let wavelength = 2 * Double.pi * period
            let scaled = wavelength > lowWavelength ? period * factor : period
            guard wavelength > highWavelength && wavelength < lowWavelength else { return scaled }
            let smooth = (oldContext / wavelength - lowFactor) / (highFactor - lowFactor)
            return scaled / ((1 - smooth) / factor + smooth)
        }
    }
}

/// Fetches and shape-checks the weights of each layer, resolving shared MLPs through the plan.
private struct WeightLoader {
    let config: ModelConfig
    let source: (String) throws -> Tensor?

    func tensor(_ name: String) throws -> Tensor {
        guard let tensor = try source(name) else { throw SharpError.invalidTensor(name: name, reason: "missing") }
        return tensor
    }

    func matrix(_ name: String, rows: Int, columns: Int) throws -> [Float] {
        let tensor = try tensor(name)
        try expect(tensor, name: name, shape: [rows, columns])
        return tensor.values
    }

    func vector(_ name: String, count: Int) throws -> [Float] {
        let tensor = try tensor(name)
        try expect(tensor, name: name, shape: [count])
        return tensor.values
    }

    func optionalVector(_ name: String, count: Int) throws -> [Float]? {
        guard let tensor = try source(name) else { return nil }
        try expect(tensor, name: name, shape: [count])
        return tensor.values
    }

    func expect(_ tensor: Tensor, name: String, shape: [Int]) throws {
        guard tensor.shape == shape, tensor.values.count == shape.reduce(1, *) else {
            throw SharpError.invalidTensor(name: name, reason: "shape \(tensor.shape), expected \(shape)")
        }
    }

    func linear(_ module: String, inputs: Int, outputs: Int) throws -> DenseLinear {
        DenseLinear(
            weight: try matrix(module + ".weight", rows: outputs, columns: inputs),
            bias: try optionalVector(module + ".bias", count: outputs), inputs: inputs, outputs: outputs)
    }

    func layers(plan: SharpPlan) throws -> [DecoderLayer] {
        let ownMLPs = try (0..<config.numHiddenLayers).map { layer in
            plan.isTarget(layer) ? nil : try mlpLinears(layer: layer)
        }
        return try (0..<config.numHiddenLayers).map { layer in
            let prefix = "model.layers.\(layer)"
            let hidden = config.hiddenSize
            let queryWidth = config.numAttentionHeads * config.headDim
            let kvWidth = config.numKeyValueHeads * config.headDim
            let reference = plan.weightSource(for: layer)
            guard let shared = ownMLPs[reference] else {
                throw SharpError.invalidPlan("layer \(layer) has no MLP weights to use")
            }
            let projections = try RecoveryConfig.allMatrices.enumerated().map { position, matrix in
                plan.isTarget(layer)
                    ? try recovered(layer: layer, matrix: matrix, base: shared[position])
                    : MLPProjection(base: shared[position])
            }
            return DecoderLayer(
                inputNorm: try vector(prefix + ".input_layernorm.weight", count: hidden),
                postAttentionNorm: try vector(prefix + ".post_attention_layernorm.weight", count: hidden),
                query: try linear(prefix + ".self_attn.q_proj", inputs: hidden, outputs: queryWidth),
                key: try linear(prefix + ".self_attn.k_proj", inputs: hidden, outputs: kvWidth),
                value: try linear(prefix + ".self_attn.v_proj", inputs: hidden, outputs: kvWidth),
                output: try linear(prefix + ".self_attn.o_proj", inputs: queryWidth, outputs: hidden),
                gate: projections[0], up: projections[1], down: projections[2])
        }
    }

    /// gate, up, down of a layer that owns its MLP.
    private func mlpLinears(layer: Int) throws -> [DenseLinear] {
        let prefix = "model.layers.\(layer).mlp"
        let hidden = config.hiddenSize
        let intermediate = config.intermediateSize
        return [
            try linear(prefix + ".gate_proj", inputs: hidden, outputs: intermediate),
            try linear(prefix + ".up_proj", inputs: hidden, outputs: intermediate),
            try linear(prefix + ".down_proj", inputs: intermediate, outputs: hidden),
        ]
    }

    /// A target layer's projection: the reference weights plus this layer's recovery tensors.
    private func recovered(layer: Int, matrix: String, base: DenseLinear) throws -> MLPProjection {
        var projection = MLPProjection(base: base)
        guard let recovery = config.sharp?.recovery, recovery.matrices.contains(matrix) else { return projection }
        let prefix = "model.layers.\(layer).mlp.\(matrix)"
        if recovery.kind.usesVectors {
            projection.inScale = try vector(prefix + ".in_scale", count: base.inputs)
            projection.outScale = try vector(prefix + ".out_scale", count: base.outputs)
        }
        if recovery.kind.usesLoRA {
            let a = try tensor(prefix + ".lora_a")
            guard a.shape.count == 2, a.shape[0] == base.inputs, a.shape[1] > 0 else {
                throw SharpError.invalidTensor(name: prefix + ".lora_a", reason: "shape \(a.shape), expected (\(base.inputs), rank)")
            }
            let rank = a.shape[1]
            let b = try self.matrix(prefix + ".lora_b", rows: rank, columns: base.outputs)
            projection.lora = (a.values, b, rank)
            projection.loraScale = recovery.scale
        }
        return projection
    }
}
