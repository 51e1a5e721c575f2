// The `memory` suite: every case runs once in a fresh child process, which reports how much its peak resident
// memory grew during the call. A child per case keeps one case's allocations (and the allocator's retained pages)
// out of the next case's measurement.

import AttentionCore
import Foundation
import _AttentionTestSupport

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The memory suite's cases: naive and blockwise, causal, H = 8, d = 64, all threads; N = 1024, 4096, 16384
/// (65536 with --full; 1024 and 4096 with --quick), naive as far as its score matrix fits `memorySuiteNaiveBudget()`
/// (the rest are reported as skipped). Then the backward beside the naive backward (`naiveBackwardValues`: P and dP
/// materialized, one thread), on the same lengths: the growth of one gradients call from a forward result computed
/// before the measurement starts (the gradients themselves, 3 x H x N x d floats, count for both). Backward rows
/// report no error (0): the backward suite validates both backward kernels.
public func memorySuite(_ configuration: BenchmarkConfiguration, allThreads: Int) -> [BenchmarkCase] {
    let lengths =
        configuration.sequenceLengths
        ?? (configuration.quick
            ? [1024, 4096] : configuration.full ? [1024, 4096, 16384, 65536] : [1024, 4096, 16384])
    var cases: [BenchmarkCase] = []
    for n in lengths {
        for (name, kernel) in [
            ("naive", AttentionKernel.naive), ("blockwise", .blockwise()), ("naive-backward", .blockwise()),
            ("backward", .blockwise()),
        ]
        where configuration.kernels?.contains(name) ?? true {
            cases.append(
                BenchmarkCase(
                    suite: "memory", kernelName: name, kernel: kernel, maskName: "causal", mask: .causal,
                    queryHeads: configuration.heads, keyValueHeads: configuration.heads, queryLength: n, keyLength: n,
                    headDimension: configuration.headDimensions?.first ?? 64,
                    threads: configuration.threads?.max() ?? allThreads))
        }
    }
    return cases
}

/// The naive kernel's score budget in the memory suite: half the machine's physical memory (the default 4 GiB
/// would stop the comparison at N = 8192 with H = 8).
public func memorySuiteNaiveBudget() -> Int {
    Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE))) / 2
}

/// The child's command line for a memory case (after the executable).
public func memoryChildArguments(_ c: BenchmarkCase) -> [String] {
    [
        "memory-child", c.kernelName, "\(c.queryLength)", "\(c.queryHeads)", "\(c.headDimension)", "\(c.threads)",
        "\(memorySuiteNaiveBudget())",
    ]
}

/// The process's peak resident set so far, in bytes. On Linux this is VmHWM from /proc/self/status, the high-water
/// mark of this process's own address space: getrusage's ru_maxrss survives execve, so a child spawned by a large
/// parent would start with the parent's peak. Elsewhere, getrusage.
public func peakResidentSetBytes() -> Int {
    #if canImport(Glibc)
        if let kilobytes = processStatusKilobytes("VmHWM:") { return kilobytes * 1024 }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024
    #else
        var usage = rusage()
        getrusage(RUSAGE_SELF, &usage)
        return Int(usage.ru_maxrss)  // bytes on Darwin
    #endif
}

