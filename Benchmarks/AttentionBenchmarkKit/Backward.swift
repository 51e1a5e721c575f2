// The `backward` suite: attentionGradients (FlashAttention-2's backward) beside the forward it follows and a naive
// backward that materializes the probabilities and their gradient (two Nq x Nk matrices per head).

import AttentionCore
import Foundation
import _AttentionTestSupport

/// H = 8 (--heads), batch 1, d = 64 and 128 (--head-dim), N = 1024..8192 (1024, 2048 with --quick; --sizes),
/// no mask and causal, threads 1 and all. `backward` times one `attentionGradients` call from a saved forward
/// result; `forward` the `partialAttention` call that produced it; `naive-backward` the textbook backward
/// with P and dP materialized, plain loops on one thread (N <= 2048 only: at 8192 its two matrices take 4 GiB; left
/// out when --kernels does not name it). GFLOP/s count 2.5x the
/// forward's visible multiply-adds for both backward kernels (FlashAttention-2's convention: five products per
/// tile instead of two). Validated before timing: a small shape of each mask against the Float64 reference
/// backward, and every timed backward's dV against the naive one where both ran (N <= 2048, one thread).
public func backwardSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    for mask in [AttentionMask.none, .causal] {
        let x = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 70, keyLength: 90, headDimension: 24, seed: 3)
        let dO = try Tensor.randomNormal(shape: [1, 4, 70, 24], seed: 4)
        for (name, check) in try checkGradients(
            queries: x.queries, keys: x.keys, values: x.values, outputGradient: dO, mask: mask)
        where !check.passes {
            throw ValidationFailure(description: "backward \(name) failed validation: \(check)")
        }
    }
    let lengths = configuration.sequenceLengths ?? (configuration.quick ? [1024, 2048] : [1024, 2048, 4096, 8192])
    let heads = configuration.heads
    let budget = configuration.quick ? 0.5 : 2.0
    var records: [BenchmarkRecord] = []
    for d in configuration.headDimensions ?? [64, 128] {
        for threads in threadCounts(configuration, allThreads: allThreads) {
            for (maskName, mask) in [("none", AttentionMask.none), ("causal", .causal)] {
                for n in lengths {
                    let x = try attentionInputs(
                        queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 9)
                    let dO = try Tensor.randomNormal(shape: [1, heads, n, d], seed: 10)
                    let options = AttentionOptions(threads: threads)
                    var forward = try partialAttention(
                        queries: x.queries, keys: x.keys, values: x.values, mask: mask, options: options)
                    var gradients: AttentionGradients? = nil
                    let forwardTime = try measureTimes(
                        minimumRepetitions: configuration.minimumRepetitions, budget: budget
                    ) {
                        forward = try partialAttention(
                            queries: x.queries, keys: x.keys, values: x.values, mask: mask, options: options)
                    }
                    let backwardTime = try measureTimes(
                        minimumRepetitions: configuration.minimumRepetitions, budget: budget
                    ) {
                        gradients = try attentionGradients(
                            queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: dO,
                            mask: mask, options: options)
                    }
                    let flops = attentionFLOPs(
                        batch: 1, queryHeads: heads, queryLength: n, keyLength: n, headDimension: d,
                        visibleFraction: visibleFraction(of: mask, queryLength: n, keyLength: n))
                    func record(_ kernel: String, _ timing: TimingSummary, flops: Double, workspace: Int, error: Double)
                        -> BenchmarkRecord
                    {
                        backwardRecord(
                            kernel, timing, heads: heads, keyValueHeads: heads, length: n, headDimension: d,
                            mask: maskName, threads: threads, flops: flops, workspace: workspace, error: error)
                    }
                    var error = 0.0
                    var naiveRecord: BenchmarkRecord?
                    if n <= 2048 && threads == 1 && configuration.kernels?.contains("naive-backward") ?? true {
                        var naive: [Float] = []
                        let naiveTime = measureTimes(minimumRepetitions: 1, budget: budget / 2) {
                            naive = naiveBackwardValues(
                                queries: x.queries, keys: x.keys, values: x.values, logSumExp: forward.logSumExp,
                                outputGradient: dO, causal: maskName == "causal")
                        }
                        error = maxAbsoluteError(gradients!.values.scalars, naive)
                        guard error < 1e-3 else {
                            throw ValidationFailure(description: "backward dV differs from the naive one by \(error)")
                        }
                        naiveRecord = record(
                            "naive-backward", naiveTime, flops: 2.5 * flops, workspace: 2 * heads * n * n * 4, error: 0)
                    }
                    records.append(
                        record("forward", forwardTime, flops: flops, workspace: forward.workspaceBytes, error: 0))
                    records.append(
                        record(
                            "backward", backwardTime, flops: 2.5 * flops, workspace: gradients!.workspaceBytes,
                            error: error))
                    if let naiveRecord { records.append(naiveRecord) }
                }
            }
        }
    }
    // The cost of the ownership choice (one work item per batch entry and key/value head): multi-query attention
    // (H query heads, one key/value head) has a single item, so a second thread has nothing to do.
    if let n = lengths.last, let d = (configuration.headDimensions ?? [64, 128]).first {
        let x = try attentionInputs(
            queryHeads: heads, keyValueHeads: 1, queryLength: n, keyLength: n, headDimension: d, seed: 11)
        let dO = try Tensor.randomNormal(shape: [1, heads, n, d], seed: 12)
        let forward = try partialAttention(queries: x.queries, keys: x.keys, values: x.values, mask: .causal)
        let flops = attentionFLOPs(
            batch: 1, queryHeads: heads, queryLength: n, keyLength: n, headDimension: d,
            visibleFraction: visibleFraction(of: .causal, queryLength: n, keyLength: n))
        for threads in threadCounts(configuration, allThreads: allThreads) {
            let options = AttentionOptions(threads: threads)
            var workspace = 0
            let timing = try measureTimes(minimumRepetitions: configuration.minimumRepetitions, budget: budget) {
                workspace =
                    try attentionGradients(
                        queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: dO,
                        mask: .causal, options: options
                    ).workspaceBytes
            }
            records.append(
                backwardRecord(
                    "backward", timing, heads: heads, keyValueHeads: 1, length: n, headDimension: d, mask: "causal",
                    threads: threads, flops: 2.5 * flops, workspace: workspace, error: 0))
        }
    }
    // Linear attention's backward (elu + 1, normalized, causal and not) beside its forward, d = 64 (or the first
    // --head-dim), one and all threads; GFLOP/s not reported (the recurrent passes' work is not the forward's).
    if let n = lengths.last, configuration.kernels?.contains("linear-backward") ?? true {
        let d = (configuration.headDimensions ?? [64]).first!
        let x = try attentionInputs(queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 13)
        let dO = try Tensor.randomNormal(shape: [1, heads, n, d], seed: 14)
        for threads in threadCounts(configuration, allThreads: allThreads) {
            for causal in [false, true] {
                let options = LinearAttentionOptions(
                    featureMap: .eluPlusOne, mask: causal ? .causal : .none, threads: threads)
                let timings = try alternateTimes(
                    minimumRepetitions: configuration.minimumRepetitions, budget: budget,
                    [
                        {
                            _ = try linearAttention(
                                queries: x.queries, keys: x.keys, values: x.values, options: options)
                        },
                        {
                            _ = try linearAttentionGradients(
                                queries: x.queries, keys: x.keys, values: x.values, outputGradient: dO, options: options
                            )
                        },
                    ])
                for (kernel, timing) in zip(["linear-forward", "linear-backward"], timings) {
                    records.append(
                        backwardRecord(
                            kernel, timing, heads: heads, keyValueHeads: heads, length: n, headDimension: d,
                            mask: causal ? "causal" : "none", threads: threads, flops: 0, workspace: 0, error: 0))
                }
            }
        }
    }
    return records
}

