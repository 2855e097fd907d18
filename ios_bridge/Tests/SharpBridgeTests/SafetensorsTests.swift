import Foundation
import XCTest

@testable import SharpBridge

final class SafetensorsTests: XCTestCase {
    /// A small valid file with several dtypes, a scalar and a zero-size tensor.
    func makeValidFile() throws -> Data {
        try SafetensorsWriter.serialize(
            [
                .float32("a.weight", shape: [2, 3], values: [1, 2, 3, 4, 5, -6.5]),
                .float16("b.half", shape: [4], values: [0.5, -2, 65504, 0.0001]),
                WritableTensor(name: "c.bf16", dtype: .BF16, shape: [2], data: Data([0x80, 0x3f, 0x00, 0xc0])),
                .uint32("d.packed", shape: [1, 2], values: [0x7654_3210, 0xffff_ffff]),
                .float32("e.scalar", shape: [], values: [3.25]),
                .float32("f.empty", shape: [0, 4], values: []),
            ], metadata: ["format": "mlx"])
    }

    func testParsesValidFileAndReadsValues() throws {
        let file = try SafetensorsFile(data: makeValidFile())
        let header = file.header
        XCTAssertEqual(header.tensors.count, 6)
        XCTAssertEqual(header.metadata, ["format": "mlx"])
        XCTAssertEqual(header.headerByteCount % 8, 0)
        XCTAssertEqual(header.tensorByteCount, 24 + 8 + 4 + 8 + 4)
        XCTAssertEqual(header.tensor(named: "a.weight")?.shape, [2, 3])
        XCTAssertEqual(try file.floats(named: "a.weight"), [1, 2, 3, 4, 5, -6.5])
        XCTAssertEqual(try file.floats(named: "b.half")[0...2], [0.5, -2, 65504])
        XCTAssertEqual(try file.floats(named: "b.half")[3], 0.0001, accuracy: 1e-7)
        XCTAssertEqual(try file.floats(named: "c.bf16"), [1, -2])
        XCTAssertEqual(try file.floats(named: "e.scalar"), [3.25])
        XCTAssertEqual(try file.floats(named: "f.empty"), [])
        let packed = try XCTUnwrap(header.tensor(named: "d.packed"))
        XCTAssertEqual(try file.uint32s(of: packed), [0x7654_3210, 0xffff_ffff])
        XCTAssertThrowsError(try file.floats(named: "d.packed"))
        XCTAssertThrowsError(try file.floats(named: "missing"))
    }

    func testReadsHeaderFromDiskWithoutData() throws {
        let url = try makeTemporaryDirectory(self).appendingPathComponent("model.safetensors")
        try makeValidFile().write(to: url)
        let header = try SafetensorsHeader.read(fileAt: url)
        XCTAssertEqual(header.tensors.map(\.name).sorted(), ["a.weight", "b.half", "c.bf16", "d.packed", "e.scalar", "f.empty"])
    }

    func testHalfPrecisionConversionRoundTrips() {
        for bits in stride(from: 0, through: 0xffff, by: 1) where (bits & 0x7c00) != 0x7c00 {
            let value = floatFromHalfBits(UInt16(bits))
            XCTAssertEqual(halfBitsFromFloat(value), UInt16(bits), "bits \(bits)")
        }
        XCTAssertEqual(floatFromHalfBits(0x7c00), .infinity)
        XCTAssertTrue(floatFromHalfBits(0x7e00).isNaN)
        XCTAssertEqual(floatFromHalfBits(0x0001), 5.960464477539063e-08)
    }

