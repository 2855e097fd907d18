// swift-tools-version:5.9
// The top-level package: SharpBridge (Foundation-only library), the `sharp-report` command-line tool and
// their tests. It depends on nothing outside the Swift toolchain so `swift build` / `swift test` work
// offline on Linux. The iOS app under ios_bridge/App is a separate package (it needs mlx-swift-lm).
import PackageDescription

let package = Package(
    name: "sharp-mlx",
    platforms: [.macOS(.v13), .iOS(.v16)],
    products: [
        .library(name: "SharpBridge", targets: ["SharpBridge"]),
        .executable(name: "sharp-report", targets: ["sharp-report"]),
    ],
    targets: [
        .target(
            name: "SharpBridge",
            path: "ios_bridge/Sources/SharpBridge"
        ),
        .executableTarget(
            name: "sharp-report",
            dependencies: ["SharpBridge"],
            path: "ios_bridge/Sources/sharp-report"
        ),
        .testTarget(
            name: "SharpBridgeTests",
            dependencies: ["SharpBridge"],
            path: "ios_bridge/Tests/SharpBridgeTests",
            // Fixtures are read through a #filePath-relative path (works on Linux and macOS without a
            // resource bundle), so they stay out of the build graph.
            exclude: ["Fixtures"]
        ),
    ]
)
