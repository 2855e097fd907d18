import Foundation

/// One thing wrong with a bundle; the description names the file.
public enum BundleIssue: Equatable, Sendable, CustomStringConvertible, Codable {
    case missing(path: String)
    case sizeMismatch(path: String, expected: Int, actual: Int)
    case sha256Mismatch(path: String)
    case tensorBytesMismatch(manifest: Int, headers: Int)
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .missing(let path): return "missing file: \(path)"
        case .sizeMismatch(let path, let expected, let actual):
            return "size mismatch: \(path) (manifest \(expected) bytes, found \(actual))"
        case .sha256Mismatch(let path): return "sha256 mismatch: \(path)"
        case .tensorBytesMismatch(let manifest, let headers):
            return "tensor bytes mismatch: accounting.tensor_bytes is \(manifest), safetensors headers sum to \(headers)"
        case .unreadable(let path, let reason): return "unreadable: \(path) (\(reason))"
        }
    }
}

/// The outcome of checking a bundle against its manifest.
public struct BundleVerification: Codable, Equatable, Sendable {
    /// Files listed in the manifest whose size and sha256 matched.
    public var verifiedFiles: [String]
    /// Failures; the bundle is good when this is empty.
    public var issues: [BundleIssue]
    /// Files present in the bundle but not listed in the manifest (reported, not a failure).
    public var unlistedFiles: [String]
    /// Tensor bytes of `model_dir` summed from its safetensors headers.
    public var modelTensorBytes: Int?

    public var isValid: Bool { issues.isEmpty }
    public var failureMessages: [String] { issues.map(\.description) }
}

/// Verifies a bundle directory: every listed file exists with the listed size and sha256, unlisted files are
/// reported, and `accounting.tensor_bytes` equals the tensor bytes in `model_dir`'s safetensors headers.
public enum BundleVerifier {
    public static func verify(bundle: URL) throws -> BundleVerification {
        let manifest = try BundleManifest.load(bundle: bundle)
        return try verify(bundle: bundle, manifest: manifest)
    }

    public static func verify(bundle: URL, manifest: BundleManifest) throws -> BundleVerification {
        var verified: [String] = []
        var issues: [BundleIssue] = []
        for entry in manifest.files {
            if let issue = check(entry, in: bundle) {
                issues.append(issue)
            } else {
                verified.append(entry.path)
            }
        }
        let listed = Set(manifest.files.map(\.path))
        let unlisted = try regularFiles(under: bundle).filter { $0 != BundleManifest.fileName && !listed.contains($0) }
        var tensorBytes: Int?
        do {
            tensorBytes = try ModelTensorIndex(directory: bundle.appendingPathComponent(manifest.modelDir)).tensorByteCount
        } catch {
            issues.append(.unreadable(path: manifest.modelDir, reason: "\(error)"))
        }
        if let expected = manifest.accounting?.tensorBytes, let tensorBytes, expected != tensorBytes {
            issues.append(.tensorBytesMismatch(manifest: expected, headers: tensorBytes))
        }
        return BundleVerification(verifiedFiles: verified, issues: issues, unlistedFiles: unlisted, modelTensorBytes: tensorBytes)
    }

    /// Checks one listed file; nil when it matches.
    static func check(_ entry: BundleManifest.FileEntry, in bundle: URL) -> BundleIssue? {
        let url = bundle.appendingPathComponent(entry.path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue else {
            return .missing(path: entry.path)
        }
        do {
            let size = try fileByteCount(url)
            guard size == entry.bytes else { return .sizeMismatch(path: entry.path, expected: entry.bytes, actual: size) }
            let digest = try SHA256.hexDigest(ofFileAt: url)
            guard digest == entry.sha256.lowercased() else { return .sha256Mismatch(path: entry.path) }
            return nil
        } catch {
            return .unreadable(path: entry.path, reason: "\(error)")
        }
    }

    /// Builds a manifest for a bundle directory (lists and hashes every file but the manifest). The exporter is
    /// the Python side; this exists so tests and tools can make bundles too.
    public static func makeManifest(bundle: URL, modelDir: String, originalDir: String? = nil) throws -> BundleManifest {
        var entries: [BundleManifest.FileEntry] = []
        for path in try regularFiles(under: bundle) where path != BundleManifest.fileName {
            let url = bundle.appendingPathComponent(path)
            entries.append(.init(path: path, bytes: try fileByteCount(url), sha256: try SHA256.hexDigest(ofFileAt: url)))
        }
        var manifest = BundleManifest(modelDir: modelDir, originalDir: originalDir, files: entries)
        let report = try StorageReport.make(directory: bundle.appendingPathComponent(modelDir))
        manifest.plan = report.plan
        manifest.quantization = report.quantization
        manifest.accounting = BundleManifest.Accounting(
            numLayers: report.numLayers, mlpParamsOriginal: report.mlp.originalParameters,
            mlpParamsStored: report.mlp.storedParameters, recoveryParams: report.mlp.recoveryParameters,
            netMlpSavingPercent: report.mlp.netSavingPercent, totalParams: report.totalParameters,
            tensorBytes: report.tensorBytes)
        if let originalDir {
            let original = try StorageReport.make(directory: bundle.appendingPathComponent(originalDir))
            manifest.original = .init(tensorBytes: original.tensorBytes, totalParams: original.totalParameters)
        }
        return manifest
    }
}
