// What the benchmark prints about the machine and the build before any number.

import AttentionCore
import Foundation

/// The CPU, the build and what this binary's micro-kernels reach on one core.
public struct MachineContext: Sendable {
    public var cpu: String
    public var cores: Int
    public var build: String
    /// `KernelBuild.current`'s one-line description: target features, FMA, micro-kernel shape, CPU features.
    public var kernels: String
    /// `KernelBuild.current.advice`: what the build leaves unused on this CPU, or nil.
    public var advice: String?
    /// GFLOP/s of the blockwise kernel's micro-kernels on L1-resident data, one thread.
    public var microKernelGFLOPS: Double
    /// The plain multiply-add rate of the same core in windows interleaved with the kernels', and the kernels'
    /// median fraction of it (see `microKernelProbe`); 0 when not measured.
    public var multiplyAddGFLOPS: Double = 0
    public var fractionOfMultiplyAdd: Double = 0

    public init(
        cpu: String, cores: Int, build: String, kernels: String, advice: String?, microKernelGFLOPS: Double
    ) {
        self.cpu = cpu
        self.cores = cores
        self.build = build
        self.kernels = kernels
        self.advice = advice
        self.microKernelGFLOPS = microKernelGFLOPS
    }

    /// Reads the CPU's name from /proc/cpuinfo where it exists, the build from `KernelBuild.current`, and runs
    /// the micro-kernel probe for about 0.7 s.
    public static func measure(cores: Int) -> MachineContext {
        var cpu = "unknown CPU"
        if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            for line in info.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if parts.count == 2 && parts[0] == "model name" {
                    cpu = parts[1]
                    break
                }
            }
        }
        #if DEBUG
            let build = "debug"
        #else
            let build = "release"
        #endif
        let kernels = KernelBuild.current
        let probe = microKernelProbe()
        var context = MachineContext(
            cpu: cpu, cores: cores, build: build, kernels: kernels.description, advice: kernels.advice,
            microKernelGFLOPS: probe.gflops)
        context.multiplyAddGFLOPS = probe.peakGFLOPS
        context.fractionOfMultiplyAdd = probe.fractionOfPeak
        return context
    }

    /// Lines for the top of the report (the `warnings` go to standard error separately).
    public var summary: [String] {
        [
            "machine: \(cpu), \(cores) processors",
            "build: \(build); kernels: \(kernels)",
            String(
                format: "micro-kernel throughput, one core, L1-resident: %.1f GFLOP/s (fastest window), %.0f%% of "
                    + "the %.1f GFLOP/s this core's multiply-adds reached in interleaved windows (fastest window)",
                microKernelGFLOPS, 100 * fractionOfMultiplyAdd, multiplyAddGFLOPS),
        ]
    }

    /// Advice when the build leaves speed on the table.
    public var warnings: [String] {
        guard let advice else { return [] }
        let command = "swift run -c release -Xcc -march=native attention-bench"
        let scale = build == "debug" ? "10-100x" : "3-4x"
        return ["WARNING: \(advice); its numbers are \(scale) too slow. Rebuild with: \(command)"]
    }
}
