import AttentionCore
import Foundation
import XCTest

/// `KernelBuild`: what the kernels were compiled for, what the CPU offers, and the advice derived from both.
final class KernelBuildTests: XCTestCase {
    /// The CPUID reading agrees with the kernel's own view of the CPU in /proc/cpuinfo (Linux x86_64).
    func testCPUFeaturesAgreeWithProcCpuinfo() throws {
        #if os(Linux) && arch(x86_64)
            let info = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
            let flagsLine = try XCTUnwrap(info.split(separator: "\n").first { $0.hasPrefix("flags") })
            let flags = Set(flagsLine.split(separator: ":")[1].split(separator: " ").map(String.init))
            let cpu = KernelBuild.current.cpuFeatures
            XCTAssertEqual(cpu.contains(.avx2), flags.contains("avx2"), "\(cpu)")
            XCTAssertEqual(cpu.contains(.fma), flags.contains("fma"), "\(cpu)")
            XCTAssertEqual(cpu.contains(.avx512f), flags.contains("avx512f"), "\(cpu)")
            XCTAssertEqual(cpu.contains(.f16c), flags.contains("f16c"), "\(cpu)")
            XCTAssertFalse(cpu.contains(.neon))
        #else
            throw XCTSkip("no independent source of CPU features on this platform")
        #endif
    }

    /// A build can only target features the CPU running it has (else it would have crashed on the first kernel),
    /// and fused multiply-add is on exactly when the target has FMA or the trait forces it.
    func testTargetIsWithinTheCPUAndFusedMultiplyAddFollowsIt() {
        let build = KernelBuild.current
        XCTAssertTrue(build.cpuFeatures.isSuperset(of: build.targetFeatures), "\(build)")
        #if FusedMultiplyAdd
            XCTAssertTrue(build.fusedMultiplyAdd)
        #else
            XCTAssertEqual(build.fusedMultiplyAdd, build.targetFeatures.contains(.fma))
        #endif
        XCTAssertTrue(build.description.contains("target \(build.targetFeatures)"))
        XCTAssertTrue(build.description.contains("CPU \(build.cpuFeatures)"))
    }

    /// The advice names the unused features and the fix exactly when the CPU has AVX2, FMA or AVX-512 the build
    /// does not use (or the build is a debug build).
    func testAdviceNamesUnusedFeatures() {
        let build = KernelBuild.current
        let missing = build.unusedCPUFeatures.intersection([.avx2, .fma, .avx512f])
        XCTAssertEqual(build.unusedCPUFeatures, build.cpuFeatures.subtracting(build.targetFeatures))
        XCTAssertEqual(build.advice != nil, !missing.isEmpty || !build.isOptimized, "\(build)")
        if !missing.isEmpty {
            XCTAssertTrue(build.advice?.contains("\(missing)") ?? false)
            XCTAssertTrue(build.advice?.contains("-march=native") ?? false)
        }
        XCTAssertEqual(CPUFeatures([.avx2, .fma]).description, "AVX2 FMA")
        XCTAssertEqual(CPUFeatures().description, "none")
    }
}
