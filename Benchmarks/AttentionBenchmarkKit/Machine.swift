// What the benchmark prints about the machine and the build before any number.

import AttentionCore
import Foundation

/// The CPU, the build and what this binary's micro-kernels reach on one core.
public struct MachineContext: Sendable {
    public var cpu: String
    public var cores: Int
    public var cpuFlags: Set<String>
    public var build: String
    public var fusedMultiplyAdd: Bool
    /// GFLOP/s of the blockwise kernel's micro-kernels on L1-resident data, one thread.
    public var microKernelGFLOPS: Double

    public init(
        cpu: String, cores: Int, cpuFlags: Set<String>, build: String, fusedMultiplyAdd: Bool, microKernelGFLOPS: Double
    ) {
        self.cpu = cpu
        self.cores = cores
        self.cpuFlags = cpuFlags
        self.build = build
        self.fusedMultiplyAdd = fusedMultiplyAdd
        self.microKernelGFLOPS = microKernelGFLOPS
    }

    /// Reads /proc/cpuinfo where it exists and runs the micro-kernel probe for about 0.3 s.
    public static func measure(cores: Int) -> MachineContext {
        var cpu = "unknown CPU"
        var flags: Set<String> = []
        if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            for line in info.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2 else { continue }
                if parts[0] == "model name" && cpu == "unknown CPU" { cpu = parts[1] }
                if parts[0] == "flags" && flags.isEmpty { flags = Set(parts[1].split(separator: " ").map(String.init)) }
            }
        }
        #if DEBUG
            let build = "debug"
        #else
            let build = "release"
        #endif
        #if FusedMultiplyAdd
            let fma = true
        #else
            let fma = false
        #endif
        _ = microKernelThroughput(seconds: 0.05)  // warm up the core's clock
        return MachineContext(
            cpu: cpu, cores: cores, cpuFlags: flags, build: build, fusedMultiplyAdd: fma,
            microKernelGFLOPS: microKernelThroughput(seconds: 0.3))
    }

    /// Lines for the top of the report (the `warnings` go to standard error separately).
    public var summary: [String] {
        [
            "machine: \(cpu), \(cores) processors"
                + (cpuFlags.isEmpty
                    ? ""
                    : "; AVX2 \(cpuFlags.contains("avx2") ? "yes" : "no"), FMA \(cpuFlags.contains("fma") ? "yes" : "no"), AVX-512 \(cpuFlags.contains("avx512f") ? "yes" : "no")"),
            "build: \(build), FusedMultiplyAdd trait \(fusedMultiplyAdd ? "on" : "off")",
            String(format: "micro-kernel throughput, one core, L1-resident: %.1f GFLOP/s", microKernelGFLOPS),
        ]
    }

    /// Advice when the build leaves speed on the table.
    public var warnings: [String] {
        let command = "swift run -c release -Xcc -march=native --traits FusedMultiplyAdd attention-bench"
        var notes: [String] = []
        let vectorCPU = cpuFlags.contains("avx2") && cpuFlags.contains("fma")
        if build == "debug" {
            notes.append("WARNING: debug build; its numbers are 10-100x too slow. Rebuild with: \(command)")
        } else if vectorCPU && microKernelGFLOPS < 30 {
            notes.append(
                "WARNING: this CPU has AVX2 and FMA but the micro-kernels reach only "
                    + String(format: "%.0f", microKernelGFLOPS)
                    + " GFLOP/s: the binary was built for baseline x86_64 (SSE2). Rebuild with: \(command)")
        } else if vectorCPU && !fusedMultiplyAdd {
            notes.append(
                "NOTE: built without the FusedMultiplyAdd trait; with it the kernels run ~1.3-1.6x faster: \(command)")
        }
        return notes
    }
}
