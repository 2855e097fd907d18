import Foundation

/// A safetensors file with its data, for reading tensor values (the header is validated on open).
public struct SafetensorsFile: Sendable {
    public let header: SafetensorsHeader
    public let source: String
    private let bytes: Data

    /// Opens a file (memory-mapped when possible) and validates its header.
    public init(url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url, options: .mappedIfSafe)
        } catch {
            throw SharpError.io(path: url.path, reason: error.localizedDescription)
        }
        try self.init(data: data, source: url.lastPathComponent)
    }

    /// Wraps in-memory file bytes and validates the header.
    public init(data: Data, source: String = "<data>") throws {
        self.header = try SafetensorsHeader.parse(data, source: source)
        self.source = source
        self.bytes = data
    }

    /// The raw little-endian bytes of a tensor.
    public func rawBytes(of tensor: TensorInfo) -> Data {
        let start = bytes.startIndex + header.dataStart + tensor.dataRange.lowerBound
        return bytes[start..<(start + tensor.byteCount)]
    }

    /// A floating-point tensor (F32, F16, BF16 or F64) converted to `[Float]`, row-major.
    public func floats(named name: String) throws -> [Float] {
        guard let tensor = header.tensor(named: name) else {
            throw SharpError.invalidTensor(name: name, reason: "not found in \(source)")
        }
        return try floats(of: tensor)
    }

    public func floats(of tensor: TensorInfo) throws -> [Float] {
        try decodeFloats(rawBytes(of: tensor), dtype: tensor.dtype, name: tensor.name)
    }

    /// A U32 tensor (MLX packed quantized weights) as `[UInt32]`.
    public func uint32s(of tensor: TensorInfo) throws -> [UInt32] {
        guard tensor.dtype == .U32 else {
            throw SharpError.invalidTensor(name: tensor.name, reason: "expected U32, found \(tensor.dtype.rawValue)")
        }
        return rawBytes(of: tensor).withUnsafeBytes { raw in
            (0..<tensor.elementCount).map { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)) }
        }
    }
}

/// Converts little-endian F32/F16/BF16/F64 bytes to `[Float]`.
func decodeFloats(_ data: Data, dtype: SafetensorsDType, name: String) throws -> [Float] {
    let count = data.count / dtype.byteSize
    switch dtype {
    case .F32:
        return data.withUnsafeBytes { raw in
            (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    case .F16:
        return data.withUnsafeBytes { raw in
            (0..<count).map { floatFromHalfBits(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
        }
    case .BF16:
        return data.withUnsafeBytes { raw in
            (0..<count).map {
                Float(bitPattern: UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) << 16)
            }
        }
    case .F64:
        return data.withUnsafeBytes { raw in
            (0..<count).map { Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)))) }
        }
    default:
        throw SharpError.invalidTensor(name: name, reason: "dtype \(dtype.rawValue) is not a floating-point type this reader converts")
    }
}

/// IEEE 754 binary16 -> binary32, exact (handles subnormals, infinities and NaN).
public func floatFromHalfBits(_ bits: UInt16) -> Float {
    let sign = UInt32(bits >> 15) << 31
    let exponent = Int((bits >> 10) & 0x1f)
    let mantissa = UInt32(bits & 0x3ff)
    if exponent == 0x1f {
        return Float(bitPattern: sign | 0x7f80_0000 | (mantissa << 13))
    }
    if exponent == 0 {
        let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign == 0 ? magnitude : -magnitude
    }
    return Float(bitPattern: sign | (UInt32(exponent - 15 + 127) << 23) | (mantissa << 13))
}

/// IEEE 754 binary32 -> binary16 bits, round-to-nearest-even (used by tests and fixture writers).
public func halfBitsFromFloat(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    let sign = UInt16((bits >> 16) & 0x8000)
    let exponent = Int((bits >> 23) & 0xff)
    var mantissa = bits & 0x7f_ffff
    if exponent == 0xff {
        return sign | 0x7c00 | (mantissa != 0 ? 0x200 : 0)
    }
    var halfExponent = exponent - 127 + 15
    if halfExponent >= 0x1f { return sign | 0x7c00 }
    if halfExponent <= 0 {
        if halfExponent < -10 { return sign }
        mantissa |= 0x80_0000
        let shift = UInt32(14 - halfExponent)
        var halfMantissa = mantissa >> shift
        let remainder = mantissa & ((1 << shift) - 1)
        let halfway = UInt32(1) << (shift - 1)
        if remainder > halfway || (remainder == halfway && (halfMantissa & 1) == 1) { halfMantissa += 1 }
        return sign | UInt16(halfMantissa)
    }
    var halfMantissa = mantissa >> 13
    let remainder = mantissa & 0x1fff
    if remainder > 0x1000 || (remainder == 0x1000 && (halfMantissa & 1) == 1) {
        halfMantissa += 1
        if halfMantissa == 0x400 {
            halfMantissa = 0
            halfExponent += 1
            if halfExponent >= 0x1f { return sign | 0x7c00 }
        }
    }
    return sign | UInt16(halfExponent << 10) | UInt16(halfMantissa)
}

/// A tensor to be written by `SafetensorsWriter`.
public struct WritableTensor: Sendable {
    public var name: String
    public var dtype: SafetensorsDType
    public var shape: [Int]
    public var data: Data

    public init(name: String, dtype: SafetensorsDType, shape: [Int], data: Data) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    /// An F32 tensor from values (row-major).
    public static func float32(_ name: String, shape: [Int], values: [Float]) -> WritableTensor {
        var data = Data(capacity: values.count * 4)
        for value in values {
            withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) }
        }
        return WritableTensor(name: name, dtype: .F32, shape: shape, data: data)
    }

    /// An F16 tensor from values (row-major, rounded to nearest).
    public static func float16(_ name: String, shape: [Int], values: [Float]) -> WritableTensor {
        var data = Data(capacity: values.count * 2)
        for value in values {
            withUnsafeBytes(of: halfBitsFromFloat(value).littleEndian) { data.append(contentsOf: $0) }
        }
        return WritableTensor(name: name, dtype: .F16, shape: shape, data: data)
    }

    /// A U32 tensor (e.g. MLX packed quantized weights).
    public static func uint32(_ name: String, shape: [Int], values: [UInt32]) -> WritableTensor {
        var data = Data(capacity: values.count * 4)
        for value in values {
            withUnsafeBytes(of: value.littleEndian) { data.append(contentsOf: $0) }
        }
        return WritableTensor(name: name, dtype: .U32, shape: shape, data: data)
    }
}

/// Writes safetensors files (tensors laid out contiguously in the given order; header padded with spaces to 8 bytes).
public enum SafetensorsWriter {
    public static func serialize(_ tensors: [WritableTensor], metadata: [String: String] = [:]) throws -> Data {
        var header: [String: Any] = [:]
        var offset = 0
        for tensor in tensors {
            header[tensor.name] = ["dtype": tensor.dtype.rawValue, "shape": tensor.shape, "data_offsets": [offset, offset + tensor.data.count]]
            offset += tensor.data.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var file = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        for tensor in tensors { file.append(tensor.data) }
        return file
    }

    public static func write(_ tensors: [WritableTensor], metadata: [String: String] = [:], to url: URL) throws {
        try serialize(tensors, metadata: metadata).write(to: url)
    }
}
