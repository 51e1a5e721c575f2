// The `padding` suite: a padded batch in one call (key and query padding) beside the same sequences run one by one
// at their true lengths.

import AttentionCore
import _AttentionTestSupport

/// B = 8 sequences padded to N = 2048 (1024 with --quick; --sizes overrides), H = 8 (--heads), d = 64 (first of
/// --head-dim), no mask and causal, one thread and all. The true lengths are N/16, 3N/16, ..., 15N/16: on average
/// half of every sequence is padding. `padded-batch` times one call over the [8, H, N, d] tensors with
/// `keyPadding` and `queryPadding` returning a new result; `padded-into` the same call writing into a reused output
/// (`attention(..., into:)`); `per-sequence` times the eight calls over each sequence alone, [1, H, len, d]. The
/// three are timed in turn, call by call, so that the machine's drift hits them alike. The padded batch's new
/// [8, H, N, d] output is too large for the allocator to recycle (fresh pages, faulted in on first write), while the
/// eight outputs of the calls alone are small enough to come back from the heap: `padded-into` is the padded kernel
/// without that first touch. GFLOP/s count the real
/// work of both (the sum over sequences of 4 * H * len^2 * d, halved for causal), so equal GFLOP/s means padding
/// costs nothing. Before timing, padding is validated on a small shape against the Float64 reference, and sampled
/// rows of the timed padded output are checked against it too.
public func paddingSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let (heads, d, batch) = (configuration.heads, configuration.headDimensions?.first ?? 64, 8)
    let budget = configuration.quick ? 0.5 : 2.0
    // Gate: both paddings, every form, on a small shape.
    let small = try attentionInputs(
        batch: 3, queryHeads: 4, keyValueHeads: 2, queryLength: 45, keyLength: 45, headDimension: d, seed: 2024)
    for padding in [
        SequencePadding.lengths([45, 7, 0]), .ranges([3..<45, 0..<20, 10..<10]),
        .realTokens((0..<135).map { $0 % 7 != 3 }),
    ] {
        for mask in [AttentionMask.none, .causal] {
            let checks = try checkAttention(
                queries: small.queries, keys: small.keys, values: small.values, mask: mask,
                options: AttentionOptions(keyPadding: padding, queryPadding: padding))
            guard checks.output.passes, checks.logSumExp.passes else {
                throw ValidationFailure(description: "padding \(padding) with \(mask) failed validation: \(checks)")
            }
        }
    }
    var records: [BenchmarkRecord] = []
    for n in configuration.sequenceLengths ?? (configuration.quick ? [1024] : [2048]) {
        let lengths = (0..<batch).map { Swift.max(1, n * (2 * $0 + 1) / 16) }
        let inputs = try attentionInputs(
            batch: batch, queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 7)
        let alone = lengths.enumerated().map { b, length in
            (0..<3).map { which in
                let tensor = [inputs.queries, inputs.keys, inputs.values][which]
                return try! Tensor(shape: [1, heads, length, d]) { i in tensor[b, i[1], i[2], i[3]] }
            }
        }
        let padding = SequencePadding.lengths(lengths)
        for (maskName, mask) in [("none", AttentionMask.none), ("causal", .causal)] {
            for threads in threadCounts(configuration, allThreads: allThreads) {
                let padded = AttentionOptions(keyPadding: padding, queryPadding: padding, threads: threads)
                let single = AttentionOptions(threads: threads)
                var last: AttentionResult? = nil
                func runPadded() throws {
                    last = try partialAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: padded)
                }
                func runEach() throws {
                    for sequence in alone {
                        _ = try attention(
                            queries: sequence[0], keys: sequence[1], values: sequence[2], mask: mask, options: single)
                    }
                }
                var reused = try Tensor(zeros: inputs.queries.shape)
                func runPaddedInto() throws {
                    try attention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: padded,
                        into: &reused)
                }
                let timings = try alternateTimes(
                    minimumRepetitions: configuration.minimumRepetitions, budget: budget,
                    [runPadded, runEach, runPaddedInto], baseline: 1)
                guard let result = last else { continue }
                var worst = 0.0
                for (b, head, query) in [(0, 0, lengths[0] - 1), (3, heads - 1, lengths[3] / 2), (7, heads / 2, 0)] {
                    let reference = referenceRow(
                        Double.self, batch: b, head: head, query: query, queries: inputs.queries, keys: inputs.keys,
                        values: inputs.values, mask: mask, options: padded)
                    for output in [result.output, reused] {
                        let start = output.offset(of: [b, head, query, 0])
                        worst = Swift.max(
                            worst, maxAbsoluteError(Array(output.scalars[start..<(start + d)]), reference.output))
                    }
                }
                let flops = selfAttentionFLOPs(lengths: lengths, heads: heads, headDimension: d, mask: mask)
                for (kernel, timing, workspace) in [
                    ("padded-batch", timings[0], result.workspaceBytes), ("per-sequence", timings[1], 0),
                    ("padded-into", timings[2], result.workspaceBytes),
                ] {
                    var record = BenchmarkRecord(
                        suite: "padding", kernel: kernel, batch: batch, queryHeads: heads, keyValueHeads: heads,
                        queryLength: n, keyLength: n, headDimension: d, mask: maskName, threads: threads,
                        medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                        gflops: flops / timing.median / 1e9, workspaceBytes: workspace, maxAbsError: worst)
                    record.pairedRatio = timing.pairedRatio
                    records.append(record)
                }
            }
        }
    }
    return records
}

/// The real work of self-attention over sequences of these lengths, each alone: the sum of 4 * H * n^2 * d times
/// the mask's visible fraction.
func selfAttentionFLOPs(lengths: [Int], heads: Int, headDimension d: Int, mask: AttentionMask) -> Double {
    lengths.reduce(0.0) { sum, length in
        sum
            + attentionFLOPs(
                batch: 1, queryHeads: heads, queryLength: length, keyLength: length, headDimension: d,
                visibleFraction: visibleFraction(of: mask, queryLength: length, keyLength: length))
    }
}

/// "padded batch / per-sequence calls" time ratios of a run's padding-suite records, one line per case: the median
/// of the rounds' ratios where the records carry it (`pairedRatio`), else the ratio of the medians.
public func paddingSummaries(_ records: [BenchmarkRecord]) -> [String] {
    let padded = records.filter { $0.suite == "padding" && $0.kernel == "padded-batch" }
    return padded.compactMap { p in
        guard
            let each = records.first(where: {
                $0.suite == "padding" && $0.kernel == "per-sequence" && $0.mask == p.mask && $0.threads == p.threads
                    && $0.queryLength == p.queryLength
            })
        else { return nil }
        let into = records.first(where: {
            $0.suite == "padding" && $0.kernel == "padded-into" && $0.mask == p.mask && $0.threads == p.threads
                && $0.queryLength == p.queryLength
        })
        return "padding N=\(p.queryLength) mask \(p.mask), \(p.threads) thread\(p.threads == 1 ? "" : "s"): the padded "
            + String(format: "batch took %.2fx the time of its sequences run one by one", timeRatio(p, to: each))
            + (into.map { String(format: " (%.2fx into a reused output)", timeRatio($0, to: each)) } ?? "")
            + (p.pairedRatio == nil ? "" : ", medians of the per-round ratios")
    }
}

/// `record`'s time over `baseline`'s: the median of the rounds' ratios when the two were timed in turn with
/// `baseline` as the base (`record.pairedRatio`), else the ratio of their medians.
func timeRatio(_ record: BenchmarkRecord, to baseline: BenchmarkRecord) -> Double {
    record.pairedRatio ?? record.medianSeconds / baseline.medianSeconds
}
