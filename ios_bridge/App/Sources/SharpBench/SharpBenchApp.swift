import SharpLLM
import SwiftUI

@main
struct SharpBenchApp: App {
    init() {
        // Register model type "sharp" early; BenchmarkRunner registers again before loading (idempotent).
        Task { await SharpModelRegistration.register() }
    }

    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
