// The `linear` suite: linear attention beside the blockwise softmax kernel, H = 8, d = 64.

import AttentionCore
import _AttentionTestSupport

/// Times linear attention (identity map non-causal, unnormalized; elu+1 causal, normalized; each returning a new
/// output and writing into a reused one) over N = 1024..16384
/// (65536 with --full) and the blockwise softmax kernel, causal, up to N = 16384 for the crossover. GFLOP/s for
/// linear attention counts 4 * B * H * N * d_phi * Dv (the two d x d products per token); the causal chunks' extra
/// C x C products are not credited. Each configuration is validated on a small shape against the Float64 reference
/// before timing, and two rows of every timed output are checked again.
public func linearSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let heads = configuration.heads
    let d = configuration.headDimensions?.first ?? 64
    let lengths =
        configuration.sequenceLengths
        ?? (configuration.quick
            ? [1024, 4096] : configuration.full ? [1024, 4096, 16384, 65536] : [1024, 4096, 16384])
    let budget = configuration.quick ? 0.25 : 1.0
    // (name, mask, options, into a reused output): the "-into" cases write into one output tensor that every
    // repetition reuses, so that they are timed without the first-write page faults of a new result.
    let variants: [(String, String, LinearAttentionOptions, Bool)] = [
        ("linear-id", "none", LinearAttentionOptions(featureMap: .identity, normalize: false), false),
        ("linear-id-into", "none", LinearAttentionOptions(featureMap: .identity, normalize: false), true),
        ("linear-elu", "causal", LinearAttentionOptions(featureMap: .eluPlusOne, mask: .causal), false),
        ("linear-elu-into", "causal", LinearAttentionOptions(featureMap: .eluPlusOne, mask: .causal), true),
    ]
    for (name, _, options, reuseOutput) in variants {
        let small = try attentionInputs(queryHeads: 2, queryLength: 67, keyLength: 67, headDimension: d, seed: 2024)
        var output = try Tensor(shape: [1, 2, 67, d], repeating: .nan)
        if reuseOutput {
            try linearAttention(
                queries: small.queries, keys: small.keys, values: small.values, options: options, into: &output)
        } else {
            output = try linearAttention(
                queries: small.queries, keys: small.keys, values: small.values, options: options)
        }
        let check = checkLinearOutput(
            output, queries: small.queries, keys: small.keys, values: small.values, options: options)
        guard check.passes else { throw ValidationFailure(description: "\(name) failed validation: \(check)") }
    }
    var records: [BenchmarkRecord] = []
    for threads in threadCounts(configuration, allThreads: allThreads) {
        for n in lengths {
            let inputs = try attentionInputs(queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 7)
            for (name, maskName, baseOptions, reuseOutput) in variants
            where configuration.kernels?.contains(name) ?? true {
                var options = baseOptions
                options.threads = threads
                var last: Tensor? = nil
                var reused = try Tensor(zeros: reuseOutput ? [1, heads, n, d] : [0])
                let timing = try measureTimes(minimumRepetitions: configuration.minimumRepetitions, budget: budget) {
                    if reuseOutput {
                        try linearAttention(
                            queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options,
                            into: &reused)
                    } else {
                        last = try linearAttention(
                            queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
                    }
                }
                if reuseOutput { last = reused }
                var worst = 0.0
                for (head, row) in [(0, n - 1), (heads - 1, n / 2)] {
                    // Row `row` alone: non-causal over the keys it sees (all, or 0...row when causal).
                    let visible = options.isCausal ? 0..<(row + 1) : 0..<n
                    var single = options
                    single.mask = .none
                    let q = try Tensor(shape: [1, 1, 1, d]) { i in inputs.queries[0, head, row, i[3]] }
                    let k = try Tensor(shape: [1, 1, visible.count, d]) { i in inputs.keys[0, head, i[2], i[3]] }
                    let v = try Tensor(shape: [1, 1, visible.count, d]) { i in inputs.values[0, head, i[2], i[3]] }
                    let reference = referenceLinearAttention(
                        Double.self, queries: q, keys: k, values: v, options: single)
                    let start = last!.offset(of: [0, head, row, 0])
                    worst = Swift.max(worst, maxAbsoluteError(Array(last!.scalars[start..<(start + d)]), reference))
                }
                let tiling = LinearTiling(chunk: Swift.min(LinearTiling.defaultChunk(causal: options.isCausal), n))
                let workers = Parallel.workerCount(items: heads, threads: threads)
                records.append(
                    BenchmarkRecord(
                        suite: "linear", kernel: name, batch: 1, queryHeads: heads, keyValueHeads: heads,
                        queryLength: n,
                        keyLength: n, headDimension: d, mask: maskName, threads: threads, medianSeconds: timing.median,
                        minSeconds: timing.minimum, maxSeconds: timing.maximum,
                        gflops: 4 * Double(heads * n * d * d) / timing.median / 1e9,
                        workspaceBytes: workers * tiling.scratchFloats(featureDimension: d, inputDimension: d) * 4,
                        maxAbsError: worst))
            }
            if n <= 16384 && (configuration.kernels?.contains("blockwise") ?? true) {
                let c = BenchmarkCase(
                    suite: "linear", kernelName: "blockwise", kernel: .blockwise(), maskName: "causal", mask: .causal,
                    queryHeads: heads, keyValueHeads: heads, queryLength: n, keyLength: n, headDimension: d,
                    threads: threads)
                if case .measured(let record) = try run(
                    c, minimumRepetitions: configuration.minimumRepetitions, budget: budget)
                {
                    records.append(record)
                }
            }
        }
    }
    return records
}
