import Foundation

/// What a tensor is for, judged from its mlx-lm name.
public enum TensorCategory: String, Codable, CaseIterable, Sendable {
    /// `embed_tokens`, `lm_head`.
    case embedding
    /// Anything under `self_attn`.
    case attention
    /// The stored MLP matrices: `mlp.{gate,up,down}_proj.{weight,scales,biases,bias}`.
    case mlpStored = "mlp_stored"
    /// Anything else under `.mlp.` (`lora_a`, `lora_b`, `in_scale`, `out_scale`, ...).
    case recovery
    /// RMS norm weights.
    case norm
    case other

    public static func of(_ name: String) -> TensorCategory {
        if name.contains("embed_tokens") || name.hasPrefix("lm_head") || name.contains(".lm_head") { return .embedding }
        if name.contains(".self_attn.") { return .attention }
        if let range = name.range(of: ".mlp.") {
            let rest = name[range.upperBound...]
            let parts = rest.split(separator: ".")
            if parts.count == 2, RecoveryConfig.allMatrices.contains(String(parts[0])),
                ["weight", "scales", "biases", "bias"].contains(String(parts[1]))
            {
                return .mlpStored
            }
            return .recovery
        }
        if name.hasSuffix("norm.weight") || name.hasSuffix("norm.bias") { return .norm }
        return .other
    }
}

/// Bytes, parameters and tensor count of one category.
public struct CategoryUsage: Codable, Equatable, Sendable {
    public var bytes: Int = 0
    public var parameters: Int = 0
    public var tensors: Int = 0
}

/// MLP parameters of the model against those of the unshared model it came from (net of recovery).
public struct MLPAccounting: Codable, Equatable, Sendable {
    /// MLP parameters the model would have with every layer owning its MLP.
    public var originalParameters: Int
    /// MLP parameters actually stored (each shared matrix once).
    public var storedParameters: Int
    public var recoveryParameters: Int
    /// `100 * (original - stored - recovery) / original`.
    public var netSavingPercent: Double

    enum CodingKeys: String, CodingKey {
        case originalParameters = "mlp_params_original"
        case storedParameters = "mlp_params_stored"
        case recoveryParameters = "recovery_params"
        case netSavingPercent = "net_mlp_saving_percent"
    }
}

/// Storage accounting of one model directory, plus structural checks of its SHARP plan.
public struct StorageReport: Codable, Equatable, Sendable {
    public var directory: String
    public var modelType: String
    public var numLayers: Int
    public var plan: [String: Int]
    public var recoveryKind: String?
    public var quantization: QuantizationConfig?
    /// Keyed by `TensorCategory.rawValue`.
    public var categories: [String: CategoryUsage]
    public var tensorCount: Int
    /// Sum of tensor bytes from the safetensors headers.
    public var tensorBytes: Int
    /// mlx-lm style count: packed U32 weights count `elements * 32 / bits`, quantization scales/biases count 0.
    public var totalParameters: Int
    /// Size of the `model*.safetensors` files on disk (tensor bytes + headers).
    public var weightFileBytes: Int
    /// Size of every file in the directory (weights, config, tokenizer, ...).
    public var directoryBytes: Int
    public var mlp: MLPAccounting
    /// Structural problems (a target storing its own MLP weight, missing recovery tensors, ...). Empty when sound.
    public var problems: [String]

    public func usage(_ category: TensorCategory) -> CategoryUsage { categories[category.rawValue] ?? CategoryUsage() }

    /// Builds the report for a model directory (reads config.json and the safetensors headers only).
    public static func make(directory: URL) throws -> StorageReport {
        let config = try ModelConfig.load(directory: directory)
        let index = try ModelTensorIndex(directory: directory)
        return try make(directory: directory, config: config, index: index)
    }

