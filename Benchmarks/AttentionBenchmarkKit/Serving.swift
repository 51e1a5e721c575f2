// The `serving` suite: one decode step for 16 sequences of mixed lengths from a paged cache, beside the same tokens
// in 16 contiguous caches, and what the fused rotary embedding costs per step.

import AttentionCore
import Foundation
import SinkTokenAttention
import _AttentionTestSupport

/// 16 sequences of 1024 to 32768 tokens (128 to 4096 with --quick; the longest is the first --seq-len), lengths growing
/// geometrically, H_q = 32, H_kv = 8, d = 128, Float32. `paged-b64` and `paged-b16` time one `PagedKVCache.attention`
/// for all sixteen (blocks of 64 and 16 tokens; the prompts appended in chunks of 512 tokens, round robin, as a
/// server's chunked prefill would, so each chunk's blocks are consecutive in the pool and the chunks of different
/// sequences interleave); `paged-b64-scattered` the same with the prompts appended 64 tokens at a time, so no two
/// neighbouring blocks of a sequence are adjacent (the pool of a server whose sequences all grew token by token), and
/// `paged-b256-scattered` likewise with blocks of 256; `contiguous` the sixteen `KVCache.attention` calls, timed in
/// turn. GB/s = bytes of keys and values of all sixteen sequences / median seconds. `rope-step` times what the fused
/// rotary embedding adds to a decode step (rotating one token's keys and its queries, as `append` and `attention` do)
/// and `decode-4096` one `KVCache.attention` step over 4096 tokens of one sequence. Validated before timing: a small
/// paged batch against the Float64 reference, and the timed paged output against the contiguous one (bitwise for blocks
/// of 64).
public func servingSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let (hq, hkv, d) = (32, 8, 128)
    let budget = configuration.quick ? 0.5 : 2.0
    // Gate: odd block size, chunked prefill queries, against the reference.
    do {
        var gate = try PagedKVCache(blockCount: 40, blockSize: 7, keyValueHeads: 2, headDimension: 16)
        let lengths = [9, 50, 1]
        let keys = try lengths.enumerated().map { try Tensor.randomNormal(shape: [$1, 2, 16], seed: 70 + UInt64($0)) }
        let values = try lengths.enumerated().map {
            try Tensor.randomNormal(shape: [$1, 2, 16], seed: 80 + UInt64($0))
        }
        let ids = try zip(keys, values).map { k, v in
            let id = gate.addSequence()
            try gate.append(keys: headMajor(k, 0..<k.shape[0]), values: headMajor(v, 0..<v.shape[0]), to: id)
            return id
        }
        let counts = [3, 1, 1]
        let queries = try Tensor.randomNormal(shape: [5, 4, 16], seed: 90)
        let result = try gate.attention(queries: queries, sequences: ids, queryCounts: counts)
        let failures = packedReferenceFailures(
            result, queries: queries, keys: try Tensor(shape: [60, 2, 16], scalars: keys.flatMap(\.scalars)),
            values: try Tensor(shape: [60, 2, 16], scalars: values.flatMap(\.scalars)),
            sequences: try PackedSequences(queryLengths: counts, keyLengths: lengths), mask: .causal,
            options: AttentionOptions())
        guard failures.isEmpty else {
            throw ValidationFailure(description: "paged attention failed validation: \(failures)")
        }
    }
    let longest = configuration.sequenceLengths?.first ?? (configuration.quick ? 4096 : 32768)
    let shortest = Swift.max(1, longest / 32)
    let lengths = (0..<16).map { k in Int((Double(shortest) * pow(2, 5 * Double(k) / 15)).rounded()) }
    let total = lengths.reduce(0, +)
    var contiguous: [KVCache] = []
    // (kernel name, block size, tokens per append)
    let pagings = [
        ("paged-b64", 64, 512), ("paged-b16", 16, 512), ("paged-b64-scattered", 64, 64),
        ("paged-b256-scattered", 256, 256),
    ]
    var paged = pagings.map { _, blockSize, _ in
        try! PagedKVCache(
            blockCount: lengths.reduce(0) { $0 + ($1 + blockSize - 1) / blockSize }, blockSize: blockSize,
            keyValueHeads: hkv, headDimension: d)
    }
    let ids = paged.indices.map { p in lengths.map { _ in paged[p].addSequence() } }
    // Prompts go in pieces of 64 tokens; a cache appending 512 at a time takes a sequence's eight pieces in a row.
    var chunks: [[(Tensor, Tensor)]] = []
    for (i, n) in lengths.enumerated() {
        let keys = try Tensor.randomNormal(shape: [1, hkv, n, d], seed: 100 + UInt64(i))
        let values = try Tensor.randomNormal(shape: [1, hkv, n, d], seed: 200 + UInt64(i))
        var cache = try KVCache(keyValueHeads: hkv, headDimension: d, reservingCapacity: n)
        try cache.append(keys: keys, values: values)
        contiguous.append(cache)
        chunks.append(
            stride(from: 0, to: n, by: 64).map { start in
                let range = start..<Swift.min(n, start + 64)
                return (tokens(keys, range), tokens(values, range))
            })
    }
    for (p, (_, _, tokensPerAppend)) in pagings.enumerated() {
        let piecesPerAppend = tokensPerAppend / 64
        for round in stride(from: 0, to: chunks.map(\.count).max() ?? 0, by: piecesPerAppend) {
            for (i, pieces) in chunks.enumerated() {
                for piece in pieces.indices.clamped(to: round..<(round + piecesPerAppend)) {
                    try paged[p].append(keys: pieces[piece].0, values: pieces[piece].1, to: ids[p][i])
                }
            }
        }
    }
    chunks = []
    let queries = try Tensor.randomNormal(shape: [16, hq, d], seed: 300)
    let single = (0..<16).map { i in
        Tensor(
            uncheckedShape: [1, hq, 1, d], scalars: Array(queries.scalars[(i * hq * d)..<((i + 1) * hq * d)]))
    }
    let bytes = Double(total * hkv * d * 2 * 4)
    var records: [BenchmarkRecord] = []
    for threads in threadCounts(configuration, allThreads: allThreads) {
        let options = AttentionOptions(threads: threads)
        var outputs: [[Float]] = paged.map { _ in [] }
        var expected: [Float] = []
        let runs: [() throws -> Void] =
            paged.indices.map { p in
                {
                    outputs[p] = try paged[p].attention(queries: queries, sequences: ids[p], options: options).output
                        .scalars
                }
            } + [
                {
                    expected = []
                    for (cache, q) in zip(contiguous, single) {
                        expected += try cache.attention(queries: q, options: options).scalars
                    }
                }
            ]
        let timings = try alternateTimes(minimumRepetitions: configuration.minimumRepetitions, budget: budget, runs)
        for (p, (kernel, blockSize, _)) in pagings.enumerated() where blockSize % 64 == 0 {
            guard outputs[p] == expected else {
                throw ValidationFailure(description: "\(kernel) differs from the contiguous caches")
            }
        }
        let cases =
            pagings.enumerated().map { p, paging in
                (paging.0, timings[p], paging.1 % 64 == 0 ? 0 : maxAbsoluteError(outputs[p], expected))
            } + [("contiguous", timings[paged.count], 0.0)]
        for (kernel, timing, error) in cases {
            records.append(
                BenchmarkRecord(
                    suite: "serving", kernel: kernel, batch: 16, queryHeads: hq, keyValueHeads: hkv, queryLength: 1,
                    keyLength: longest, headDimension: d, mask: "causal", threads: threads,
                    medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                    gflops: 4 * Double(total * hq * d) / timing.median / 1e9, workspaceBytes: 0, maxAbsError: error,
                    gbPerSecond: bytes / timing.median / 1e9))
        }
    }
    // The fused rotary embedding's share of a decode step at 4096 cached tokens.
    let rope = try RotaryEmbedding(pairing: .halves, base: 500_000)
    let stepKeys = try Tensor.randomNormal(shape: [1, hkv, 1, d], seed: 400)
    let stepQuery = try Tensor.randomNormal(shape: [1, hq, 1, d], seed: 401)
    var cache4096 = try KVCache(keyValueHeads: hkv, headDimension: d, rotary: rope)
    try cache4096.append(
        keys: Tensor.randomNormal(shape: [1, hkv, 4096, d], seed: 402),
        values: Tensor.randomNormal(shape: [1, hkv, 4096, d], seed: 403))
    for threads in threadCounts(configuration, allThreads: allThreads) {
        let options = AttentionOptions(threads: threads)
        let timings = try alternateTimes(
            minimumRepetitions: configuration.minimumRepetitions, budget: budget,
            [
                {
                    _ = try rope.apply(to: stepKeys, positions: [4096])
                    _ = try rope.apply(to: stepQuery, positions: [4096])
                },
                { _ = try cache4096.attention(queries: stepQuery, options: options) },
            ])
        for (kernel, timing) in [("rope-step", timings[0]), ("decode-4096", timings[1])] {
            records.append(
                BenchmarkRecord(
                    suite: "serving", kernel: kernel, batch: 1, queryHeads: hq, keyValueHeads: hkv, queryLength: 1,
                    keyLength: 4096, headDimension: d, mask: "causal", threads: threads,
                    medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum, gflops: 0,
                    workspaceBytes: 0, maxAbsError: 0))
        }
    }
    // StreamingLLM positions (`StreamingKVCache(rotary:)`): one decode step at 2,000 and at 100,000 stream tokens,
    // sinks 4 + window 1020, timed in turn (each step appends its token to its own cache); keys rotated once as
    // they are stored ("streaming-rope") and every held key rotated as it loads (`.whenLoaded`,
    // "streaming-rope-load").
    let streamingLengths = configuration.quick ? [2_000, 20_000] : [2_000, 100_000]
    let streamConfigurations: [(length: Int, timing: StreamingKVCache.RotationTiming)] =
        streamingLengths.map { ($0, .whenStored) } + streamingLengths.map { ($0, .whenLoaded) }
    var streams = try streamConfigurations.map { configuration in
        try StreamingKVCache(
            sinks: SinkTokens(count: 4, window: 1020), keyValueHeads: hkv, headDimension: d, rotary: rope,
            rotationTiming: configuration.timing)
    }
    let chunkKeys = try Tensor.randomNormal(shape: [1, hkv, 2000, d], seed: 404)
    let chunkValues = try Tensor.randomNormal(shape: [1, hkv, 2000, d], seed: 405)
    for (i, configuration) in streamConfigurations.enumerated() {
        for _ in 0..<(configuration.length / 2000) { try streams[i].append(keys: chunkKeys, values: chunkValues) }
    }
    for threads in threadCounts(configuration, allThreads: allThreads) {
        let options = AttentionOptions(threads: threads)
        let timings = try alternateTimes(
            minimumRepetitions: configuration.minimumRepetitions, budget: budget,
            streams.indices.map { i in
                { _ = try streams[i].attend(queries: stepQuery, keys: stepKeys, values: stepKeys, options: options) }
            })
        for (stream, timing) in zip(streamConfigurations, timings) {
            records.append(
                BenchmarkRecord(
                    suite: "serving", kernel: stream.timing == .whenLoaded ? "streaming-rope-load" : "streaming-rope",
                    batch: 1, queryHeads: hq, keyValueHeads: hkv, queryLength: 1, keyLength: stream.length,
                    headDimension: d, mask: "sinks", threads: threads, medianSeconds: timing.median,
                    minSeconds: timing.minimum, maxSeconds: timing.maximum, gflops: 0, workspaceBytes: 0,
                    maxAbsError: 0))
        }
    }
    return records
}

