// How time grows with the sequence in the window and streaming suites: the two scaling claims those suites exist
// to check, printed as ratios under the table.

import AttentionCore
import Foundation
import _AttentionTestSupport

/// One line per series of records that differ only in length, from its shortest to its longest member: for the
/// window suite the time ratio beside the ratio of the visible work (GFLOP/s x time, which counts visible pairs
/// only), so a kernel whose rate is flat in N shows equal ratios; for the streaming suite the per-token time at the
/// last checkpoint over the first. Series with one length are left out.
public func growthSummaries(_ records: [BenchmarkRecord]) -> [String] {
    var lines: [String] = []
    var series: [String: [BenchmarkRecord]] = [:]
    var order: [String] = []
    for record in records where record.suite == "window" || (record.suite == "streaming" && record.kernel == "cache") {
        let key = "\(record.suite) \(record.kernel) \(record.mask) \(record.threads)"
        if series[key] == nil { order.append(key) }
        series[key, default: []].append(record)
    }
    for key in order {
        let members = series[key]!.sorted { $0.keyLength < $1.keyLength }
        guard let first = members.first, let last = members.last, last.keyLength > first.keyLength else { continue }
        let threads = "\(first.threads) thread\(first.threads == 1 ? "" : "s")"
        let timeRatio = last.medianSeconds / first.medianSeconds
        if first.suite == "window" {
            let workRatio = (last.gflops * last.medianSeconds) / (first.gflops * first.medianSeconds)
            lines.append(
                "growth: window \(first.kernel) \(first.mask), \(threads), N \(first.keyLength) -> \(last.keyLength): "
                    + String(format: "time x%.2f, visible work x%.2f", timeRatio, workRatio))
        } else {
            lines.append(
                "growth: streaming \(first.mask), \(threads), per-token time at \(last.keyLength) tokens / at "
                    + "\(first.keyLength): " + String(format: "%.2f", timeRatio))
        }
    }
    return lines
}

/// The window suite's growth timed side by side: sliding-window attention (each query sees itself and the 1023 keys
/// before it) at the shortest and the longest N, into reused outputs, alternating one call at each length for
/// `rounds` rounds after a warm-up call each (`alternateSamples`: which length goes first alternates too). Returns
/// the median of the per-round time ratios (longest / shortest) with their range, and the ratio of the visible
/// work, so that a VM's slow spells, which last seconds, fall on both lengths alike (timed one length after the
/// other, the same ratio spread 4.09-4.80 here). One line per thread count of the suite; 9 rounds (3 with --quick).
public func pairedWindowGrowth(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [String] {
    let lengths = windowSuite(configuration, allThreads: allThreads).map(\.queryLength)
    return try threadCounts(configuration, allThreads: allThreads).compactMap { threads in
        try pairedWindowGrowth(
            lengths: lengths, heads: configuration.heads, headDimension: configuration.headDimensions?.first ?? 64,
            threads: threads, rounds: configuration.quick ? 3 : 9)
    }
}

/// One thread count of `pairedWindowGrowth(_:allThreads:)`; nil without two different lengths.
package func pairedWindowGrowth(
    lengths: [Int], heads: Int, headDimension: Int, threads: Int, rounds: Int
) throws -> String? {
    guard let short = lengths.min(), let long = lengths.max(), long > short, rounds > 0 else { return nil }
    let mask = AttentionMask.window(left: 1023, right: 0)
    let options = AttentionOptions(kernel: .blockwise(), threads: threads)
    typealias Inputs = (queries: Tensor, keys: Tensor, values: Tensor)
    func setUp(_ n: Int) throws -> (inputs: Inputs, output: Tensor) {
        let inputs = try attentionInputs(
            queryHeads: heads, keyValueHeads: heads, queryLength: n, keyLength: n, headDimension: headDimension,
            seed: 7)
        return (inputs, try Tensor(zeros: [1, heads, n, headDimension]))
    }
    var (a, b) = (try setUp(short), try setUp(long))
    func call(_ x: inout (inputs: Inputs, output: Tensor)) throws {
        try attention(
            queries: x.inputs.queries, keys: x.inputs.keys, values: x.inputs.values, mask: mask, options: options,
            into: &x.output)
    }
    let samples = try alternateSamples(
        minimumRepetitions: rounds, budget: 0, [{ try call(&a) }, { try call(&b) }])
    let ratios = ratioSummary(samples[1], samples[0])
    let work =
        visibleFraction(of: mask, queryLength: long, keyLength: long) * Double(long * long)
        / (visibleFraction(of: mask, queryLength: short, keyLength: short) * Double(short * short))
    return "growth: window blockwise-into win1024 paired (\(rounds) rounds alternating), \(threads) "
        + "thread\(threads == 1 ? "" : "s"), N \(short) -> \(long): "
        + String(
            format: "time x%.2f (rounds %.2f-%.2f), visible work x%.2f", ratios.median, ratios.minimum,
            ratios.maximum, work)
}