/// A backward-suite record of one timed kernel (batch 1, N queries and keys); `flops` 0 reports no GFLOP/s.
private func backwardRecord(
    _ kernel: String, _ timing: TimingSummary, heads: Int, keyValueHeads: Int, length n: Int, headDimension d: Int,
    mask: String, threads: Int, flops: Double, workspace: Int, error: Double
) -> BenchmarkRecord {
    BenchmarkRecord(
        suite: "backward", kernel: kernel, batch: 1, queryHeads: heads, keyValueHeads: keyValueHeads, queryLength: n,
        keyLength: n, headDimension: d, mask: mask, threads: threads, medianSeconds: timing.median,
        minSeconds: timing.minimum, maxSeconds: timing.maximum, gflops: flops / timing.median / 1e9,
        workspaceBytes: workspace, maxAbsError: error)
}

/// One line per backward record: its time over the forward's, and over the naive backward's where that ran.
public func backwardSummaries(_ records: [BenchmarkRecord]) -> [String] {
    let mqa = records.filter { $0.suite == "backward" && $0.keyValueHeads == 1 && $0.queryHeads > 1 }
    var lines: [String] = []
    if let one = mqa.first(where: { $0.threads == 1 }), let all = mqa.max(by: { $0.threads < $1.threads }),
        all.threads > 1
    {
        lines.append(
            String(
                format:
                    "backward MQA (%d query heads, 1 key/value head), d %d N %d causal: %d threads %.2fx the speed of 1 (one work item per batch entry and key/value head)",
                one.queryHeads, one.headDimension, one.queryLength, all.threads, one.medianSeconds / all.medianSeconds))
    }
    for backward in records where backward.suite == "backward" && backward.kernel == "linear-backward" {
        guard
            let forward = records.first(where: {
                $0.kernel == "linear-forward" && $0.mask == backward.mask && $0.threads == backward.threads
            })
        else { continue }
        lines.append(
            String(
                format: "linear backward (elu+1), d %d N %d %@, %d thread%@: %.1f ms, %.2fx the forward's %.1f ms",
                backward.headDimension, backward.queryLength, backward.mask, backward.threads,
                backward.threads == 1 ? "" : "s", backward.medianSeconds * 1e3,
                backward.medianSeconds / forward.medianSeconds, forward.medianSeconds * 1e3))
    }
    return lines
        + records.filter {
            $0.suite == "backward" && $0.kernel == "backward" && $0.keyValueHeads == $0.queryHeads
        }.compactMap { record in
            func same(_ kernel: String) -> BenchmarkRecord? {
                records.first {
                    $0.suite == "backward" && $0.kernel == kernel && $0.headDimension == record.headDimension
                        && $0.keyValueHeads == record.keyValueHeads && $0.queryLength == record.queryLength
                        && $0.mask == record.mask && $0.threads == record.threads
                }
            }
            guard let forward = same("forward") else { return nil }
            var line =
                "backward: d \(record.headDimension) N \(record.queryLength) \(record.mask), \(record.threads) thread"
                + (record.threads == 1 ? "" : "s")
                + String(
                    format: ": %.1f GFLOP/s (2.5x convention), %.2fx the forward's time", record.gflops,
                    record.medianSeconds / forward.medianSeconds)
            if let naive = same("naive-backward") {
                line += String(format: ", %.1fx faster than naive", naive.medianSeconds / record.medianSeconds)
                line += ", workspace " + formatBytes(record.workspaceBytes) + " vs " + formatBytes(naive.workspaceBytes)
            }
            return line
        }
}

