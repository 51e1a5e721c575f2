// swift-tools-version:6.2
//
// Pure-Swift CPU attention kernels. No package dependencies, by design.
//
// Full speed needs a CPU target with the machine's vector units: `-Xcc -march=native` on the command line, or the
// `NativeCPU` trait, which adds that flag to AttentionCore itself. Since tools version 6.2, SwiftPM accepts
// `unsafeFlags` in a dependency pinned by version, so a dependent can turn the trait on in its `.package(...)`
// line (see the README's "Using it from your package").

import PackageDescription

let package = Package(
    name: "swift-attention",
    // Duration and ContinuousClock (macOS 13 / iOS 16) are the newest APIs the library uses; its atomics come from
    // AttentionPlatform, not from Synchronization (macOS 15 / iOS 18).
    platforms: [.macOS(.v13), .iOS(.v16), .tvOS(.v16), .watchOS(.v9), .visionOS(.v1)],
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
            name: "NativeCPU",
            description: "Compile AttentionCore for the CPU that builds it (-march=native): AVX2/AVX-512 and FMA "
                + "on x86_64, the register blocking for the target, fused multiply-add where it exists. The binary "
                + "then needs a CPU with the same features."
        ),
        .trait(
            name: "FusedMultiplyAdd",
            description: "Force fused multiply-add in the kernels' inner loops even where the build target is not "
                + "known to have FMA. Targets with FMA (-march=native on a CPU with FMA, arm64) use it without this "
                + "trait; on baseline x86_64 each fused multiply-add would be a libm call per lane."
        ),
    ],
    targets: [
        // Compile-time target facts, CPU detection, a prefetch hint and an atomic increment: a header of static
        // inline C functions (see its comment for why each one is not Swift).
        .target(name: "AttentionPlatform"),
        .target(
            name: "AttentionCore",
            dependencies: ["AttentionPlatform"],
            // Only where the build machine is the target: a cross-compiled iOS, tvOS, watchOS or visionOS build
            // has no "native" CPU.
            swiftSettings: [
                .unsafeFlags(["-Xcc", "-march=native"], .when(platforms: [.linux, .macOS], traits: ["NativeCPU"]))
            ]
        ),
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
            dependencies: ["AttentionCore", "Attention", "_AttentionTestSupport"],
            // Read from the source tree by RealModelTests (scripts/make-minilm-fixture.py writes them).
            exclude: ["Fixtures"]
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