    public static func make(directory: URL, config: ModelConfig, index: ModelTensorIndex) throws -> StorageReport {
        let plan = try config.resolvedPlan()
        let counter = ParameterCounter(index: index, quantization: config.quantization)
        var categories: [String: CategoryUsage] = [:]
        var totalParameters = 0
        for location in index.allTensors {
            let parameters = counter.parameters(of: location.info)
            totalParameters += parameters
            let key = TensorCategory.of(location.info.name).rawValue
            var usage = categories[key] ?? CategoryUsage()
            usage.bytes += location.info.byteCount
            usage.parameters += parameters
            usage.tensors += 1
            categories[key] = usage
        }
        var weightFileBytes = 0
        for name in index.fileNames {
            weightFileBytes += try fileByteCount(directory.appendingPathComponent(name))
        }
        let mlp = mlpAccounting(config: config, plan: plan, index: index, counter: counter, categories: categories)
        return StorageReport(
            directory: directory.path, modelType: config.modelType, numLayers: config.numHiddenLayers,
            plan: plan.rawPlan, recoveryKind: config.sharp?.recovery.kind.rawValue, quantization: config.quantization,
            categories: categories, tensorCount: index.tensorNames.count, tensorBytes: index.tensorByteCount,
            totalParameters: totalParameters, weightFileBytes: weightFileBytes,
            directoryBytes: try directoryByteCount(directory), mlp: mlp,
            problems: structuralProblems(config: config, plan: plan, index: index))
    }

    private static func mlpAccounting(
        config: ModelConfig, plan: SharpPlan, index: ModelTensorIndex, counter: ParameterCounter,
        categories: [String: CategoryUsage]
    ) -> MLPAccounting {
        var original = 0
        for layer in 0..<config.numHiddenLayers {
            for matrix in RecoveryConfig.allMatrices {
                let own = counter.moduleParameters("model.layers.\(layer).mlp.\(matrix)")
                original += own > 0 ? own : counter.moduleParameters("model.layers.\(plan.weightSource(for: layer)).mlp.\(matrix)")
            }
        }
        let stored = categories[TensorCategory.mlpStored.rawValue]?.parameters ?? 0
        let recovery = categories[TensorCategory.recovery.rawValue]?.parameters ?? 0
        let saving = original > 0 ? 100 * Double(original - stored - recovery) / Double(original) : 0
        return MLPAccounting(
            originalParameters: original, storedParameters: stored, recoveryParameters: recovery, netSavingPercent: saving)
    }

    /// Checks shared weights are stored once, references own their weights and targets carry their recovery.
    static func structuralProblems(config: ModelConfig, plan: SharpPlan, index: ModelTensorIndex) -> [String] {
        var problems: [String] = []
        let recovery = config.sharp?.recovery
        for (target, reference) in plan.referenceByTarget.sorted(by: { $0.key < $1.key }) {
            for matrix in RecoveryConfig.allMatrices {
                let targetWeight = "model.layers.\(target).mlp.\(matrix).weight"
                if index.contains(targetWeight) {
                    problems.append("\(targetWeight) is stored although layer \(target) shares layer \(reference)'s MLP")
                }
                let referenceWeight = "model.layers.\(reference).mlp.\(matrix).weight"
                if !index.contains(referenceWeight) {
                    problems.append("\(referenceWeight) is missing (reference of layer \(target))")
                }
            }
            guard let recovery else { continue }
            for matrix in recovery.matrices {
                for suffix in recovery.kind.tensorSuffixes {
                    let name = "model.layers.\(target).mlp.\(matrix).\(suffix)"
                    if !index.contains(name) { problems.append("\(name) is missing (recovery of layer \(target))") }
                }
                problems += loraRankProblems(target: target, matrix: matrix, recovery: recovery, index: index)
            }
        }
        for name in index.tensorNames where TensorCategory.of(name) == .recovery {
            if let layer = layerIndex(of: name), !plan.isTarget(layer) {
                problems.append("\(name) is a recovery tensor on layer \(layer), which is not a target")
            }
        }
        return problems
    }

    private static func loraRankProblems(target: Int, matrix: String, recovery: RecoveryConfig, index: ModelTensorIndex) -> [String] {
        guard recovery.kind.usesLoRA else { return [] }
        var problems: [String] = []
        let prefix = "model.layers.\(target).mlp.\(matrix)"
        if let a = index.location(of: prefix + ".lora_a")?.info, a.shape.count != 2 || a.shape[1] != recovery.rank {
            problems.append("\(prefix).lora_a has shape \(a.shape), expected (in, \(recovery.rank))")
        }
        if let b = index.location(of: prefix + ".lora_b")?.info, b.shape.count != 2 || b.shape[0] != recovery.rank {
            problems.append("\(prefix).lora_b has shape \(b.shape), expected (\(recovery.rank), out)")
        }
        return problems
    }
}

