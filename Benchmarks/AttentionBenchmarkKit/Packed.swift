// The `packed` suite: a packed variable-length batch in one `packedAttention` call beside the same sequences run
// one by one.

import AttentionCore
import Foundation
import _AttentionTestSupport

/// 16 sequences from 64 to 4096 tokens (32 to 2048 with --quick), lengths growing geometrically, H = 8 (--heads),
/// d = 64 (first of --head-dim), self-attention with no mask and causal, one thread and all. `packed` times one
/// `packedAttention` over the token-major [T, H, d] tensors; `per-sequence` the sixteen `attention` calls over
/// each sequence alone in the kernels' own [1, H, n, d] layout, `per-sequence-bnhd` the same calls on [1, n, H, d]
/// slices of the packed tensors (`layout: .bnhd`, what the packed call reads), and `packed-into` the packed call
/// writing into a reused output (its new [T, H, d] output is too large for the allocator to recycle, unlike the
/// sixteen small ones), timed in turn call by call. GFLOP/s
/// count the real work of both (sum over sequences of 4 * H * n^2 * d, halved for causal). The packed result is
/// validated on a small shape against the Float64 reference before timing, and sampled rows of the timed output
/// against it too. Causal, the backward as well: `packed-backward` (one `packedAttentionGradients` call) and
/// `per-sequence-backward` (sixteen `attentionGradients` calls; workspace: the largest call's), timed in turn,
/// GFLOP/s by the backward's 2.5x convention; gated on the small shape against the Float64 reference backward of
/// each sequence alone, the timed call's shortest sequence checked against it too, and the per-sequence call of that
/// sequence against the packed call's rows, bit for bit.
public func packedSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let (heads, d) = (configuration.heads, configuration.headDimensions?.first ?? 64)
    let budget = configuration.quick ? 0.5 : 2.0
    // Gate: a small packed batch with an empty sequence and a cached prefix, against the reference.
    let gate = try PackedSequences(queryLengths: [5, 0, 33, 1], keyLengths: [5, 4, 70, 19])
    let gq = try Tensor.randomNormal(shape: [39, 4, d], seed: 11)
    let gk = try Tensor.randomNormal(shape: [98, 2, d], seed: 12)
    let gv = try Tensor.randomNormal(shape: [98, 2, d], seed: 13)
    for mask in [AttentionMask.none, .causal] {
        let result = try packedAttention(queries: gq, keys: gk, values: gv, sequences: gate, mask: mask)
        let failures = packedReferenceFailures(
            result, queries: gq, keys: gk, values: gv, sequences: gate, mask: mask, options: AttentionOptions())
        guard failures.isEmpty else {
            throw ValidationFailure(description: "packed attention with \(mask) failed validation: \(failures)")
        }
    }
    try validatePackedBackward(queries: gq, keys: gk, values: gv, sequences: gate)
    let longest = configuration.sequenceLengths?.first ?? (configuration.quick ? 2048 : 4096)
    let shortest = Swift.max(1, longest / 64)
    let lengths = (0..<16).map { k in
        Int((Double(shortest) * pow(2, 6 * Double(k) / 15)).rounded())
    }
    let sequences = try PackedSequences(lengths: lengths)
    let total = sequences.queryOffsets[16]
    let queries = try Tensor.randomNormal(shape: [total, heads, d], seed: 21)
    let keys = try Tensor.randomNormal(shape: [total, heads, d], seed: 22)
    let values = try Tensor.randomNormal(shape: [total, heads, d], seed: 23)
    let alone = (0..<16).map { b in
        [queries, keys, values].map { headMajor($0, sequences.queryRange(b)) }
    }
    // The same sequences as [1, n, H, d] slices of the packed tensors: the layout's cost without the packing.
    let aloneInPlace = (0..<16).map { b in
        [queries, keys, values].map { packed in
            let (range, row) = (sequences.queryRange(b), heads * d)
            return try! Tensor(
                shape: [1, range.count, heads, d],
                scalars: Array(packed.scalars[(range.lowerBound * row)..<(range.upperBound * row)]))
        }
    }
    var records: [BenchmarkRecord] = []
    for (maskName, mask) in [("none", AttentionMask.none), ("causal", .causal)] {
        for threads in threadCounts(configuration, allThreads: allThreads) {
            let options = AttentionOptions(threads: threads)
            var last: AttentionResult? = nil
            func runPacked() throws {
                last = try packedAttention(
                    queries: queries, keys: keys, values: values, sequences: sequences, mask: mask, options: options)
            }
            func runEach() throws {
                for sequence in alone {
                    _ = try attention(
                        queries: sequence[0], keys: sequence[1], values: sequence[2], mask: mask, options: options)
                }
            }
            var tokenMajor = options
            tokenMajor.layout = .bnhd
            func runEachInPlace() throws {
                for sequence in aloneInPlace {
                    _ = try attention(
                        queries: sequence[0], keys: sequence[1], values: sequence[2], mask: mask, options: tokenMajor)
                }
            }
            var reused = try Tensor(zeros: [total, heads, d])
            func runPackedInto() throws {
                try packedAttention(
                    queries: queries, keys: keys, values: values, sequences: sequences, mask: mask, options: options,
                    into: &reused)
            }
            let timings = try alternateTimes(
                minimumRepetitions: configuration.minimumRepetitions, budget: budget,
                [runPacked, runEach, runEachInPlace, runPackedInto], baseline: 1)
            guard let result = last else { continue }
            var worst = 0.0
            for (b, head, query) in [(0, 0, lengths[0] - 1), (9, heads - 1, lengths[9] / 2), (15, heads / 2, 7)] {
                let reference = referenceRow(
                    Double.self, batch: 0, head: head, query: query, queries: alone[b][0], keys: alone[b][1],
                    values: alone[b][2], mask: mask, options: options)
                let start = ((sequences.queryOffsets[b] + query) * heads + head) * d
                for output in [result.output, reused] {
                    worst = Swift.max(
                        worst, maxAbsoluteError(Array(output.scalars[start..<(start + d)]), reference.output))
                }
            }
            let flops = selfAttentionFLOPs(lengths: lengths, heads: heads, headDimension: d, mask: mask)
            if maskName == "causal" {
                records += try packedBackwardRecords(
                    sequences: sequences, lengths: lengths, longest: longest, queries: queries, keys: keys,
                    values: values, alone: alone, forward: result, options: options, configuration: configuration,
                    budget: budget)
            }
            for (kernel, timing, workspace) in [
                ("packed", timings[0], result.workspaceBytes), ("per-sequence", timings[1], 0),
                ("per-sequence-bnhd", timings[2], 0), ("packed-into", timings[3], result.workspaceBytes),
            ] {
                var record = BenchmarkRecord(
                    suite: "packed", kernel: kernel, batch: 16, queryHeads: heads, keyValueHeads: heads,
                    queryLength: longest, keyLength: longest, headDimension: d, mask: maskName, threads: threads,
                    medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                    gflops: flops / timing.median / 1e9, workspaceBytes: workspace, maxAbsError: worst)
                record.pairedRatio = timing.pairedRatio
                records.append(record)
            }
        }
    }
    return records
}

