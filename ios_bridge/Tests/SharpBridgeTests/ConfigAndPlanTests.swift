import Foundation
import XCTest

@testable import SharpBridge

final class ConfigAndPlanTests: XCTestCase {
    let sharpConfigJSON = """
        {"model_type": "sharp", "model_file": "sharp_model.py", "hidden_size": 576, "num_hidden_layers": 30,
         "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
         "rope_theta": 100000, "vocab_size": 49152, "tie_word_embeddings": true, "architectures": ["LlamaForCausalLM"],
         "quantization": {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}},
         "sharp": {"version": 1, "base_model_type": "llama", "plan": {"17": 16, "19": 18},
                   "recovery": {"kind": "lora+vectors", "rank": 64, "matrices": ["gate_proj", "up_proj", "down_proj"], "scale": 2.0}}}
        """

    func testDecodesSharpConfig() throws {
        let config = try ModelConfig.decode(Data(sharpConfigJSON.utf8))
        XCTAssertEqual(config.modelType, "sharp")
        XCTAssertEqual(config.headDim, 64)
        XCTAssertEqual(config.numKeyValueHeads, 3)
        XCTAssertEqual(config.ropeTheta, 100000)
        XCTAssertEqual(config.quantization?.bits, 4)
        XCTAssertEqual(config.quantization?.settings(forModule: "model.embed_tokens").bits, 8)
        XCTAssertEqual(config.quantization?.settings(forModule: "model.layers.0.mlp.up_proj").bits, 4)
        XCTAssertEqual(config.sharp?.recovery.kind, .loraAndVectors)
        XCTAssertEqual(config.sharp?.recovery.scale, 2)
        let plan = try config.resolvedPlan()
        XCTAssertEqual(plan.targets, [17, 19])
        XCTAssertEqual(plan.references, [16, 18])
        XCTAssertEqual(plan.weightSource(for: 17), 16)
        XCTAssertEqual(plan.weightSource(for: 16), 16)
    }

    func testPlainLlamaConfigHasEmptyPlanAndDefaults() throws {
        let json = """
            {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
             "num_attention_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 100}
            """
        let config = try ModelConfig.decode(Data(json.utf8))
        XCTAssertFalse(config.isSharp)
        XCTAssertEqual(config.numKeyValueHeads, 4)
        XCTAssertEqual(config.headDim, 16)
        XCTAssertEqual(config.ropeTheta, 10000)
        XCTAssertTrue(config.tieWordEmbeddings)
        XCTAssertFalse(config.attentionBias)
        XCTAssertFalse(config.mlpBias)
        XCTAssertTrue(try config.resolvedPlan().isEmpty)
    }

    func testConfigErrorsAreDescriptive() {
        let missing = #"{"hidden_size": 64, "num_hidden_layers": 2}"#
        XCTAssertThrowsError(try ModelConfig.decode(Data(missing.utf8))) { error in
            XCTAssertTrue("\(error)".contains("intermediate_size"), "\(error)")
        }
        let badHeads = """
            {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 8, "num_attention_heads": 4,
             "num_key_value_heads": 3, "vocab_size": 10}
            """
        XCTAssertThrowsError(try ModelConfig.decode(Data(badHeads.utf8))) { error in
            XCTAssertTrue("\(error)".contains("num_key_value_heads"), "\(error)")
        }
        let huge = """
            {"hidden_size": 4611686018427387904, "num_hidden_layers": 1, "intermediate_size": 8,
             "num_attention_heads": 1, "vocab_size": 10}
            """
        XCTAssertThrowsError(try ModelConfig.decode(Data(huge.utf8))) { error in
            XCTAssertTrue("\(error)".contains("overflows"), "\(error)")
        }
        let badKind = sharpConfigJSON.replacingOccurrences(of: "lora+vectors", with: "dora")
        XCTAssertThrowsError(try ModelConfig.decode(Data(badKind.utf8)))
        let badMatrix = sharpConfigJSON.replacingOccurrences(of: "\"down_proj\"]", with: "\"o_proj\"]")
        XCTAssertThrowsError(try ModelConfig.decode(Data(badMatrix.utf8))) { error in
            XCTAssertTrue("\(error)".contains("o_proj"), "\(error)")
        }
    }

    func testPlanValidationErrors() {
        func message(_ plan: [String: Int], layers: Int = 4) -> String {
            do {
                _ = try SharpPlan(rawPlan: plan, numLayers: layers)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(message(["2": 2]).contains("references itself"))
        XCTAssertTrue(message(["4": 1]).contains("target layer 4 is outside 0..<4"))
        XCTAssertTrue(message(["-1": 1]).contains("outside"))
        XCTAssertTrue(message(["1": 9]).contains("references layer 9, outside"))
        XCTAssertTrue(message(["3": 2, "2": 1]).contains("chains are not allowed"))
        XCTAssertTrue(message(["x": 1]).contains("is not a layer index"))
        XCTAssertTrue(message(["01": 0]).contains("is not a layer index"))
        XCTAssertEqual(message(["3": 2, "1": 2]), "no error")
        XCTAssertEqual(message([:]), "no error")
        XCTAssertTrue(message([:], layers: 0).contains("no layers"))
    }

    func testInvalidPlanInConfigIsRejected() {
        let chained = sharpConfigJSON.replacingOccurrences(of: #""19": 18"#, with: #""16": 15"#)
        XCTAssertThrowsError(try ModelConfig.decode(Data(chained.utf8))) { error in
            XCTAssertTrue("\(error)".contains("chains"), "\(error)")
        }
    }
}
