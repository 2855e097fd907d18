import Foundation

/// A dense fp32 tensor, row-major.
public struct Tensor: Equatable, Sendable {
    public var shape: [Int]
    public var values: [Float]

    public init(shape: [Int], values: [Float]) {
        self.shape = shape
        self.values = values
    }

    public var elementCount: Int { values.count }
}

/// Where a tensor of a model directory lives.
public struct TensorLocation: Sendable {
    /// File name inside the model directory.
    public let file: String
    public let info: TensorInfo
}

/// The tensors of a model directory: every `model*.safetensors` file's validated header, indexed by name.
/// Only headers are read; use `TensorReader` for values.
public struct ModelTensorIndex: Sendable {
    public let directory: URL
    /// The safetensors file names, sorted.
    public let fileNames: [String]
    public let headers: [SafetensorsHeader]
    private let locationByName: [String: TensorLocation]

    public init(directory: URL) throws {
        let names = try ModelTensorIndex.weightFileNames(in: directory)
        guard !names.isEmpty else {
            throw SharpError.io(path: directory.path, reason: "no model*.safetensors files")
        }
        var headers: [SafetensorsHeader] = []
        var locations: [String: TensorLocation] = [:]
        for name in names {
            let header = try SafetensorsHeader.read(fileAt: directory.appendingPathComponent(name))
            for info in header.tensors {
                if let existing = locations[info.name] {
                    throw SharpError.invalidTensor(name: info.name, reason: "stored in both \(existing.file) and \(name)")
                }
                locations[info.name] = TensorLocation(file: name, info: info)
            }
            headers.append(header)
        }
        self.directory = directory
        self.fileNames = names
        self.headers = headers
        self.locationByName = locations
    }

    /// `model*.safetensors` files directly inside `directory`, sorted.
    public static func weightFileNames(in directory: URL) throws -> [String] {
        let contents: [String]
        do {
            contents = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        } catch {
            throw SharpError.io(path: directory.path, reason: error.localizedDescription)
        }
        return contents.filter { $0.hasPrefix("model") && $0.hasSuffix(".safetensors") }.sorted()
    }

    public func location(of name: String) -> TensorLocation? { locationByName[name] }
    public func contains(_ name: String) -> Bool { locationByName[name] != nil }
    /// All tensor names, sorted.
    public var tensorNames: [String] { locationByName.keys.sorted() }
    public var allTensors: [TensorLocation] { tensorNames.compactMap { locationByName[$0] } }
    /// Sum of all tensors' byte counts over all files.
    public var tensorByteCount: Int { headers.reduce(0) { $0 + $1.tensorByteCount } }
}

/// Reads tensor values of a model directory as fp32, dequantizing MLX affine-quantized weights.
public final class TensorReader {
    public let index: ModelTensorIndex
    public let quantization: QuantizationConfig?
    private var openFiles: [String: SafetensorsFile] = [:]

    public init(index: ModelTensorIndex, quantization: QuantizationConfig?) {
        self.index = index
        self.quantization = quantization
    }

    /// The fp32 value of a tensor. A U32 `X.weight` with `X.scales` and `X.biases` is dequantized.
    public func tensor(_ name: String) throws -> Tensor {
        guard let location = index.location(of: name) else {
            throw SharpError.invalidTensor(name: name, reason: "not found in \(index.directory.lastPathComponent)")
        }
        if location.info.dtype == .U32, name.hasSuffix(".weight") {
            return try dequantized(weightName: name, packed: location)
        }
        let file = try openFile(location.file)
        return Tensor(shape: location.info.shape, values: try file.floats(of: location.info))
    }

    /// The tensor if present, else nil (errors in a present tensor are still thrown).
    public func optionalTensor(_ name: String) throws -> Tensor? {
        index.contains(name) ? try tensor(name) : nil
    }

    private func openFile(_ fileName: String) throws -> SafetensorsFile {
        if let file = openFiles[fileName] { return file }
        let file = try SafetensorsFile(url: index.directory.appendingPathComponent(fileName))
        openFiles[fileName] = file
        return file
    }

    private func dequantized(weightName: String, packed: TensorLocation) throws -> Tensor {
        let module = String(weightName.dropLast(".weight".count))
        guard let scalesLocation = index.location(of: module + ".scales"),
            let biasesLocation = index.location(of: module + ".biases")
        else {
            throw SharpError.invalidTensor(name: weightName, reason: "U32 weight without \(module).scales / .biases")
        }
        let scales = try openFile(scalesLocation.file).floats(of: scalesLocation.info)
        let biases = try openFile(biasesLocation.file).floats(of: biasesLocation.info)
        let words = try openFile(packed.file).uint32s(of: packed.info)
        let settings = quantization?.settings(forModule: module)
        if let mode = settings?.mode, mode != "affine" {
            throw SharpError.unsupported("quantization mode \"\(mode)\" of \(module) (only affine is supported)")
        }
        let layout = try AffineQuantizationLayout(
            weightShape: packed.info.shape, scalesShape: scalesLocation.info.shape,
            biasesShape: biasesLocation.info.shape, preferredGroupSize: settings?.groupSize, name: weightName)
        let values = layout.dequantize(words: words, scales: scales, biases: biases)
        return Tensor(shape: [layout.rows, layout.inputCount], values: values)
    }
}