/// Runs in the child: builds the case's inputs, records the peak resident set, runs the call once, and returns the
/// record (as a JSON line) with the peak's growth.
public func runMemoryChild(_ arguments: [String]) throws -> String {
    guard arguments.count == 6, let n = Int(arguments[1]), let heads = Int(arguments[2]), let d = Int(arguments[3]),
        let threads = Int(arguments[4]), let naiveBudget = Int(arguments[5])
    else {
        throw UsageError("memory-child expects: KERNEL N HEADS D THREADS NAIVE_BUDGET_BYTES")
    }
    let kernel: AttentionKernel = arguments[0] == "naive" ? .naive : .blockwise()
    let backward = arguments[0].hasSuffix("backward")
    let c = BenchmarkCase(
        suite: "memory", kernelName: arguments[0], kernel: kernel, maskName: "causal", mask: .causal,
        queryHeads: heads, keyValueHeads: heads, queryLength: n, keyLength: n, headDimension: d, threads: threads)
    var options = c.options
    options.naiveMemoryBudget = naiveBudget
    let inputs = try attentionInputs(queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 7)
    // Lock the pages mapped so far (the inputs) into memory: otherwise the kernel's proactive reclaim (DAMON on this
    // project's VMs) can page cold inputs out mid-call, and the peak then no longer shows what the call added. Pages
    // the call maps later are not locked, so thread stacks count only as far as they are used. Without the privilege
    // the child measures anyway and says so on stderr.
    #if canImport(Glibc)
        let locked = mlockall(Int32(MCL_CURRENT)) == 0
    #else
        let locked = false
    #endif
    if !locked { FileHandle.standardError.write(Data("memory-child: mlockall failed; peak RSS may undercount\n".utf8)) }
    // A backward case starts from the forward's result and the output gradient, made before the baseline.
    var result: AttentionResult? = nil
    var outputGradient: Tensor? = nil
    if backward {
        result = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options)
        outputGradient = try Tensor.randomNormal(shape: [1, heads, n, d], seed: 8)
    }
    let before = peakResidentSetBytes()
    var backwardWorkspace = 0
    let clock = ContinuousClock()
    let elapsed = try clock.measure {
        switch arguments[0] {
        case "backward":
            backwardWorkspace =
                try attentionGradients(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, result: result!,
                    outputGradient: outputGradient!, mask: .causal, options: options
                ).workspaceBytes
        case "naive-backward":
            let dV = naiveBackwardValues(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, logSumExp: result!.logSumExp,
                outputGradient: outputGradient!, causal: true)
            guard dV.count == heads * n * d else { throw UsageError("naive backward returned \(dV.count) values") }
            backwardWorkspace = 2 * heads * n * n * MemoryLayout<Float>.size
        default:
            result = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options)
        }
    }
    let growth = peakResidentSetBytes() - before
    let seconds = elapsed.inSeconds
    // The backward's GFLOP/s count 2.5x the forward's multiply-adds; the naive backward runs on one thread; backward
    // rows carry no error (the backward suite validates both backward kernels).
    let flops = attentionFLOPs(
        batch: 1, queryHeads: heads, queryLength: n, keyLength: n, headDimension: d,
        visibleFraction: visibleFraction(of: .causal, queryLength: n, keyLength: n))
    var record = BenchmarkRecord(
        suite: "memory", kernel: c.kernelName, batch: 1, queryHeads: heads, keyValueHeads: heads, queryLength: n,
        keyLength: n, headDimension: d, mask: "causal", threads: arguments[0] == "naive-backward" ? 1 : threads,
        medianSeconds: seconds, minSeconds: seconds, maxSeconds: seconds,
        gflops: (backward ? 2.5 : 1) * flops / seconds / 1e9,
        workspaceBytes: backward ? backwardWorkspace : result!.workspaceBytes,
        maxAbsError: backward
            ? 0
            : sampledError(result!.output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, case: c))
    record.peakResidentBytes = growth
    return record.jsonLine()
}

/// Runs a memory case in a child process of `executable` and returns its record, or the reason it was skipped.
public func runMemoryCase(_ c: BenchmarkCase, executable: String) throws -> BenchmarkOutcome {
    if c.kernelName.hasPrefix("naive") {
        // The naive backward holds two such matrices (P and dP).
        let scores = (c.kernelName == "naive" ? 4 : 8) * c.queryHeads * c.queryLength * c.keyLength
        let budget = memorySuiteNaiveBudget()
        if scores > budget {
            return .skipped(
                reason: "\(c.kernelName) N=\(c.queryLength): its score matrices need \(formatBytes(scores)), over the "
                    + "\(formatBytes(budget)) budget")
        }
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = memoryChildArguments(c)
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0,
        let line = String(data: data, encoding: .utf8)?.split(separator: "\n").last,
        let record = try? JSONDecoder().decode(BenchmarkRecord.self, from: Data(line.utf8))
    else {
        throw UsageError(
            "memory child for \(c.kernelName) N=\(c.queryLength) failed (status \(process.terminationStatus))")
    }
    return .measured(record)
}

/// This executable's path, for spawning children.
public func currentExecutablePath() -> String {
    #if canImport(Glibc)
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if length > 0 { return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    #endif
    return CommandLine.arguments[0]
}
