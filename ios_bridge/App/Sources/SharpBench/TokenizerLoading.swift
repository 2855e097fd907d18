import Foundation
import MLXHuggingFace
import MLXLMCommon
import Tokenizers

/// The tokenizer loader for bundle directories: swift-transformers' `AutoTokenizer` read from the model
/// folder (`tokenizer.json` + `tokenizer_config.json`), adapted by mlx-swift-lm's MLXHuggingFace macro.
/// Kept in its own file because `Tokenizers.Tokenizer` and `MLXLMCommon.Tokenizer` share a name.
func makeTokenizerLoader() -> any MLXLMCommon.TokenizerLoader {
    #huggingFaceTokenizerLoader()
}
