import Foundation

/// `sharp_manifest.json`: the table of contents of an exported SHARP bundle, written by the Python exporter.
/// Unknown keys are ignored; everything after `files` is optional.
public struct BundleManifest: Codable, Equatable, Sendable {
    public static let fileName = "sharp_manifest.json"
    public static let formatName = "sharp-bundle"

    public var format: String
    public var version: Int
    /// Relative directory of the SHARP model inside the bundle.
    public var modelDir: String
    /// Relative directory of the original (unshared) model, when the bundle carries it.
    public var originalDir: String?
    /// Every file of the bundle except the manifest itself.
    public var files: [FileEntry]
    public var plan: [String: Int]?
    public var accounting: Accounting?
    public var quantization: QuantizationConfig?
    public var original: OriginalSummary?
    public var pythonMetrics: PythonMetrics?

    enum CodingKeys: String, CodingKey {
        case format, version
        case modelDir = "model_dir"
        case originalDir = "original_dir"
        case files, plan, accounting, quantization, original
        case pythonMetrics = "python_metrics"
    }

    public struct FileEntry: Codable, Equatable, Sendable {
        /// Relative to the bundle root, "/"-separated.
        public var path: String
        public var bytes: Int
        /// Lowercase hex.
        public var sha256: String

        public init(path: String, bytes: Int, sha256: String) {
            self.path = path
            self.bytes = bytes
            self.sha256 = sha256
        }
    }

    /// The exporter's accounting of the SHARP model.
    public struct Accounting: Codable, Equatable, Sendable {
        public var numLayers: Int?
        public var mlpParamsOriginal: Int?
        public var mlpParamsStored: Int?
        public var recoveryParams: Int?
        public var netMlpSavingPercent: Double?
        public var totalParams: Int?
        public var tensorBytes: Int?

        enum CodingKeys: String, CodingKey {
            case numLayers = "num_layers"
            case mlpParamsOriginal = "mlp_params_original"
            case mlpParamsStored = "mlp_params_stored"
            case recoveryParams = "recovery_params"
            case netMlpSavingPercent = "net_mlp_saving_percent"
            case totalParams = "total_params"
            case tensorBytes = "tensor_bytes"
        }
    }

    public struct OriginalSummary: Codable, Equatable, Sendable {
        public var tensorBytes: Int?
        public var totalParams: Int?

        enum CodingKeys: String, CodingKey {
            case tensorBytes = "tensor_bytes"
            case totalParams = "total_params"
        }
    }

    /// Metrics measured on the Mac/Linux side, for comparison with the phone.
    public struct PythonMetrics: Codable, Equatable, Sendable {
        public var sharp: Metrics?
        public var original: Metrics?
    }

    public struct Metrics: Codable, Equatable, Sendable {
        public var perplexity: Double?
        public var decodeTokS: Double?
        public var promptTokS: Double?
        public var peakMemoryGb: Double?

        enum CodingKeys: String, CodingKey {
            case perplexity
            case decodeTokS = "decode_tok_s"
            case promptTokS = "prompt_tok_s"
            case peakMemoryGb = "peak_memory_gb"
        }
    }

    public init(format: String = BundleManifest.formatName, version: Int = 1, modelDir: String, originalDir: String? = nil, files: [FileEntry]) {
        self.format = format
        self.version = version
        self.modelDir = modelDir
        self.originalDir = originalDir
        self.files = files
    }

    /// Reads and checks `sharp_manifest.json` in a bundle directory.
    public static func load(bundle: URL) throws -> BundleManifest {
        let url = bundle.appendingPathComponent(fileName)
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw SharpError.io(path: url.path, reason: error.localizedDescription)
        }
        let manifest: BundleManifest
        do {
            manifest = try JSONDecoder().decode(BundleManifest.self, from: data)
        } catch {
            throw SharpError.invalidManifest("\(fileName): \(describeDecodingError(error))")
        }
        try manifest.validate()
        return manifest
    }

    /// Checks format, version and that every path is a safe relative path.
    public func validate() throws {
        guard format == BundleManifest.formatName else {
            throw SharpError.invalidManifest("format is \"\(format)\", expected \"\(BundleManifest.formatName)\"")
        }
        guard version == 1 else { throw SharpError.invalidManifest("unsupported version \(version) (expected 1)") }
        for directory in [modelDir] + (originalDir.map { [$0] } ?? []) where !isSafeRelativePath(directory) {
            throw SharpError.invalidManifest("directory \"\(directory)\" is not a relative path inside the bundle")
        }
        var seen = Set<String>()
        for entry in files {
            guard isSafeRelativePath(entry.path) else {
                throw SharpError.invalidManifest("file path \"\(entry.path)\" is not a relative path inside the bundle")
            }
            guard seen.insert(entry.path).inserted else { throw SharpError.invalidManifest("file \(entry.path) is listed twice") }
            guard entry.bytes >= 0 else { throw SharpError.invalidManifest("file \(entry.path) has negative size") }
        }
    }
}

/// True for "a/b" style paths: not empty, not absolute, no "..", "." or empty components.
func isSafeRelativePath(_ path: String) -> Bool {
    guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\\") else { return false }
    let components = path.split(separator: "/", omittingEmptySubsequences: false)
    return components.allSatisfy { !$0.isEmpty && $0 != ".." && $0 != "." }
}
