import Foundation

/// Every error SharpBridge throws. The description always says what was wrong and where.
public enum SharpError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// A config.json is unreadable or inconsistent.
    case invalidConfig(String)
    /// A plan (target -> reference map) breaks a rule.
    case invalidPlan(String)
    /// A safetensors file is malformed; the first value names the file (or "<data>").
    case invalidSafetensors(file: String, reason: String)
    /// A tensor needed by a computation is absent or has an unusable shape or dtype.
    case invalidTensor(name: String, reason: String)
    /// A bundle manifest is unreadable or inconsistent.
    case invalidManifest(String)
    /// A file could not be read.
    case io(path: String, reason: String)
    /// The model cannot be run by the reference forward pass (too large, unsupported feature, ...).
    case unsupported(String)

    public var description: String {
        switch self {
        case .invalidConfig(let reason): return "invalid config: \(reason)"
        case .invalidPlan(let reason): return "invalid plan: \(reason)"
        case .invalidSafetensors(let file, let reason): return "invalid safetensors \(file): \(reason)"
        case .invalidTensor(let name, let reason): return "tensor \(name): \(reason)"
        case .invalidManifest(let reason): return "invalid manifest: \(reason)"
        case .io(let path, let reason): return "cannot read \(path): \(reason)"
        case .unsupported(let reason): return "unsupported: \(reason)"
        }
    }

    public var errorDescription: String? { description }
}
