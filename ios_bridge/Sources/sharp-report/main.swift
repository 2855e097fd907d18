import Foundation
import SharpBridge

// sharp-report BUNDLE_OR_MODEL_DIR [--json] [--forward] [--tokens N] [--generate N] [--max-params N]
//
// Verifies a SHARP bundle (when it has a sharp_manifest.json), prints the storage report of its SHARP model
// (and of the original model when the bundle carries one), and with --forward times the reference CPU
// forward pass. Exit status: 0 good, 1 verification failure, 2 usage or read error.

let exitCode = ReportCommand.run(arguments: Array(CommandLine.arguments.dropFirst()))
exit(exitCode)
