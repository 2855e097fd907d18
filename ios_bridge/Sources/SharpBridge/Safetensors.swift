import Foundation

/// Element types a safetensors header may name.
public enum SafetensorsDType: String, CaseIterable, Codable, Sendable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .F64, .I64, .U64: return 8
        case .F32, .I32, .U32: return 4
        case .F16, .BF16, .I16, .U16: return 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: return 1
        }
    }
}

/// One tensor entry of a safetensors header, validated.
public struct TensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section (after the header).
    public let dataRange: Range<Int>

    /// Number of elements (product of the shape; 1 for a scalar).
    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataRange.count }
}

/// A parsed, fully validated safetensors header.
///
/// Layout: 8-byte little-endian header length N, N bytes of JSON
/// (`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`), then the data.
/// Parsing never traps on malformed input; every problem is thrown as `SharpError.invalidSafetensors`.
public struct SafetensorsHeader: Sendable {
    /// Upper bound on N, as in the reference (Rust) implementation.
    public static let maxHeaderByteCount = 100 * 1024 * 1024

    /// N, the JSON header's length in bytes.
    public let headerByteCount: Int
    /// Size of the data section (file size - 8 - N).
    public let dataByteCount: Int
    /// Tensors ordered by their offset in the data section.
    public let tensors: [TensorInfo]
    public let metadata: [String: String]
    private let indexByName: [String: Int]

    /// Offset of the data section from the start of the file.
    public var dataStart: Int { 8 + headerByteCount }
    /// Sum of all tensors' byte counts.
    public var tensorByteCount: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    public func tensor(named name: String) -> TensorInfo? {
        indexByName[name].map { tensors[$0] }
    }

    /// Parses a whole safetensors file held in memory.
    /// - Parameter allowGaps: accept unused bytes between or after tensors (the reference implementation rejects them).
    public static func parse(_ file: Data, source: String = "<data>", allowGaps: Bool = false) throws -> SafetensorsHeader {
        let headerLength = try readHeaderLength(file.prefix(8), fileSize: file.count, source: source)
        let start = file.startIndex + 8
        let json = file[start..<(start + headerLength)]
        return try parse(headerJSON: json, fileSize: file.count, source: source, allowGaps: allowGaps)
    }

    /// Reads and validates only the header of a file on disk (the tensor data is not read).
    public static func read(fileAt url: URL, allowGaps: Bool = false) throws -> SafetensorsHeader {
        let source = url.lastPathComponent
        let fileSize = try fileByteCount(url)
        let handle: FileHandle
        do {
            handle = try FileHandle(forReadingFrom: url)
        } catch {
            throw SharpError.io(path: url.path, reason: error.localizedDescription)
        }
        defer { try? handle.close() }
        do {
            let prefix = try handle.read(upToCount: 8) ?? Data()
            let headerLength = try readHeaderLength(prefix, fileSize: fileSize, source: source)
            let json = try handle.read(upToCount: headerLength) ?? Data()
            guard json.count == headerLength else {
                throw SharpError.invalidSafetensors(file: source, reason: "file ends inside the header")
            }
            return try parse(headerJSON: json, fileSize: fileSize, source: source, allowGaps: allowGaps)
        } catch let error as SharpError {
            throw error
        } catch {
            throw SharpError.io(path: url.path, reason: error.localizedDescription)
        }
    }

    /// Validates the 8-byte length prefix against the file size and the sanity bound; returns N.
    static func readHeaderLength<Bytes: Collection>(_ prefix: Bytes, fileSize: Int, source: String) throws -> Int
    where Bytes.Element == UInt8 {
        guard prefix.count == 8 else {
            throw SharpError.invalidSafetensors(file: source, reason: "file is shorter than the 8-byte header length")
        }
        var length: UInt64 = 0
        for (index, byte) in prefix.enumerated() {
            length |= UInt64(byte) << UInt64(8 * index)
        }
        guard length > 0 else {
            throw SharpError.invalidSafetensors(file: source, reason: "header length is 0")
        }
        guard length <= UInt64(maxHeaderByteCount) else {
            throw SharpError.invalidSafetensors(
                file: source, reason: "header length \(length) exceeds the limit of \(maxHeaderByteCount) bytes")
        }
        let headerLength = Int(length)
        guard headerLength <= fileSize - 8 else {
            throw SharpError.invalidSafetensors(
                file: source, reason: "header length \(headerLength) runs past the end of the file (\(fileSize) bytes)")
        }
        return headerLength
    }

