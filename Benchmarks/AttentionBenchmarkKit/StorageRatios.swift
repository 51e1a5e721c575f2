// The decode suite's storage bars timed side by side: one token over a cache in each storage format, the formats
// called in turn, each format's time as a ratio to Float32's in the same round.
//
// The storage bars are ratios (F16 decode at most 0.55x the Float32 time, and so on), and the suite's cases run one
// after another for a second or two each. On a shared VM, whose slow spells last seconds, the two terms of such a
// ratio then come from different minutes: single runs of the suite gave F16 0.47-0.60x of Float32 within an hour
// (Zen 3, 2026-12-07). Called in turn, every format meets the same spells, and the median of the per-round ratios
// is the figure to hold against a bar.

import AttentionCore
import Foundation
import _AttentionTestSupport

/// One line per thread count of the decode suite: one token (H_q 32, H_kv 8, d 128 unless --dims names another)
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
    let clock = ContinuousClock()
    func call(_ index: Int) throws -> Double {
        try clock.measure { _ = try caches[index].partialAttention(queries: inputs.queries, options: options) }
            .inSeconds
    }
    for index in caches.indices { _ = try call(index) }
    var times = [[Double]](repeating: [], count: caches.count)
    for round in 0..<rounds {
        for step in caches.indices {
            let index = (round + step) % caches.count
            times[index].append(try call(index))
        }
    }
    func median(_ x: [Double]) -> Double { TimingSummary(samples: x).median }
    let parts = formats.indices.filter { $0 != base }.map { index in
        let ratios = zip(times[index], times[base]).map { $0 / $1 }.sorted()
        return "\(formats[index].name) "
            + String(
                format: "x%.2f (rounds %.2f-%.2f, fastest calls x%.2f)", median(ratios), ratios[0],
                ratios[ratios.count - 1], times[index].min()! / times[base].min()!)
    }
    return "storage: decode paired (\(rounds) rounds, formats in turn), \(threads) thread\(threads == 1 ? "" : "s"), "
        + "\(n) keys, H \(queryHeads)/\(keyValueHeads), d \(d), time vs f32 ("
        + String(format: "median %.2f ms", median(times[base]) * 1e3) + "): " + parts.joined(separator: ", ")
}
