// The storage bars timed side by side: one token over a cache in each storage format (decode suite), and prefill
// over stored tensors beside the Float32 tensor call (blockwise suite), each ratio formed within one round.
//
// The storage bars are ratios (F16 decode at most 0.55x the Float32 time, prefill over F16 keys and values at least
// 0.9x the Float32 GFLOP/s), and the suites' cases run one after another for a second or two each. On a shared VM,
// whose slow spells last seconds, the two terms of such a ratio then come from different minutes: in one run of the
// blockwise suite (Zen 3, 2026-12-07) the GQA rows gave BFloat16 0.56x of the Float32 rate on two threads, where
// the two calls in turn gave 0.90x. Called in turn, the terms meet the same spells, and the median of the
// per-round ratios is the figure to hold against a bar.

import AttentionCore
import Foundation
import _AttentionTestSupport

/// One line per thread count of the decode suite: one token (H_q 32, H_kv 8, d 128 unless --head-dim names another)
/// over a cache of 32768 keys (or the longest of --sizes without 32768) in each storage format the suite times,
/// after a warm-up call each, called in turn for 25 rounds (7 with --quick), the first format of each round
/// rotating so that none always follows the same one. Empty without Float32 and another format among --storage,
/// or when --kernels leaves out the decode kernel.
public func pairedStorageRatios(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [String] {
    guard configuration.kernels?.contains("decode") ?? true else { return [] }
    let lengths = configuration.sequenceLengths ?? [32768]
    guard let length = lengths.contains(32768) ? 32768 : lengths.max() else { return [] }
    let formats = decodeStorages.filter { configuration.storages?.contains($0.name) ?? true }
    return try threadCounts(configuration, allThreads: allThreads).compactMap { threads in
        try pairedStorageRatios(
            keyLength: length, queryHeads: 32, keyValueHeads: 8,
            headDimension: configuration.headDimensions?.first ?? 128, formats: formats, threads: threads,
            rounds: configuration.quick ? 7 : 25)
    }
}

/// One thread count of `pairedStorageRatios(_:allThreads:)`: for each format other than f32, the median of the
/// per-round ratios to f32 with their range, and the ratio of the two formats' fastest calls; f32's median time.
/// Nil without f32 and another format, or without a round.
package func pairedStorageRatios(
    keyLength n: Int, queryHeads: Int, keyValueHeads: Int, headDimension d: Int,
    formats: [(name: String, format: StorageFormat)], threads: Int, rounds: Int
) throws -> String? {
    guard let base = formats.firstIndex(where: { $0.name == "f32" }), formats.count > 1, rounds > 0 else {
        return nil
    }
    let inputs = try attentionInputs(
        queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: 1, keyLength: n, headDimension: d,
        seed: 11)
    let caches = try formats.map { format in
        var cache = try KVCache(
            keyValueHeads: keyValueHeads, headDimension: d, reservingCapacity: n,
            storage: CacheStorage(format.format))
        try cache.append(keys: inputs.keys, values: inputs.values)
        return cache
    }
    let options = AttentionOptions(kernel: .decode(), threads: threads)
    let times = try alternateSamples(
        minimumRepetitions: rounds, budget: 0,
        caches.indices.map { index in
            { _ = try caches[index].partialAttention(queries: inputs.queries, options: options) }
        })
    let parts = formats.indices.filter { $0 != base }.map { index in
        let ratios = ratioSummary(times[index], times[base])
        return "\(formats[index].name) "
            + String(
                format: "x%.2f (rounds %.2f-%.2f, fastest calls x%.2f)", ratios.median, ratios.minimum,
                ratios.maximum, times[index].min()! / times[base].min()!)
    }
    return "storage: decode paired (\(rounds) rounds, formats in turn), \(threads) thread\(threads == 1 ? "" : "s"), "
        + "\(n) keys, H \(queryHeads)/\(keyValueHeads), d \(d), time vs f32 ("
        + String(format: "median %.2f ms", TimingSummary(samples: times[base]).median * 1e3) + "): "
        + parts.joined(separator: ", ")
}

/// One line per blockwise-suite case over stored tensors at N = 2048 (or the longest N of the sweep below it):
/// the Float32 tensor call and the same call over the stored tensors in turn, after a warm-up call each, for 7
/// rounds (3 with --quick); the median of the per-round ratios of the stored call's rate to the Float32 call's
/// (Float32 time / stored time), with their range.
public func pairedStoredPrefill(_ cases: [BenchmarkCase], quick: Bool) throws -> [String] {
    let stored = cases.filter { $0.suite == "blockwise" && $0.tensorStorage != nil && $0.queryLength <= 2048 }
    guard let length = stored.map(\.queryLength).max() else { return [] }
    return try stored.filter { $0.queryLength == length }.map { try pairedStoredPrefill($0, rounds: quick ? 3 : 7) }
}

/// One case of `pairedStoredPrefill(_:quick:)` (a case with `tensorStorage`).
package func pairedStoredPrefill(_ c: BenchmarkCase, rounds: Int) throws -> String {
    guard let storage = c.tensorStorage, rounds > 0 else {
        throw AttentionError.invalidValue(
            argument: "case", expected: "a case over stored tensors and rounds > 0", actual: "\(c.kernelName)")
    }
    let inputs = try attentionInputs(
        batch: c.batch, queryHeads: c.queryHeads, keyValueHeads: c.keyValueHeads, queryLength: c.queryLength,
        keyLength: c.keyLength, headDimension: c.headDimension, seed: 7)
    let (queries, keys, values) = try storedInputs(inputs, format: storage.format)
    // In turn, the first call of a round alternating, so that neither always runs on the other's warm caches.
    let times = try alternateSamples(
        minimumRepetitions: rounds, budget: 0,
        [
            {
                _ = try partialAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: c.mask,
                    options: c.options)
            },
            {
                _ = try partialAttention(
                    queries: queries, keys: keys, values: values, mask: c.mask, options: c.options)
            },
        ])
    let ratios = ratioSummary(times[0], times[1])
    return "storage: blockwise paired (\(rounds) rounds, in turn), \(storage.name) keys and values, \(c.maskName), "
        + "H \(c.queryHeads)/\(c.keyValueHeads), N \(c.queryLength), d \(c.headDimension), \(c.threads) "
        + "thread\(c.threads == 1 ? "" : "s"): "
        + String(
            format: "x%.2f of the Float32 rate (rounds %.2f-%.2f)", ratios.median, ratios.minimum, ratios.maximum)
}

