// The `sparse` suite: block-sparse attention at several densities, per builder, beside the dense blockwise kernel.

import AttentionCore
import _AttentionTestSupport

/// N = 16384 (4096 with --quick; --sizes overrides), H = 8, d = 64, blocks of 64, non-causal, one thread unless
/// --threads says otherwise. For each builder (local, bigBird, strided, topK) the parameters are picked for about 5,
/// 10, 25 and 50% of the blocks; the record's mask column shows the layout's actual density. GFLOP/s count only the
/// listed blocks' work (4 * H * d * pairs in listed blocks). The topK rows time the attention call; a separate
/// `topk-build` row times building the layout from the queries and keys. The dense blockwise kernel runs once per N
/// for comparison. Before timing, every builder is validated on a small shape against the Float64 reference with
/// its layout's element mask (a mismatch aborts the run); two rows of every timed output are checked again.
public func sparseSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let heads = configuration.heads
    let d = configuration.headDimensions?.first ?? 64
    let block = 64
    let budget = configuration.quick ? 0.25 : 1.0
    // Gate: every builder's layout, on a small shape, must match the reference with its element mask.
    let small = try attentionInputs(queryHeads: 2, queryLength: 100, keyLength: 100, headDimension: d, seed: 2024)
    let gates: [(String, BlockSparseLayout)] = [
        ("sparse-local", try .local(length: 100, blockSize: 16, windowBlocks: 1)),
        (
            "sparse-bigbird",
            try .bigBird(length: 100, blockSize: 16, windowBlocks: 1, globalBlocks: [0], random: 1, seed: 1)
        ),
        ("sparse-strided", try .strided(length: 100, blockSize: 16, stride: 3, offsets: [0, 1])),
        ("sparse-topk", try .topK(queries: small.queries, keys: small.keys, blockSize: 16, keyBlocksPerQuery: 2)),
    ]
    for (name, layout) in gates {
        let output = try blockSparseAttention(
            queries: small.queries, keys: small.keys, values: small.values, layout: layout)
        var options = AttentionOptions()
        options.headMasks = (0..<2).map { elementMask(layout, head: $0) }
        let check = checkOutput(
            output, queries: small.queries, keys: small.keys, values: small.values, options: options)
        guard check.passes else { throw ValidationFailure(description: "\(name) failed validation: \(check)") }
    }
    var records: [BenchmarkRecord] = []
    for n in configuration.sequenceLengths ?? (configuration.quick ? [4096] : [16384]) {
        let blocks = (n + block - 1) / block
        let inputs = try attentionInputs(queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 7)
        for threads in configuration.threads ?? [1] {
            func record(
                _ name: String, _ layout: BlockSparseLayout?, _ timing: TimingSummary, output: AttentionResult?
            ) -> BenchmarkRecord {
                let density = layout?.density ?? 1
                var worst = 0.0
                if let output = output?.output {
                    for (head, row) in [(0, n - 1), (heads - 1, n / 3)] {
                        var options = AttentionOptions()
                        if let layout {
                            options.headMasks = (0..<heads).map { _ in elementMask(layout, head: head) }
                        }
                        let reference = referenceRow(
                            Double.self, batch: 0, head: head, query: row, queries: inputs.queries, keys: inputs.keys,
                            values: inputs.values, mask: .none, options: options)
                        let start = output.offset(of: [0, head, row, 0])
                        worst = Swift.max(
                            worst, maxAbsoluteError(Array(output.scalars[start..<(start + d)]), reference.output))
                    }
                }
                return BenchmarkRecord(
                    suite: "sparse", kernel: name, batch: 1, queryHeads: heads, keyValueHeads: heads, queryLength: n,
                    keyLength: n, headDimension: d, mask: String(format: "%.1f%%", density * 100), threads: threads,
                    medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                    // A build row does no attention work: no GFLOP/s.
                    gflops: output == nil
                        ? 0 : 4 * Double(heads) * Double(n) * Double(n) * density * Double(d) / timing.median / 1e9,
                    workspaceBytes: output?.workspaceBytes ?? 0, maxAbsError: worst)
            }
            let options = AttentionOptions(threads: threads)
            func timeLayout(_ name: String, _ layout: BlockSparseLayout) throws {
                var last: AttentionResult? = nil
                let timing = try measureTimes(minimumRepetitions: configuration.minimumRepetitions, budget: budget) {
                    last = try partialBlockSparseAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: layout,
                        options: options)
                }
                records.append(record(name, layout, timing, output: last))
            }
            for fraction in [0.05, 0.10, 0.25, 0.50] {
                let wanted = Swift.max(1, Int((fraction * Double(blocks)).rounded()))
                let kernels = configuration.kernels
                if kernels?.contains("sparse-local") ?? true {
                    try timeLayout(
                        "sparse-local", try .local(length: n, blockSize: block, windowBlocks: (wanted - 1) / 2))
                }
                if kernels?.contains("sparse-bigbird") ?? true {
                    try timeLayout(
                        "sparse-bigbird",
                        try .bigBird(
                            length: n, blockSize: block, windowBlocks: 1, globalBlocks: [0],
                            random: Swift.max(0, wanted - 4), seed: 1))
                }
                if kernels?.contains("sparse-strided") ?? true {
                    try timeLayout(
                        "sparse-strided",
                        try .strided(
                            length: n, blockSize: block, stride: Swift.max(1, blocks / wanted),
                            offsets: Array(0..<heads)))
                }
                if kernels?.contains("sparse-topk") ?? true {
                    var layout: BlockSparseLayout? = nil
                    let build = try measureTimes(minimumRepetitions: configuration.minimumRepetitions, budget: budget) {
                        layout = try .topK(
                            queries: inputs.queries, keys: inputs.keys, blockSize: block, keyBlocksPerQuery: wanted - 1)
                    }
                    try timeLayout("sparse-topk", layout!)
                    records.append(record("topk-build", layout!, build, output: nil))
                }
            }
            if configuration.kernels?.contains("blockwise") ?? true {
                var last: AttentionResult? = nil
                let timing = try measureTimes(minimumRepetitions: 1, maximumRepetitions: 1, budget: 0) {
                    last = try partialAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                        options: AttentionOptions(kernel: .blockwise(), threads: threads))
                }
                records.append(record("blockwise", nil, timing, output: last))
            }
        }
    }
    return records
}

/// The element mask a layout stands for in head `head`, as an independent predicate (not `.blockSparse`, whose
/// spans are the code under test).
private func elementMask(_ layout: BlockSparseLayout, head: Int) -> AttentionMask {
    let single = layout.forHead(head)
    return .custom { q, k in
        single.keyBlocks(queryBlock: q / single.queryBlock).contains(k / single.keyBlock)
    }
}
