// What the kernels were compiled for and what the CPU running them offers, so a program can tell its users when
// a rebuild would be faster (a dependent that builds this package without a CPU target gets baseline SSE2 code on
// x86_64, 3-4x slower). Both are cheap: the build facts are constants, the CPU facts one CPUID read, cached.

import AttentionPlatform

/// A set of vector features of a CPU or of a build target.
public struct CPUFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// The features as bits, one per feature (the C header's `SWIFT_ATTENTION_*` values).
    public let rawValue: Int32
    /// The set whose bits are `rawValue`.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// 256-bit integer and float vectors (x86_64).
    public static let avx2 = CPUFeatures(rawValue: Int32(SWIFT_ATTENTION_AVX2))
    /// Fused multiply-add (x86_64 FMA3; part of arm64).
    public static let fma = CPUFeatures(rawValue: Int32(SWIFT_ATTENTION_FMA))
    /// 512-bit vectors and 32 vector registers (x86_64 AVX-512 Foundation).
    public static let avx512f = CPUFeatures(rawValue: Int32(SWIFT_ATTENTION_AVX512F))
    /// Half-precision conversion instructions (x86_64).
    public static let f16c = CPUFeatures(rawValue: Int32(SWIFT_ATTENTION_F16C))
    /// Advanced SIMD (arm64).
    public static let neon = CPUFeatures(rawValue: Int32(SWIFT_ATTENTION_NEON))

    /// The features' names separated by spaces ("none" for the empty set), e.g. "AVX2 FMA F16C".
    public var description: String {
        let names: [(CPUFeatures, String)] = [
            (.avx2, "AVX2"), (.fma, "FMA"), (.avx512f, "AVX-512F"), (.f16c, "F16C"), (.neon, "NEON"),
        ]
        let present = names.filter { contains($0.0) }.map(\.1)
        return present.isEmpty ? "none" : present.joined(separator: " ")
    }
}

/// How this copy of the kernels was built, and what the CPU it runs on offers.
///
/// ```swift
/// let build = KernelBuild.current
/// if let advice = build.advice { print("warning:", advice) }   // e.g. built for baseline x86_64 on an AVX2 CPU
/// print(build)   // one line: architecture, target features, FMA, micro-kernel shape, CPU features
/// ```
public struct KernelBuild: Sendable, CustomStringConvertible {
    /// The build on this process's CPU (the CPU is read once, on first use).
    public static let current = KernelBuild()

    /// "x86_64", "arm64" or "other".
    public let architecture: String
    /// The vector features the kernels were compiled for (the target's, e.g. from `-Xcc -march=native`).
    public let targetFeatures: CPUFeatures
    /// The vector features of the CPU running this process, as far as the operating system enables them.
    public let cpuFeatures: CPUFeatures
    /// Whether the kernels' inner loops use fused multiply-add.
    public let fusedMultiplyAdd: Bool
    /// The prefill micro-kernels' register blocking, e.g. "6 keys x 16 rows (6 SIMD16 accumulators, ...)".
    public let microKernels: String
    /// False in a debug build (unoptimized: tens of times slower).
    public let isOptimized: Bool

    private init() {
        #if arch(x86_64)
            architecture = "x86_64"
        #elseif arch(arm64)
            architecture = "arm64"
        #else
            architecture = "other"
        #endif
        targetFeatures = CPUFeatures(rawValue: swift_attention_target_features())
        cpuFeatures = CPUFeatures(rawValue: swift_attention_cpu_features())
        #if FusedMultiplyAdd
            fusedMultiplyAdd = true
        #else
            fusedMultiplyAdd = swift_attention_target_has_fma() != 0
        #endif
        microKernels = MicroKernelShape.target.summary
        #if DEBUG
            isOptimized = false
        #else
            isOptimized = true
        #endif
    }

    /// Vector features the CPU has that the build does not use.
    public var unusedCPUFeatures: CPUFeatures { cpuFeatures.subtracting(targetFeatures) }

    /// A sentence for the program's users when this build leaves speed unused (a debug build, or a CPU with
    /// AVX2, FMA or AVX-512 the build was not compiled for), naming the fix; nil when the build fits the CPU.
    public var advice: String? {
        var problems: [String] = []
        if !isOptimized { problems.append("the attention kernels are a debug build (build with -c release)") }
        let missing = unusedCPUFeatures.intersection([.avx2, .fma, .avx512f])
        if !missing.isEmpty {
            problems.append(
                "this CPU has \(missing) but the attention kernels were compiled without it (build with -Xcc "
                    + "-march=native, or enable the NativeCPU trait of swift-attention)")
        }
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }

    /// One line, e.g. "x86_64, target AVX2 FMA F16C, fused multiply-add, micro-kernels 6 keys x 16 rows (...);
    /// CPU AVX2 FMA F16C".
    public var description: String {
        let arithmetic = fusedMultiplyAdd ? "fused multiply-add" : "separate multiply and add"
        let debug = isOptimized ? "" : ", debug build"
        return "\(architecture), target \(targetFeatures), \(arithmetic), micro-kernels \(microKernels)\(debug); "
            + "CPU \(cpuFeatures)"
    }
}