/// "paged / contiguous" GB/s ratios and the rotary share of a decode step, one line per case.
public func servingSummaries(_ records: [BenchmarkRecord]) -> [String] {
    let serving = records.filter { $0.suite == "serving" }
    var lines: [String] = []
    for threads in Set(serving.map(\.threads)).sorted() {
        let of = { (kernel: String) in serving.first { $0.kernel == kernel && $0.threads == threads } }
        if let contiguous = of("contiguous"), let c = contiguous.gbPerSecond {
            for kernel in ["paged-b64", "paged-b16", "paged-b64-scattered", "paged-b256-scattered"] {
                guard let paged = of(kernel), let p = paged.gbPerSecond else { continue }
                lines.append(
                    String(
                        format:
                            "serving %@, 16 sequences up to %d tokens, %d thread%@: %.1f GB/s, %.2fx the contiguous caches' %.1f GB/s",
                        kernel, paged.keyLength, threads, threads == 1 ? "" : "s", p, p / c, c))
            }
        }
        for kernel in ["streaming-rope", "streaming-rope-load"] {
            let streaming = serving.filter { $0.kernel == kernel && $0.threads == threads }
            if let short = streaming.min(by: { $0.keyLength < $1.keyLength }),
                let long = streaming.max(by: { $0.keyLength < $1.keyLength }), long.keyLength > short.keyLength
            {
                lines.append(
                    String(
                        format:
                            "serving %@, %d thread%@: a step at %d tokens took %.2fx the time of one at %d (%.0f vs %.0f us)",
                        kernel, threads, threads == 1 ? "" : "s", long.keyLength,
                        long.medianSeconds / short.medianSeconds,
                        short.keyLength, long.medianSeconds * 1e6, short.medianSeconds * 1e6))
            }
        }
        let stored = serving.filter { $0.kernel == "streaming-rope" && $0.threads == threads }
        for load in serving where load.kernel == "streaming-rope-load" && load.threads == threads {
            guard let same = stored.first(where: { $0.keyLength == load.keyLength }) else { continue }
            lines.append(
                String(
                    format:
                        "serving streaming-rope-load at %d tokens, %d thread%@: %.2fx the step that rotates keys once at store (%.0f vs %.0f us)",
                    load.keyLength, threads, threads == 1 ? "" : "s", load.medianSeconds / same.medianSeconds,
                    load.medianSeconds * 1e6, same.medianSeconds * 1e6))
        }
        if let rope = of("rope-step"), let step = of("decode-4096") {
            lines.append(
                String(
                    format: "serving rope-step, %d thread%@: %.2f us, %.2f%% of a decode step at 4096 tokens (%.0f us)",
                    threads, threads == 1 ? "" : "s", rope.medianSeconds * 1e6,
                    100 * rope.medianSeconds / step.medianSeconds, step.medianSeconds * 1e6))
        }
    }
    return lines
}