/// One line per thread count of the backward suite: `attentionGradients` over BFloat16 queries, keys, values and
/// output gradient beside the Float32 call on the same (decoded) values, causal, H 8 (--heads), d 64 (the first
/// --head-dim), N 2048 (or the longest of the sweep below it), called in turn for 7 rounds (3 with --quick) after a
/// warm-up call each: the median of the per-round ratios of the stored call's time to the Float32 call's, with
/// their range. Validated first: the stored call's gradients are bitwise the Float32 call's (the package's
/// promise), and a small case of each format mix is checked against the Float64 reference on the stored values.
/// Empty when --kernels leaves out the backward.
public func pairedStoredBackward(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [String] {
    guard configuration.kernels?.contains("backward") ?? true else { return [] }
    for formats in [
        (StorageFormat.bfloat16, StorageFormat.bfloat16, StorageFormat.bfloat16, StorageFormat.bfloat16),
        (.bfloat16, .int8(blockSize: 8), .int4(blockSize: 8), .float32),
    ] {
        let x = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 70, keyLength: 90, headDimension: 24, seed: 3)
        let dO = try Tensor.randomNormal(shape: [1, 4, 70, 24], seed: 4)
        for (name, check) in try checkStoredGradients(
            queries: x.queries, keys: x.keys, values: x.values, outputGradient: dO, formats: formats, mask: .causal)
            ?? [:] where !check.passes
        {
            throw ValidationFailure(description: "stored backward \(name) failed validation: \(check)")
        }
    }
    let lengths = (configuration.sequenceLengths ?? [2048]).filter { $0 <= 2048 }
    guard let n = lengths.max() else { return [] }
    let (heads, d) = (configuration.heads, configuration.headDimensions?.first ?? 64)
    let x = try attentionInputs(queryHeads: heads, queryLength: n, keyLength: n, headDimension: d, seed: 15)
    let (queries, keys, values) = try storedInputs(x, format: .bfloat16)
    let storedGradient = try StoredTensor(Tensor.randomNormal(shape: [1, heads, n, d], seed: 16), format: .bfloat16)
    let (decodedQ, decodedK, decodedV, decodedGradient) = (
        Tensor(queries), Tensor(keys), Tensor(values), Tensor(storedGradient)
    )
    let rounds = configuration.quick ? 3 : 7
    return try threadCounts(configuration, allThreads: allThreads).map { threads in
        let options = AttentionOptions(threads: threads)
        let forward = try partialAttention(
            queries: queries, keys: keys, values: values, mask: .causal, options: options)
        var (tensorGradients, storedGradients): (AttentionGradients?, AttentionGradients?) = (nil, nil)
        let times = try alternateSamples(
            minimumRepetitions: rounds, budget: 0,
            [
                {
                    tensorGradients = try attentionGradients(
                        queries: decodedQ, keys: decodedK, values: decodedV, result: forward,
                        outputGradient: decodedGradient, mask: .causal, options: options)
                },
                {
                    storedGradients = try attentionGradients(
                        queries: queries, keys: keys, values: values, result: forward, outputGradient: storedGradient,
                        mask: .causal, options: options)
                },
            ])
        guard let tensorGradients, let storedGradients,
            bitwise(storedGradients.queries) == bitwise(tensorGradients.queries),
            bitwise(storedGradients.keys) == bitwise(tensorGradients.keys),
            bitwise(storedGradients.values) == bitwise(tensorGradients.values)
        else {
            throw ValidationFailure(description: "the stored backward differs from the Float32 one on the same values")
        }
        let ratios = ratioSummary(times[1], times[0])
        return "storage: backward paired (\(rounds) rounds, in turn), bf16 queries, keys, values and output "
            + "gradient, causal, H \(heads), N \(n), d \(d), \(threads) thread\(threads == 1 ? "" : "s"): "
            + String(
                format: "x%.2f the Float32 call's time (rounds %.2f-%.2f; Float32 median %.1f ms)", ratios.median,
                ratios.minimum, ratios.maximum, TimingSummary(samples: times[0]).median * 1e3)
    }
}
