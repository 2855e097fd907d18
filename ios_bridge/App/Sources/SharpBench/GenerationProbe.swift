import Foundation
import MLX
import MLXLMCommon
import SharpBridge

/// Fixed benchmark parameters, identical for the SHARP and the original model.
struct BenchmarkSettings: Sendable, Codable, Equatable {
    var promptTokens = 128
    var generatedTokens = 64
    var repeats = 5
    var warmupRuns = 1
    var verifyChecksums = true

    var contextDescription: [String: String] {
        [
            "prompt_tokens": String(promptTokens), "generated_tokens": String(generatedTokens),
            "repeats": String(repeats), "warmup_runs": String(warmupRuns),
        ]
    }
}

enum ProbeError: LocalizedError {
    case noTokenGenerated

    var errorDescription: String? { "the model produced no token" }
}

/// One measured greedy generation with a fixed prompt length and a fixed number of new tokens.
///
/// The token iterator is driven directly (no EOS stop) so every run generates exactly
/// `settings.generatedTokens` tokens. TTFT is the time from starting the prompt to receiving the first token;
/// the prefill figures use the same interval (prompt tokens / TTFT, as mlx-lm reports prompt tok/s). Decode
/// covers the remaining `generatedTokens - 1` tokens. Peak memory is MLX's peak since the reset just before
/// the run, so it includes the resident weights.
enum GenerationProbe {
    /// A deterministic prompt of exactly `count` tokens: fixed English text, tokenized and repeated.
    static func promptTokens(tokenizer: any Tokenizer, count: Int) -> [Int] {
        let text = """
            The history of computing is a story of machines becoming smaller, faster and more personal. \
            Early computers filled rooms; today a phone runs language models that answer questions, \
            summarize documents and write code. Making those models fit in memory matters as much as speed.
            """
        var tokens = tokenizer.encode(text: text, addSpecialTokens: false)
        if tokens.isEmpty { tokens = [0] }
        while tokens.count < count { tokens += tokens }
        return Array(tokens.prefix(count))
    }

    static func run(context: ModelContext, settings: BenchmarkSettings) throws -> RunMeasurement {
        let prompt = promptTokens(tokenizer: context.tokenizer, count: settings.promptTokens)
        let input = LMInput(tokens: MLXArray(prompt.map { Int32($0) }))
        let parameters = GenerateParameters(maxTokens: settings.generatedTokens, temperature: 0)
        Memory.clearCache()
        Memory.peakMemory = 0  // the setter resets the peak counter

        let start = Date.timeIntervalSinceReferenceDate
        var iterator = try TokenIterator(input: input, model: context.model, parameters: parameters)
        guard iterator.next() != nil else { throw ProbeError.noTokenGenerated }
        let firstToken = Date.timeIntervalSinceReferenceDate
        var decoded = 0
        while iterator.next() != nil { decoded += 1 }
        let end = Date.timeIntervalSinceReferenceDate
        Stream().synchronize()

        let timeToFirstToken = firstToken - start
        return RunMeasurement(
            loadTimeSeconds: 0, timeToFirstTokenSeconds: timeToFirstToken, promptTokens: prompt.count,
            prefillSeconds: timeToFirstToken, generatedTokens: decoded, decodeSeconds: end - firstToken,
            peakMemoryBytes: Memory.peakMemory)
    }

    /// A short greedy chat answer, shown so a broken model is obvious before trusting its speed.
    static func sample(container: ModelContainer, prompt: String, maxTokens: Int) async throws -> String {
        let input = try await container.prepare(input: UserInput(prompt: prompt))
        let stream = try await container.generate(
            input: input, parameters: GenerateParameters(maxTokens: maxTokens, temperature: 0))
        var text = ""
        for await generation in stream {
            if let chunk = generation.chunk { text += chunk }
        }
        return text
    }
}
