import Foundation
import SharpBridge

/// Human-readable rendering of a `FullReport`.
enum TextFormatter {
    static func render(_ report: FullReport) -> String {
        var lines: [String] = ["sharp-report \(report.path)"]
        if let verification = report.verification {
            lines.append("")
            lines.append("Bundle verification: \(verification.isValid ? "OK" : "FAILED")")
            lines.append("  files verified (size + sha256): \(verification.verifiedFiles.count)")
            for issue in verification.issues { lines.append("  ✗ \(issue)") }
            for path in verification.unlistedFiles { lines.append("  note: not listed in the manifest: \(path)") }
        }
        if let sharp = report.sharp { lines += storage(sharp, title: report.isBundle ? "SHARP model" : "Model") }
        if let original = report.original { lines += storage(original, title: "Original model") }
        if let comparison = report.comparison {
            lines.append("")
            lines.append("SHARP vs original")
            lines.append("  tensor bytes: \(bytes(comparison.sharpTensorBytes)) / \(bytes(comparison.originalTensorBytes)) = \(fixed(comparison.tensorBytesRatio, 4))")
            lines.append("  weight files on disk ratio: \(fixed(comparison.weightFileBytesRatio, 4))")
            lines.append("  parameters: \(comparison.sharpParameters) / \(comparison.originalParameters) = \(fixed(comparison.parametersRatio, 4))")
        }
        if !report.accountingChecks.isEmpty {
            lines.append("")
            lines.append("Manifest accounting vs Swift")
            for check in report.accountingChecks {
                let manifest = check.manifest.map { number($0) } ?? "-"
                lines.append("  \(pad(check.field, 24)) manifest \(pad(manifest, 14)) swift \(pad(number(check.swift), 14)) \(check.matches ? "ok" : "DIFFERS")")
            }
        }
        if let forward = report.forward {
            lines.append("")
            lines.append("Reference CPU forward (fp32, naive)")
            lines.append("  prefill: \(forward.promptTokens) tokens in \(fixed(forward.prefillSeconds, 3)) s = \(fixed(forward.prefillTokensPerSecond, 1)) tok/s")
            lines.append("  decode:  \(forward.generatedTokens) tokens in \(fixed(forward.decodeSeconds, 3)) s = \(fixed(forward.decodeTokensPerSecond, 1)) tok/s")
            lines.append("  greedy tokens: \(forward.greedyTokenIds)")
        }
        lines.append("")
        lines.append(report.failures.isEmpty ? "Result: OK" : "Result: FAILED (\(report.failures.count) problem(s))")
        return lines.joined(separator: "\n")
    }

    static func storage(_ report: StorageReport, title: String) -> [String] {
        var lines = ["", "\(title): \(report.directory)"]
        var kind = "model_type \(report.modelType), \(report.numLayers) layers"
        if let quantization = report.quantization { kind += ", \(quantization.bits)-bit (group \(quantization.groupSize))" }
        if !report.plan.isEmpty {
            let pairs = report.plan.sorted { (Int($0.key) ?? 0) < (Int($1.key) ?? 0) }.map { "\($0.key)->\($0.value)" }
            kind += ", plan {\(pairs.joined(separator: ", "))}, recovery \(report.recoveryKind ?? "none")"
        }
        lines.append("  \(kind)")
        lines.append("  \(pad("category", 12)) \(pad("bytes", 12)) \(pad("params", 12)) tensors")
        for category in TensorCategory.allCases {
            let usage = report.usage(category)
            guard usage.tensors > 0 else { continue }
            lines.append("  \(pad(category.rawValue, 12)) \(pad(bytes(usage.bytes), 12)) \(pad(String(usage.parameters), 12)) \(usage.tensors)")
        }
        lines.append("  total tensor bytes \(bytes(report.tensorBytes)) (\(report.tensorBytes)), params \(report.totalParameters)")
        lines.append("  weight files on disk \(bytes(report.weightFileBytes)), whole directory \(bytes(report.directoryBytes))")
        let mlp = report.mlp
        lines.append("  MLP params: original \(mlp.originalParameters), stored \(mlp.storedParameters), recovery \(mlp.recoveryParameters), net saving \(fixed(mlp.netSavingPercent, 2))%")
        for problem in report.problems { lines.append("  ✗ \(problem)") }
        return lines
    }

    static func bytes(_ count: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : "\(fixed(value, 2)) \(units[unit])"
    }

    static func fixed(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : fixed(value, 4)
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