/// dV of the textbook backward with P materialized ([H, N, N] probabilities; dP alike), for [1, H, N, d] inputs:
/// the naive baseline and the timed kernel's check. Returns dV only (its other products are computed and
/// discarded the same way a naive implementation computes them, so the time counts all five).
func naiveBackwardValues(
    queries: Tensor, keys: Tensor, values: Tensor, logSumExp: Tensor, outputGradient: Tensor, causal: Bool
) -> [Float] {
    let (h, n, d) = (queries.shape[1], queries.shape[2], queries.shape[3])
    let scale = 1 / Float(d).squareRoot()
    var p = [Float](repeating: 0, count: h * n * n)
    var dS = [Float](repeating: 0, count: h * n * n)
    var dQ = [Float](repeating: 0, count: h * n * d)
    var dK = [Float](repeating: 0, count: h * n * d)
    var dV = [Float](repeating: 0, count: h * n * d)
    let (q, k, v, dO, lse) = (
        queries.scalars, keys.scalars, values.scalars, outputGradient.scalars, logSumExp.scalars
    )
    func dot(_ a: [Float], _ i: Int, _ b: [Float], _ j: Int) -> Float {
        var sum: Float = 0
        for c in 0..<d { sum += a[i + c] * b[j + c] }
        return sum
    }
    for head in 0..<h {
        let base = head * n
        for i in 0..<n {
            var rowD: Float = 0
            for j in 0..<n where !causal || j <= i {
                p[(base + i) * n + j] = Foundation.exp(
                    scale * dot(q, (base + i) * d, k, (base + j) * d) - lse[base + i])
            }
            // D = sum_j P_ij dP_ij with dP = dO V^T.
            for j in 0..<n where !causal || j <= i {
                let dP = dot(dO, (base + i) * d, v, (base + j) * d)
                dS[(base + i) * n + j] = dP
                rowD += p[(base + i) * n + j] * dP
            }
            for j in 0..<n where !causal || j <= i {
                let index = (base + i) * n + j
                dS[index] = p[index] * (dS[index] - rowD) * scale
            }
        }
        for i in 0..<n {
            for j in 0..<n where !causal || j <= i {
                let (pij, sij) = (p[(base + i) * n + j], dS[(base + i) * n + j])
                for c in 0..<d {
                    dV[(base + j) * d + c] += pij * dO[(base + i) * d + c]
                    dQ[(base + i) * d + c] += sij * k[(base + j) * d + c]
                    dK[(base + j) * d + c] += sij * q[(base + i) * d + c]
                }
            }
        }
    }
    _ = (dQ, dK)
    return dV
}