/// The causal packed backward's gradients against the Float64 reference backward of each sequence alone
/// (`packedGradientChecks`): the failing checks and the largest error.
private func packedBackwardFailures(
    _ gradients: AttentionGradients, queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor,
    sequences: PackedSequences, only: [Int]? = nil
) -> (failures: [String], worst: Double) {
    let checks = packedGradientChecks(
        gradients, queries: queries, keys: keys, values: values, outputGradient: outputGradient,
        sequences: sequences, mask: .causal, options: AttentionOptions(), only: only
    ).values
    return (checks.filter { !$0.passes }.map(\.description), checks.map(\.kernelError).max() ?? 0)
}

/// The gate of the packed backward: causal, on the suite's small packed batch.
private func validatePackedBackward(queries: Tensor, keys: Tensor, values: Tensor, sequences: PackedSequences) throws {
    let forward = try packedAttention(
        queries: queries, keys: keys, values: values, sequences: sequences, mask: .causal)
    let dO = try Tensor.randomNormal(shape: forward.output.shape, seed: 14)
    let gradients = try packedAttentionGradients(
        queries: queries, keys: keys, values: values, sequences: sequences, result: forward, outputGradient: dO,
        mask: .causal)
    let failures = packedBackwardFailures(
        gradients, queries: queries, keys: keys, values: values, outputGradient: dO, sequences: sequences
    ).failures
    guard failures.isEmpty else {
        throw ValidationFailure(description: "packed attention backward failed validation: \(failures)")
    }
}