    /// Builds a file from a raw JSON header and a data section.
    func file(header json: String, dataBytes: Int) -> Data {
        var data = Data()
        withUnsafeBytes(of: UInt64(json.utf8.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(Data(json.utf8))
        data.append(Data(repeating: 0, count: dataBytes))
        return data
    }

    func assertRejected(_ json: String, dataBytes: Int, mentioning fragment: String, line: UInt = #line) {
        XCTAssertThrowsError(try SafetensorsHeader.parse(file(header: json, dataBytes: dataBytes)), line: line) { error in
            XCTAssertTrue("\(error)".contains(fragment), "\(error) does not mention \(fragment)", line: line)
        }
    }

    func testRejectsMalformedHeaders() {
        assertRejected(#"{"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}"#, dataBytes: 4, mentioning: "unknown dtype")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, dataBytes: 4, mentioning: "negative")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#, dataBytes: 4, mentioning: "needs 8")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}"#, dataBytes: 4, mentioning: "past the data section")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}"#, dataBytes: 4, mentioning: "ordered pair")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}"#, dataBytes: 4, mentioning: "2 entries")
        assertRejected(
            #"{"x": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 4]}}"#, dataBytes: 4,
            mentioning: "overflows")
        assertRejected(
            #"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "y": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}"#,
            dataBytes: 8, mentioning: "overlaps")
        assertRejected(
            #"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#, dataBytes: 8, mentioning: "gap of 4 bytes")
        assertRejected(
            #"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#, dataBytes: 8, mentioning: "after the last tensor")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}"#, dataBytes: 4, mentioning: "header JSON")
        assertRejected(#"{"x": {"dtype": "F32", "shape": [1]}}"#, dataBytes: 4, mentioning: "data_offsets")
        assertRejected(#"{"__metadata__": {"a": 1}}"#, dataBytes: 0, mentioning: "header JSON")
        assertRejected(#"[1, 2]"#, dataBytes: 0, mentioning: "header JSON")
        assertRejected(#"{"x": "#, dataBytes: 0, mentioning: "header JSON")
    }

    func testNullMetadataIsAccepted() throws {
        // mx.save_safetensors without metadata writes this.
        let data = file(header: #"{"__metadata__": null, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#, dataBytes: 4)
        let header = try SafetensorsHeader.parse(data)
        XCTAssertEqual(header.metadata, [:])
        XCTAssertEqual(header.tensors.map(\.name), ["x"])
    }

    func testGapsAreAcceptedWhenAllowed() throws {
        let data = file(header: #"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#, dataBytes: 12)
        XCTAssertEqual(try SafetensorsHeader.parse(data, allowGaps: true).tensors.count, 1)
    }

    func testRejectsBadLengthField() throws {
        let valid = try makeValidFile()
        var tooLong = valid
        tooLong.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(valid.count).littleEndian) { Data($0) })
        XCTAssertThrowsError(try SafetensorsHeader.parse(tooLong)) { XCTAssertTrue("\($0)".contains("past the end")) }
        var huge = valid
        huge.replaceSubrange(0..<8, with: Data(repeating: 0xff, count: 8))
        XCTAssertThrowsError(try SafetensorsHeader.parse(huge)) { XCTAssertTrue("\($0)".contains("exceeds the limit")) }
        XCTAssertThrowsError(try SafetensorsHeader.parse(Data([1, 2, 3]))) { XCTAssertTrue("\($0)".contains("shorter")) }
        XCTAssertThrowsError(try SafetensorsHeader.parse(Data(repeating: 0, count: 8))) { XCTAssertTrue("\($0)".contains("is 0")) }
    }

    /// 1,000 seeded random mutations of a valid file: each must parse or throw, never crash; anything that parses
    /// must still have all tensors inside the data section.
    func testRandomMutationsNeverCrash() throws {
        let valid = try makeValidFile()
        let headerLength = Int(valid[0]) | Int(valid[1]) << 8
        var rng = SeededGenerator(seed: 20_250_101)
        var parsed = 0
        var rejected = 0
        for _ in 0..<1000 {
            let mutated = mutate(valid, headerLength: headerLength, rng: &rng)
            do {
                let file = try SafetensorsFile(data: mutated)
                parsed += 1
                for tensor in file.header.tensors {
                    XCTAssertLessThanOrEqual(file.header.dataStart + tensor.dataRange.upperBound, mutated.count)
                    if [.F32, .F16, .BF16].contains(tensor.dtype) { _ = try file.floats(of: tensor) }
                }
            } catch is SharpError {
                rejected += 1
            }
        }
        print("safetensors mutations: \(parsed) parsed, \(rejected) rejected")
        XCTAssertEqual(parsed + rejected, 1000)
        XCTAssertGreaterThan(rejected, 500, "most mutations should be caught")
    }

    private func mutate(_ valid: Data, headerLength: Int, rng: inout SeededGenerator) -> Data {
        var bytes = [UInt8](valid)
        switch Int.random(in: 0..<6, using: &rng) {
        case 0:  // flip random bits in the JSON header
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                bytes[8 + Int.random(in: 0..<headerLength, using: &rng)] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
            }
        case 1:  // overwrite header bytes with random or structural characters
            let alphabet = Array("{}[]\":,0123456789-.eE ".utf8) + [0, 0xff, 0xc3]
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                bytes[8 + Int.random(in: 0..<headerLength, using: &rng)] = alphabet.randomElement(using: &rng) ?? 0
            }
        case 2:  // truncate anywhere
            bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &rng)))
        case 3:  // change the length field slightly
            let delta = Int.random(in: -16...16, using: &rng)
            let length = UInt64(max(0, headerLength + delta))
            for index in 0..<8 { bytes[index] = UInt8(truncatingIfNeeded: length >> UInt64(8 * index)) }
        case 4:  // random length field
            let length = UInt64.random(in: 0...UInt64.max, using: &rng)
            for index in 0..<8 { bytes[index] = UInt8(truncatingIfNeeded: length >> UInt64(8 * index)) }
        default:  // change a digit inside the header (shapes and offsets)
            let digitPositions = (8..<(8 + headerLength)).filter { (0x30...0x39).contains(bytes[$0]) }
            if let position = digitPositions.randomElement(using: &rng) {
                bytes[position] = UInt8.random(in: 0x30...0x39, using: &rng)
            }
        }
        return Data(bytes)
    }
}
