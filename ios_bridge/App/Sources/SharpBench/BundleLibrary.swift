import Foundation
import SharpBridge

/// An exported SHARP bundle found in the app's Documents folder.
struct BundleEntry: Identifiable, Hashable {
    let url: URL
    let manifest: BundleManifest

    var id: URL { url }
    static func == (lhs: BundleEntry, rhs: BundleEntry) -> Bool { lhs.url == rhs.url }
    func hash(into hasher: inout Hasher) { hasher.combine(url) }
    var name: String { url.lastPathComponent }
    var hasOriginal: Bool { manifest.originalDir != nil }
}

/// Finds bundles (folders holding `sharp_manifest.json`) in Documents and one level below it, so a bundle can
/// be copied in as a folder, or its contents copied straight into Documents.
enum BundleLibrary {
    static var documents: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask).first
            ?? FileManager.default.temporaryDirectory
    }

    static func scan() -> [BundleEntry] {
        let root = documents
        let children = (try? FileManager.default.contentsOfDirectory(
            at: root, includingPropertiesForKeys: [.isDirectoryKey], options: [.skipsHiddenFiles])) ?? []
        return ([root] + children).compactMap { url in
            guard let manifest = try? BundleManifest.load(bundle: url) else { return nil }
            return BundleEntry(url: url, manifest: manifest)
        }
        .sorted { $0.name < $1.name }
    }
}