/// The causal packed backward beside the sixteen per-sequence backward calls, timed in turn.
private func packedBackwardRecords(
    sequences: PackedSequences, lengths: [Int], longest: Int, queries: Tensor, keys: Tensor, values: Tensor,
    alone: [[Tensor]], forward: AttentionResult, options: AttentionOptions, configuration: BenchmarkConfiguration,
    budget: Double
) throws -> [BenchmarkRecord] {
    let (heads, d) = (queries.shape[1], queries.shape[2])
    let dO = try Tensor.randomNormal(shape: forward.output.shape, seed: 24)
    let aloneForward = try alone.map {
        try partialAttention(queries: $0[0], keys: $0[1], values: $0[2], mask: .causal, options: options)
    }
    let aloneGradient = (0..<sequences.count).map { headMajor(dO, sequences.queryRange($0)) }
    var last: AttentionGradients? = nil
    func runPacked() throws {
        last = try packedAttentionGradients(
            queries: queries, keys: keys, values: values, sequences: sequences, result: forward, outputGradient: dO,
            mask: .causal, options: options)
    }
    var (eachWorkspace, shortest): (Int, AttentionGradients?) = (0, nil)
    func runEach() throws {
        for (b, sequence) in alone.enumerated() {
            let gradients = try attentionGradients(
                queries: sequence[0], keys: sequence[1], values: sequence[2], result: aloneForward[b],
                outputGradient: aloneGradient[b], mask: .causal, options: options)
            eachWorkspace = Swift.max(eachWorkspace, gradients.workspaceBytes)
            if b == 0 { shortest = gradients }
        }
    }
    let timings = try alternateTimes(
        minimumRepetitions: configuration.minimumRepetitions, budget: budget, [runPacked, runEach], baseline: 1)
    guard let gradients = last else { return [] }
    // The shortest sequence's gradients against its own reference (the longest would take minutes in Float64).
    let (failures, worst) = packedBackwardFailures(
        gradients, queries: queries, keys: keys, values: values, outputGradient: dO, sequences: sequences,
        only: [0])
    guard failures.isEmpty else {
        throw ValidationFailure(description: "the timed packed backward failed validation: \(failures)")
    }
    // The per-sequence call of that sequence gives the packed call's rows bit for bit (the package's promise).
    let (queryRows, keyRows) = (sequences.queryRange(0), sequences.keyRange(0))
    guard let shortest, bitwise(headMajor(gradients.queries, queryRows)) == bitwise(shortest.queries),
        bitwise(headMajor(gradients.keys, keyRows)) == bitwise(shortest.keys),
        bitwise(headMajor(gradients.values, keyRows)) == bitwise(shortest.values)
    else {
        throw ValidationFailure(description: "the per-sequence backward differs from the packed one's rows")
    }
    let flops = 2.5 * selfAttentionFLOPs(lengths: lengths, heads: heads, headDimension: d, mask: .causal)
    return [
        ("packed-backward", timings[0], gradients.workspaceBytes), ("per-sequence-backward", timings[1], eachWorkspace),
    ].map {
        kernel, timing, workspace in
        var record = BenchmarkRecord(
            suite: "packed", kernel: kernel, batch: 16, queryHeads: heads, keyValueHeads: heads,
            queryLength: longest, keyLength: longest, headDimension: d, mask: "causal",
            threads: options.threads ?? 1, medianSeconds: timing.median, minSeconds: timing.minimum,
            maxSeconds: timing.maximum, gflops: flops / timing.median / 1e9, workspaceBytes: workspace,
            maxAbsError: worst)
        record.pairedRatio = timing.pairedRatio
        return record
    }
}

/// "packed / per-sequence calls" time ratios of a run's packed-suite records, one line per case: medians of the
/// rounds' ratios where the records carry them (`pairedRatio`), else ratios of the medians.
public func packedSummaries(_ records: [BenchmarkRecord]) -> [String] {
    let forward = records.filter { $0.suite == "packed" && $0.kernel == "packed" }.compactMap { p -> String? in
        guard
            let each = records.first(where: {
                $0.suite == "packed" && $0.kernel == "per-sequence" && $0.mask == p.mask && $0.threads == p.threads
            })
        else { return nil }
        let into = records.first(where: {
            $0.suite == "packed" && $0.kernel == "packed-into" && $0.mask == p.mask && $0.threads == p.threads
        })
        let inPlace = records.first(where: {
            $0.suite == "packed" && $0.kernel == "per-sequence-bnhd" && $0.mask == p.mask && $0.threads == p.threads
        })
        return "packed 16 sequences up to \(p.queryLength) tokens, mask \(p.mask), \(p.threads) thread"
            + (p.threads == 1 ? "" : "s")
            + String(format: ": one packed call took %.2fx the time of the sixteen calls", timeRatio(p, to: each))
            + (into.map { String(format: "; into a reused output %.2fx", timeRatio($0, to: each)) } ?? "")
            + (inPlace.map { inPlace in
                String(
                    format: " (%.2fx of the sixteen on [1, n, H, d] slices)",
                    timeRatio(p, to: each) / timeRatio(inPlace, to: each))
            } ?? "")
            + (p.pairedRatio == nil ? "" : ", medians of the per-round ratios")
    }
    let backward = records.filter { $0.suite == "packed" && $0.kernel == "packed-backward" }.compactMap {
        p -> String? in
        guard
            let each = records.first(where: {
                $0.suite == "packed" && $0.kernel == "per-sequence-backward" && $0.threads == p.threads
            })
        else { return nil }
        return "packed backward 16 sequences up to \(p.queryLength) tokens, causal, \(p.threads) thread"
            + (p.threads == 1 ? "" : "s")
            + String(format: ": one packedAttentionGradients call took %.2fx the time", timeRatio(p, to: each))
            + " of the sixteen attentionGradients calls"
            + (p.pairedRatio == nil ? "" : ", median of the per-round ratios")
    }
    return forward + backward
}