/// The layer index in a name like `model.layers.12.mlp...`.
func layerIndex(of name: String) -> Int? {
    guard let range = name.range(of: "layers.") else { return nil }
    return Int(name[range.upperBound...].prefix { $0.isNumber })
}

/// Counts parameters the way mlx-lm does for quantized modules.
struct ParameterCounter {
    let index: ModelTensorIndex
    let quantization: QuantizationConfig?

    func parameters(of info: TensorInfo) -> Int {
        if info.name.hasSuffix(".scales") || info.name.hasSuffix(".biases") {
            let module = String(info.name.prefix(upTo: info.name.lastIndex(of: ".") ?? info.name.endIndex))
            if index.location(of: module + ".weight")?.info.dtype == .U32 { return 0 }
        }
        if info.dtype == .U32, info.name.hasSuffix(".weight"), let bits = quantizedBits(weight: info) {
            return info.elementCount * 32 / bits
        }
        return info.elementCount
    }

    /// Parameters of a module (`X.weight` and `X.bias`); 0 when it is not stored.
    func moduleParameters(_ module: String) -> Int {
        var total = 0
        for suffix in [".weight", ".bias"] {
            if let info = index.location(of: module + suffix)?.info { total += parameters(of: info) }
        }
        return total
    }

    private func quantizedBits(weight: TensorInfo) -> Int? {
        let module = String(weight.name.dropLast(".weight".count))
        guard let scales = index.location(of: module + ".scales")?.info,
            let biases = index.location(of: module + ".biases")?.info
        else { return nil }
        let layout = try? AffineQuantizationLayout(
            weightShape: weight.shape, scalesShape: scales.shape, biasesShape: biases.shape,
            preferredGroupSize: quantization?.settings(forModule: module).groupSize, name: weight.name)
        return layout?.bits
    }
}

/// Sum of the sizes of all regular files under a directory.
public func directoryByteCount(_ directory: URL) throws -> Int {
    var total = 0
    for relativePath in try regularFiles(under: directory) {
        total += try fileByteCount(directory.appendingPathComponent(relativePath))
    }
    return total
}

/// Relative paths ("a/b.txt") of every regular file under a directory, sorted. Symbolic links are not followed.
public func regularFiles(under directory: URL) throws -> [String] {
    let manager = FileManager.default
    let entries: [String]
    do {
        entries = try manager.subpathsOfDirectory(atPath: directory.path)
    } catch {
        throw SharpError.io(path: directory.path, reason: error.localizedDescription)
    }
    var files: [String] = []
    for entry in entries {
        let path = directory.appendingPathComponent(entry).path
        guard let attributes = try? manager.attributesOfItem(atPath: path),
            let type = attributes[.type] as? FileAttributeType, type == .typeRegular
        else { continue }
        files.append(entry)
    }
    return files.sorted()
}

/// SHARP against original storage.
public struct StorageComparison: Codable, Equatable, Sendable {
    public var sharpTensorBytes: Int
    public var originalTensorBytes: Int
    public var sharpParameters: Int
    public var originalParameters: Int
    /// sharp / original tensor bytes.
    public var tensorBytesRatio: Double
    /// sharp / original `model*.safetensors` bytes on disk.
    public var weightFileBytesRatio: Double
    /// sharp / original parameters.
    public var parametersRatio: Double

    public init(sharp: StorageReport, original: StorageReport) {
        func ratio(_ a: Int, _ b: Int) -> Double { b > 0 ? Double(a) / Double(b) : 0 }
        sharpTensorBytes = sharp.tensorBytes
        originalTensorBytes = original.tensorBytes
        sharpParameters = sharp.totalParameters
        originalParameters = original.totalParameters
        tensorBytesRatio = ratio(sharp.tensorBytes, original.tensorBytes)
        weightFileBytesRatio = ratio(sharp.weightFileBytes, original.weightFileBytes)
        parametersRatio = ratio(sharp.totalParameters, original.totalParameters)
    }
}
