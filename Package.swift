// swift-tools-version:6.1
//
// Pure-Swift CPU attention kernels. No package dependencies, by design.
//
// Build flags for full speed (e.g. `-Xcc -march=native`) go on the command line, never here:
// SwiftPM rejects `unsafeFlags` in a package that other packages depend on by version.

import PackageDescription

let package = Package(
    name: "swift-attention",
    products: [
        .library(name: "Attention", targets: ["Attention"]),
        .library(name: "AttentionCore", targets: ["AttentionCore"]),
        .library(name: "MultiQueryAttention", targets: ["MultiQueryAttention"]),
        .library(name: "GroupedQueryAttention", targets: ["GroupedQueryAttention"]),
        .library(name: "SlidingWindowAttention", targets: ["SlidingWindowAttention"]),
        .library(name: "SinkTokenAttention", targets: ["SinkTokenAttention"]),
        .executable(name: "attention-bench", targets: ["AttentionBenchmarks"]),
    ],
    traits: [
        .trait(
            name: "FusedMultiplyAdd",
            description: "Use fused multiply-add in the kernels' inner loops. Enable it only together with a CPU "
                + "target that has FMA (e.g. -Xcc -march=native on x86_64, or any arm64 build): on baseline x86_64 "
                + "each fused multiply-add becomes a libm call per lane."
        )
    ],
    targets: [
        .target(name: "AttentionCore"),
        .target(name: "MultiQueryAttention", dependencies: ["AttentionCore"]),
        .target(name: "GroupedQueryAttention", dependencies: ["AttentionCore"]),
        .target(name: "SlidingWindowAttention", dependencies: ["AttentionCore"]),
        .target(name: "SinkTokenAttention", dependencies: ["AttentionCore"]),
        .target(
            name: "Attention",
            dependencies: [
                "AttentionCore", "MultiQueryAttention", "GroupedQueryAttention",
                "SlidingWindowAttention", "SinkTokenAttention",
            ]
        ),
        // The Float64 reference, the SplitMix64 sweep helpers and the tolerance rule. Not a product; it does not
        // import XCTest, so the benchmark can use the same reference for its correctness gate.
        .target(
            name: "_AttentionTestSupport",
            dependencies: ["AttentionCore"],
            path: "Tests/_AttentionTestSupport"
        ),
        // The benchmark harness as a library, so its statistics, FLOP formula, output and option parsing are tested.
        .target(
            name: "AttentionBenchmarkKit",
            dependencies: ["AttentionCore", "SinkTokenAttention", "_AttentionTestSupport"],
            path: "Benchmarks/AttentionBenchmarkKit"
        ),
        .executableTarget(
            name: "AttentionBenchmarks",
            dependencies: ["AttentionBenchmarkKit", "AttentionCore"],
            path: "Benchmarks/AttentionBenchmarks"
        ),
        .testTarget(
            name: "AttentionCoreTests",
            dependencies: ["AttentionCore", "Attention", "_AttentionTestSupport"]
        ),
        .testTarget(
            name: "MultiQueryAttentionTests",
            dependencies: ["MultiQueryAttention", "_AttentionTestSupport"]
        ),
        .testTarget(
            name: "GroupedQueryAttentionTests",
            dependencies: ["GroupedQueryAttention", "_AttentionTestSupport"]
        ),
        .testTarget(
            name: "SlidingWindowAttentionTests",
            dependencies: ["SlidingWindowAttention", "_AttentionTestSupport"]
        ),
        .testTarget(
            name: "SinkTokenAttentionTests",
            dependencies: ["SinkTokenAttention", "_AttentionTestSupport"]
        ),
        .testTarget(
            name: "AttentionBenchmarkKitTests",
            dependencies: ["AttentionBenchmarkKit", "AttentionCore"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
