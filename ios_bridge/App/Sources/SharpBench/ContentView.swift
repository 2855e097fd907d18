import SharpBridge
import SwiftUI

/// Bundle picker, benchmark settings, results (SHARP vs original with ratios) and JSON export.
struct ContentView: View {
    @StateObject private var runner = BenchmarkRunner()
    @State private var bundles: [BundleEntry] = []
    @State private var selected: BundleEntry?
    @State private var settings = BenchmarkSettings()

    var body: some View {
        NavigationStack {
            Form {
                bundleSection
                settingsSection
                if runner.sharp != nil { resultsSection }
                if !runner.log.isEmpty { logSection }
            }
            .navigationTitle("SHARP Bench")
            .toolbar {
                if let file = runner.exportedFile {
                    ShareLink(item: file) { Label("Export JSON", systemImage: "square.and.arrow.up") }
                }
            }
            .onAppear(perform: refresh)
            .refreshable { refresh() }
        }
    }

    private var bundleSection: some View {
        Section {
            if bundles.isEmpty {
                Text("No bundle found. Copy an exported bundle folder (with sharp_manifest.json) into this app's Documents folder using Finder or the Files app, then pull to refresh.")
                    .font(.footnote)
            }
            Picker("Bundle", selection: $selected) {
                Text("None").tag(BundleEntry?.none)
                ForEach(bundles) { entry in
                    Text(entry.name + (entry.hasOriginal ? " (+ original)" : "")).tag(BundleEntry?.some(entry))
                }
            }
            if let plan = selected?.manifest.plan, !plan.isEmpty {
                Text("Plan: " + plan.sorted { (Int($0.key) ?? 0) < (Int($1.key) ?? 0) }.map { "\($0.key)→\($0.value)" }.joined(separator: ", "))
                    .font(.footnote)
            }
        } header: {
            Text("Bundle")
        }
    }

    private var settingsSection: some View {
        Section {
            Stepper("Prompt tokens: \(settings.promptTokens)", value: $settings.promptTokens, in: 16 ... 2048, step: 16)
            Stepper("Generated tokens: \(settings.generatedTokens)", value: $settings.generatedTokens, in: 8 ... 1024, step: 8)
            Stepper("Repeats: \(settings.repeats)", value: $settings.repeats, in: 1 ... 50)
            Stepper("Warm-up runs: \(settings.warmupRuns)", value: $settings.warmupRuns, in: 0 ... 5)
            Toggle("Verify sha256 first", isOn: $settings.verifyChecksums)
            Button(runner.isRunning ? "Running…" : "Run benchmark") {
                guard let bundle = selected else { return }
                Task { await runner.run(bundle: bundle, settings: settings) }
            }
            .disabled(runner.isRunning || selected == nil)
        } header: {
            Text("Benchmark")
        }
    }

    private var resultsSection: some View {
        Section {
            ForEach(MetricRow.rows(sharp: runner.sharp, original: runner.original)) { row in
                HStack {
                    Text(row.name).font(.footnote)
                    Spacer()
                    Text(row.sharp).monospacedDigit()
                    if let original = row.original {
                        Text("/ " + original).monospacedDigit().foregroundStyle(.secondary)
                        Text("×" + (row.ratio ?? "–")).monospacedDigit().bold()
                    }
                }
            }
            if let sample = runner.sharp?.sampleText {
                Text("SHARP: " + sample).font(.footnote)
            }
            if let sample = runner.original?.sampleText {
                Text("Original: " + sample).font(.footnote).foregroundStyle(.secondary)
            }
        } header: {
            Text("Median (SHARP / original, ratio)")
        }
    }

    private var logSection: some View {
        Section {
            ForEach(Array(runner.log.enumerated()), id: \.offset) { _, line in
                Text(line).font(.caption.monospaced())
            }
        } header: {
            Text("Log")
        }
    }

    private func refresh() {
        bundles = BundleLibrary.scan()
        if selected == nil || !bundles.contains(where: { $0 == selected }) { selected = bundles.first }
    }
}

/// One line of the results table.
struct MetricRow: Identifiable {
    let name: String
    let sharp: String
    let original: String?
    let ratio: String?
    var id: String { name }

    static func rows(sharp: VariantResult?, original: VariantResult?) -> [MetricRow] {
        guard let sharp else { return [] }
        func row(_ name: String, _ value: (VariantResult) -> Double?, digits: Int) -> MetricRow {
            let sharpValue = value(sharp)
            let originalValue = original.flatMap(value)
            var ratio: String?
            if let sharpValue, let originalValue, originalValue != 0 { ratio = format(sharpValue / originalValue) }
            return MetricRow(
                name: name, sharp: sharpValue.map { format($0, digits: digits) } ?? "–",
                original: original == nil ? nil : (originalValue.map { format($0, digits: digits) } ?? "–"), ratio: ratio)
        }
        let mebibyte = 1024.0 * 1024.0
        return [
            row("Size on disk (MiB)", { Double($0.bytesOnDisk) / mebibyte }, digits: 1),
            row("Load time (s)", { $0.stats.loadTime?.median }, digits: 2),
            row("TTFT (s)", { $0.stats.timeToFirstToken?.median }, digits: 3),
            row("TTFT p90 (s)", { $0.stats.timeToFirstToken?.p90 }, digits: 3),
            row("Prefill (tok/s)", { $0.stats.prefillTokensPerSecond?.median }, digits: 1),
            row("Decode (tok/s)", { $0.stats.decodeTokensPerSecond?.median }, digits: 1),
            row("Decode p90 (tok/s)", { $0.stats.decodeTokensPerSecond?.p90 }, digits: 1),
            row("Peak memory (MiB)", { ($0.stats.peakMemoryBytes?.median).map { $0 / mebibyte } }, digits: 1),
            row("Parameters (M)", { $0.storage.map { Double($0.totalParameters) / 1e6 } }, digits: 2),
        ]
    }
}
