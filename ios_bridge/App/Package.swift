// swift-tools-version: 6.2
// SharpBench: an iOS 17+ SwiftUI app that benchmarks an exported SHARP bundle against its original model
// with mlx-swift-lm. Open this folder in Xcode (File > Open... > ios_bridge/App); on a Mac with Xcode the
// AppleProductTypes module is available and the package builds an iOS application product. Elsewhere it
// describes only the SharpLLM library (the model port), which still needs Apple platforms for MLX.
//
// Not compiled on Linux: see ../README.md.
import PackageDescription

#if canImport(AppleProductTypes)
import AppleProductTypes
#endif

let mlxLLM: Target.Dependency = .product(name: "MLXLLM", package: "mlx-swift-lm")
let mlxCommon: Target.Dependency = .product(name: "MLXLMCommon", package: "mlx-swift-lm")
let sharpBridge: Target.Dependency = .product(name: "SharpBridge", package: "sharp-mlx")

let sharpLLMTarget = Target.target(
    name: "SharpLLM",
    dependencies: [mlxLLM, mlxCommon, sharpBridge],
    path: "Sources/SharpLLM"
)

let appTarget = Target.executableTarget(
    name: "SharpBench",
    dependencies: [
        "SharpLLM", mlxLLM, mlxCommon, sharpBridge,
        .product(name: "MLXHuggingFace", package: "mlx-swift-lm"),
        .product(name: "Tokenizers", package: "swift-transformers"),
    ],
    path: "Sources/SharpBench"
)

#if canImport(AppleProductTypes)
let products: [Product] = [
    .library(name: "SharpLLM", targets: ["SharpLLM"]),
    .iOSApplication(
        name: "SharpBench",
        targets: ["SharpBench"],
        bundleIdentifier: "org.sharpmlx.SharpBench",
        displayVersion: "1.0",
        bundleVersion: "1",
        appIcon: .placeholder(icon: .pencil),
        accentColor: .presetColor(.teal),
        supportedDeviceFamilies: [.phone, .pad],
        supportedInterfaceOrientations: [.portrait, .landscapeLeft, .landscapeRight],
        additionalInfoPlistContentFilePath: "AdditionalInfo.plist"
    ),
]
let targets: [Target] = [sharpLLMTarget, appTarget]
#else
let products: [Product] = [.library(name: "SharpLLM", targets: ["SharpLLM"])]
let targets: [Target] = [sharpLLMTarget]
#endif

let package = Package(
    name: "SharpBench",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: products,
    dependencies: [
        .package(url: "https://github.com/ml-explore/mlx-swift-lm", .upToNextMajor(from: "3.31.3")),
        .package(url: "https://github.com/huggingface/swift-transformers", from: "1.3.0"),
        // The top-level sharp-mlx package (SharpBridge: manifest, sha256, storage, latency statistics).
        .package(name: "sharp-mlx", path: "../.."),
    ],
    targets: targets,
    swiftLanguageModes: [.v5]
)
