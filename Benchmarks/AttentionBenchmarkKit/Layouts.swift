// The `layouts` suite: the blockwise kernel on [B, N, H, d] tensors (`options.layout = .bnhd`, read in place)
// beside the same data as [B, H, N, d], Float32 tensors and BFloat16 stored tensors.

import AttentionCore
import _AttentionTestSupport

/// The blockwise suite's shapes (N = 512..4096, or --sizes; d = 64 and 128, or --head-dim; H = 8, or --heads; no
/// mask and causal; one thread and all) plus its GQA case (32/8 heads, d = 128, N = 2048, causal), each run on
/// `[1, H, N, d]` tensors (`bhnd`) and on the same values as `[1, N, H, d]` (`bnhd`, output in the same layout),
/// timed in turn call by call; and BFloat16 stored tensors in both layouts (the first head dimension, N 2048 or
/// the longest below it, no mask and causal). Both outputs are checked bitwise equal (the layout must not change a
/// result) and sampled rows against the Float64 reference. A line per storage and thread count gives the time
/// ratios.
public func layoutsSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let lengths = configuration.sequenceLengths ?? (configuration.quick ? [512, 1024, 2048] : [512, 1024, 2048, 4096])
    let budget = configuration.quick ? 0.3 : 1.0
    var shapes: [LayoutShape] = []
    for d in configuration.headDimensions ?? [64, 128] {
        for (maskName, mask) in [("none", AttentionMask.none), ("causal", .causal)] {
            for n in lengths {
                shapes.append(LayoutShape(configuration.heads, configuration.heads, n, d, maskName, mask))
            }
        }
    }
    shapes.append(LayoutShape(32, 8, configuration.quick ? 1024 : 2048, 128, "causal", .causal))
    // BFloat16 stored tensors: the first head dimension at N 2048 (or the longest N below it), no mask and causal.
    let storedShapes =
        lengths.filter { $0 <= 2048 }.max().map { n in
            [("none", AttentionMask.none), ("causal", .causal)].map { name, mask in
                LayoutShape(
                    configuration.heads, configuration.heads, n, configuration.headDimensions?.first ?? 64, name, mask)
            }
        } ?? []
    var records: [BenchmarkRecord] = []
    for threads in threadCounts(configuration, allThreads: allThreads) {
        for (index, shape) in shapes.enumerated() {
            records += try layoutRecords(
                shape, seed: UInt64(900 + index), storage: nil, threads: threads, configuration: configuration,
                budget: budget)
        }
        for (index, shape) in storedShapes.enumerated() {
            records += try layoutRecords(
                shape, seed: UInt64(950 + index), storage: ("bf16", .bfloat16), threads: threads,
                configuration: configuration,
                budget: budget)
        }
    }
    return records
}

/// One layouts-suite case: heads (query, key/value), N, d, mask.
private struct LayoutShape {
    let hq: Int, hkv: Int, n: Int, d: Int, maskName: String, mask: AttentionMask
    init(_ hq: Int, _ hkv: Int, _ n: Int, _ d: Int, _ maskName: String, _ mask: AttentionMask) {
        (self.hq, self.hkv, self.n, self.d, self.maskName, self.mask) = (hq, hkv, n, d, maskName, mask)
    }
}