/// The geometry of an MLX affine-quantized matrix: `rows x inputCount` values of `bits` bits packed as a
/// little-endian bit stream per row into `packedColumns` u32 words (first value in the lowest bits), and one
/// scale and bias per `groupSize` consecutive inputs. Value = scale * q + bias.
public struct AffineQuantizationLayout: Equatable, Sendable {
    public static let supportedBits = [2, 3, 4, 5, 6, 8]
    public static let candidateGroupSizes = [64, 32, 128]

    public let rows: Int
    public let packedColumns: Int
    public let groups: Int
    public let groupSize: Int
    public let bits: Int
    public var inputCount: Int { groups * groupSize }

    /// Infers bits (and, if needed, the group size) from the shapes; the preferred group size is tried first.
    public init(weightShape: [Int], scalesShape: [Int], biasesShape: [Int], preferredGroupSize: Int?, name: String) throws {
        guard weightShape.count == 2, scalesShape.count == 2, scalesShape == biasesShape,
            weightShape[0] == scalesShape[0], weightShape[1] > 0, scalesShape[1] > 0
        else {
            throw SharpError.invalidTensor(
                name: name, reason: "quantized shapes do not match (weight \(weightShape), scales \(scalesShape), biases \(biasesShape))")
        }
        var candidates = AffineQuantizationLayout.candidateGroupSizes
        if let preferredGroupSize, preferredGroupSize > 0 {
            candidates.removeAll { $0 == preferredGroupSize }
            candidates.insert(preferredGroupSize, at: 0)
        }
        let (packedBits, packedOverflow) = weightShape[1].multipliedReportingOverflow(by: 32)
        let (_, valuesOverflow) = weightShape[0].multipliedReportingOverflow(by: packedBits)
        guard !packedOverflow, !valuesOverflow else {
            throw SharpError.invalidTensor(name: name, reason: "quantized weight shape \(weightShape) is too large")
        }
        for groupSize in candidates {
            let (inputs, overflow) = scalesShape[1].multipliedReportingOverflow(by: groupSize)
            guard !overflow, inputs > 0, packedBits % inputs == 0 else { continue }
            let bits = packedBits / inputs
            guard AffineQuantizationLayout.supportedBits.contains(bits) else { continue }
            self.rows = weightShape[0]
            self.packedColumns = weightShape[1]
            self.groups = scalesShape[1]
            self.groupSize = groupSize
            self.bits = bits
            return
        }
        throw SharpError.invalidTensor(
            name: name, reason: "cannot infer bits from weight \(weightShape) and scales \(scalesShape)")
    }

    /// Unpacks and dequantizes to a row-major `rows x inputCount` array.
    public func dequantize(words: [UInt32], scales: [Float], biases: [Float]) -> [Float] {
        let columns = inputCount
        var output = [Float](repeating: 0, count: rows * columns)
        let mask = UInt64((1 << bits) - 1)
        output.withUnsafeMutableBufferPointer { out in
            for row in 0..<rows {
                let wordBase = row * packedColumns
                for column in 0..<columns {
                    let bitOffset = column * bits
                    let wordIndex = wordBase + bitOffset / 32
                    let shift = UInt64(bitOffset % 32)
                    var window = UInt64(words[wordIndex])
                    if wordIndex + 1 < wordBase + packedColumns { window |= UInt64(words[wordIndex + 1]) << 32 }
                    let quantized = Float((window >> shift) & mask)
                    let group = row * groups + column / groupSize
                    out[row * columns + column] = scales[group] * quantized + biases[group]
                }
            }
        }
        return output
    }

    /// Quantizes a row-major matrix the way MLX does (per group: scale = (max-min)/(2^bits-1), bias = min),
    /// packing values as `dequantize` expects. Used to build test fixtures.
    public static func quantize(_ values: [Float], rows: Int, columns: Int, groupSize: Int, bits: Int)
        -> (words: [UInt32], scales: [Float], biases: [Float])
    {
        let groups = columns / groupSize
        let packedColumns = columns * bits / 32
        var words = [UInt32](repeating: 0, count: rows * packedColumns)
        var scales = [Float](repeating: 0, count: rows * groups)
        var biases = [Float](repeating: 0, count: rows * groups)
        let levels = Float((1 << bits) - 1)
        for row in 0..<rows {
            for group in 0..<groups {
                let start = row * columns + group * groupSize
                let slice = values[start..<(start + groupSize)]
                let low = slice.min() ?? 0
                let high = slice.max() ?? 0
                let scale = high > low ? (high - low) / levels : 1
                scales[row * groups + group] = scale
                biases[row * groups + group] = low
                for (offset, value) in slice.enumerated() {
                    let quantized = UInt64(min(levels, max(0, ((value - low) / scale).rounded())))
                    let bitOffset = (group * groupSize + offset) * bits
                    let wordIndex = row * packedColumns + bitOffset / 32
                    let shift = UInt64(bitOffset % 32)
                    let shifted = quantized << shift
                    words[wordIndex] |= UInt32(truncatingIfNeeded: shifted)
                    if shifted >> 32 != 0 { words[wordIndex + 1] |= UInt32(truncatingIfNeeded: shifted >> 32) }
                }
            }
        }
        return (words, scales, biases)
    }
}