    /// Parses and validates the JSON header; `fileSize` bounds the data section.
    static func parse(headerJSON: Data, fileSize: Int, source: String, allowGaps: Bool) throws -> SafetensorsHeader {
        let raw: RawHeader
        do {
            raw = try JSONDecoder().decode(RawHeader.self, from: headerJSON)
        } catch {
            throw SharpError.invalidSafetensors(file: source, reason: "header JSON: \(describeDecodingError(error))")
        }
        let dataByteCount = fileSize - 8 - headerJSON.count
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(raw.entries.count)
        for (name, entry) in raw.entries {
            tensors.append(try validate(entry, name: name, dataByteCount: dataByteCount, source: source))
        }
        tensors.sort { ($0.dataRange.lowerBound, $0.dataRange.upperBound, $0.name) < ($1.dataRange.lowerBound, $1.dataRange.upperBound, $1.name) }
        try checkLayout(tensors, dataByteCount: dataByteCount, source: source, allowGaps: allowGaps)
        var indexByName: [String: Int] = [:]
        for (index, tensor) in tensors.enumerated() {
            guard indexByName.updateValue(index, forKey: tensor.name) == nil else {
                throw SharpError.invalidSafetensors(file: source, reason: "tensor \(tensor.name) is listed twice")
            }
        }
        return SafetensorsHeader(
            headerByteCount: headerJSON.count, dataByteCount: dataByteCount, tensors: tensors,
            metadata: raw.metadata, indexByName: indexByName)
    }

    private static func validate(_ entry: RawTensorEntry, name: String, dataByteCount: Int, source: String) throws
        -> TensorInfo
    {
        func fail(_ reason: String) -> SharpError {
            SharpError.invalidSafetensors(file: source, reason: "tensor \(name): \(reason)")
        }
        guard let dtype = SafetensorsDType(rawValue: entry.dtype) else { throw fail("unknown dtype \"\(entry.dtype)\"") }
        var elementCount = 1
        for dimension in entry.shape {
            guard dimension >= 0 else { throw fail("negative dimension in shape \(entry.shape)") }
            let (product, overflow) = elementCount.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw fail("shape \(entry.shape) overflows") }
            elementCount = product
        }
        let (byteCount, overflow) = elementCount.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else { throw fail("byte size of shape \(entry.shape) overflows") }
        guard entry.dataOffsets.count == 2 else { throw fail("data_offsets must have 2 entries, has \(entry.dataOffsets.count)") }
        let begin = entry.dataOffsets[0]
        let end = entry.dataOffsets[1]
        guard begin >= 0, begin <= end else { throw fail("data_offsets [\(begin), \(end)] are not an ordered pair") }
        guard end <= dataByteCount else {
            throw fail("data_offsets end \(end) is past the data section (\(dataByteCount) bytes)")
        }
        guard end - begin == byteCount else {
            throw fail("data_offsets span \(end - begin) bytes but \(dtype.rawValue)\(entry.shape) needs \(byteCount)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: entry.shape, dataRange: begin..<end)
    }

    /// Tensors (sorted by offset) must not overlap; without `allowGaps` they must also tile the data section exactly.
    private static func checkLayout(_ tensors: [TensorInfo], dataByteCount: Int, source: String, allowGaps: Bool) throws {
        var position = 0
        var previousName = "<start of data>"
        for tensor in tensors {
            let begin = tensor.dataRange.lowerBound
            if begin < position {
                throw SharpError.invalidSafetensors(
                    file: source, reason: "tensor \(tensor.name) overlaps \(previousName)")
            }
            if begin > position && !allowGaps {
                throw SharpError.invalidSafetensors(
                    file: source, reason: "gap of \(begin - position) bytes before tensor \(tensor.name)")
            }
            position = tensor.dataRange.upperBound
            previousName = tensor.name
        }
        if position != dataByteCount && !allowGaps {
            throw SharpError.invalidSafetensors(
                file: source, reason: "\(dataByteCount - position) bytes after the last tensor are not described by the header")
        }
    }
}

/// Size of a file in bytes.
func fileByteCount(_ url: URL) throws -> Int {
    do {
        let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
        if let size = attributes[.size] as? NSNumber { return size.intValue }
        if let size = attributes[.size] as? Int { return size }
        if let size = attributes[.size] as? UInt64, let converted = Int(exactly: size) { return converted }
        throw SharpError.io(path: url.path, reason: "file size unavailable")
    } catch let error as SharpError {
        throw error
    } catch {
        throw SharpError.io(path: url.path, reason: error.localizedDescription)
    }
}

/// A coding key for JSON objects with arbitrary keys.
struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
}

/// The header JSON before validation.
private struct RawHeader: Decodable {
    var entries: [(String, RawTensorEntry)] = []
    var metadata: [String: String] = [:]

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: AnyCodingKey.self)
        for key in container.allKeys {
            if key.stringValue == "__metadata__" {
                // MLX writes `"__metadata__": null` when there is no metadata; the reference reader accepts it.
                metadata = try container.decodeIfPresent([String: String].self, forKey: key) ?? [:]
            } else {
                entries.append((key.stringValue, try container.decode(RawTensorEntry.self, forKey: key)))
            }
        }
    }
}

private struct RawTensorEntry: Decodable {
    var dtype: String
    var shape: [Int]
    var dataOffsets: [Int]

    enum CodingKeys: String, CodingKey {
        case dtype
        case shape
        case dataOffsets = "data_offsets"
    }
}