/// The `bhnd` and `bnhd` records of one case, the two calls timed in turn: over Float32 tensors, or with `storage`
/// over stored tensors of that format (queries, keys and values). Both outputs are checked bitwise equal and
/// sampled rows against the Float64 reference (on the values the format holds, rounded by test support).
private func layoutRecords(
    _ shape: LayoutShape, seed: UInt64, storage: (name: String, format: StorageFormat)?, threads: Int,
    configuration: BenchmarkConfiguration,
    budget: Double
) throws -> [BenchmarkRecord] {
    let inputs = try attentionInputs(
        queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.n, keyLength: shape.n,
        headDimension: shape.d, seed: seed)
    let (q, k, v) = (
        swappingHeadsAndTokens(inputs.queries), swappingHeadsAndTokens(inputs.keys),
        swappingHeadsAndTokens(inputs.values)
    )
    let headMajorOptions = AttentionOptions(kernel: .blockwise(), threads: threads)
    var tokenMajorOptions = headMajorOptions
    tokenMajorOptions.layout = .bnhd
    var outputs: [Tensor?] = [nil, nil]
    let calls: [() throws -> Void]
    if let storage {
        let stored = try [inputs.queries, inputs.keys, inputs.values, q, k, v].map {
            try StoredTensor($0, format: storage.format)
        }
        calls = [
            {
                outputs[0] = try attention(
                    queries: stored[0], keys: stored[1], values: stored[2], mask: shape.mask, options: headMajorOptions)
            },
            {
                outputs[1] = try attention(
                    queries: stored[3], keys: stored[4], values: stored[5], mask: shape.mask,
                    options: tokenMajorOptions)
            },
        ]
    } else {
        calls = [
            {
                outputs[0] = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: shape.mask,
                    options: headMajorOptions)
            },
            {
                outputs[1] = try attention(queries: q, keys: k, values: v, mask: shape.mask, options: tokenMajorOptions)
            },
        ]
    }
    let timings = try alternateTimes(
        minimumRepetitions: configuration.minimumRepetitions, budget: budget, calls, baseline: 0)
    guard let headMajor = outputs[0], let tokenMajorOutput = outputs[1] else { return [] }
    guard swappingHeadsAndTokens(headMajor).scalars == tokenMajorOutput.scalars else {
        throw ValidationFailure(
            description: "layouts: the .bnhd output differs from the .bhnd one at \(shape.n) x \(shape.d)")
    }
    let format = storage?.format ?? .float32
    guard let rq = roundedThrough(format, inputs.queries), let rk = roundedThrough(format, inputs.keys),
        let rv = roundedThrough(format, inputs.values)
    else { return [] }
    var worst = 0.0
    for (head, query) in [(0, shape.n - 1), (shape.hq - 1, shape.n / 2)] {
        let reference = referenceRow(
            Double.self, batch: 0, head: head, query: query, queries: rq, keys: rk, values: rv, mask: shape.mask,
            options: headMajorOptions)
        let start = headMajor.offset(of: [0, head, query, 0])
        worst = Swift.max(
            worst, maxAbsoluteError(Array(headMajor.scalars[start..<(start + shape.d)]), reference.output))
    }
    guard worst < 1e-4 else {
        throw ValidationFailure(description: "layouts: sampled rows differ from the reference by \(worst)")
    }
    let flops = attentionFLOPs(
        batch: 1, queryHeads: shape.hq, queryLength: shape.n, keyLength: shape.n, headDimension: shape.d,
        visibleFraction: visibleFraction(of: shape.mask, queryLength: shape.n, keyLength: shape.n))
    return [("bhnd", timings[0]), ("bnhd", timings[1])].map { kernel, timing in
        var record = BenchmarkRecord(
            suite: "layouts", kernel: kernel, batch: 1, queryHeads: shape.hq, keyValueHeads: shape.hkv,
            queryLength: shape.n, keyLength: shape.n, headDimension: shape.d, mask: shape.maskName, threads: threads,
            medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
            gflops: flops / timing.median / 1e9, workspaceBytes: 0, maxAbsError: worst)
        record.pairedRatio = timing.pairedRatio
        record.storage = storage?.name
        return record
    }
}

/// "[B, N, H, d] / [B, H, N, d]" time ratios of a run's layouts-suite records: one line per thread count with the
/// median, smallest and largest ratio over the shapes, each shape's ratio the median of its rounds' ratios where
/// the records carry it (`pairedRatio`), else the ratio of its medians.
public func layoutSummaries(_ records: [BenchmarkRecord]) -> [String] {
    let tokenMajor = records.filter { $0.suite == "layouts" && $0.kernel == "bnhd" }
    // Keyed by storage ("" for Float32 tensors), then thread count.
    var ratios: [String: [Int: [Double]]] = [:]
    let paired = tokenMajor.allSatisfy { $0.pairedRatio != nil }
    for t in tokenMajor {
        guard
            let h = records.first(where: {
                $0.suite == "layouts" && $0.kernel == "bhnd" && $0.threads == t.threads && $0.mask == t.mask
                    && $0.queryLength == t.queryLength && $0.headDimension == t.headDimension
                    && $0.queryHeads == t.queryHeads && $0.keyValueHeads == t.keyValueHeads
                    && $0.storage == t.storage
            })
        else { continue }
        ratios[t.storage ?? "", default: [:]][t.threads, default: []].append(timeRatio(t, to: h))
    }
    return ratios.keys.sorted().flatMap { storage in
        layoutLines(ratios[storage]!, storage: storage, paired: paired)
    }
}

/// The summary lines of one storage's ratios by thread count.
private func layoutLines(_ ratiosByThreads: [Int: [Double]], storage: String, paired: Bool) -> [String] {
    ratiosByThreads.keys.sorted().map { threads in
        let ratios = ratiosByThreads[threads]!.sorted()
        return "layouts\(storage.isEmpty ? "" : " (\(storage) stored tensors)"), \(threads) thread"
            + "\(threads == 1 ? "" : "s"): [B, N, H, d] took "
            + String(
                format: "%.2fx the time of [B, H, N, d] (median of %d shapes; %.2f-%.2fx)", ratios[ratios.count / 2],
                ratios.count, ratios[0], ratios[ratios.count - 1])
            + (paired ? ", each shape the median of its per-round ratios" : "")
    }
}
