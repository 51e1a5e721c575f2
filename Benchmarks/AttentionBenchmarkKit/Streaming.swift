// The `streaming` suite: a long StreamingLLM session through StreamingKVCache, timed at checkpoints, beside the
// cost of recomputing attention over the window for every token.

import AttentionCore
import SinkTokenAttention
import _AttentionTestSupport

/// Runs one StreamingLLM session of single-token steps up to the last checkpoint (4 sinks + 1020-token window,
/// H_q = 32, H_kv = 8, d = 128 unless overridden) and returns one record per checkpoint: the median per-token time
/// over the `sample` steps ending at that checkpoint. Then one record for the sliding-window-with-recomputation
/// baseline: every token recomputes causal attention over the last 1024 tokens (Nq = Nk = 1024).
///
/// The checkpoints are timed side by side, not one after another: the session keeps a copy of its cache as it
/// reaches each checkpoint's first sampled step, and once it reaches the last one's, all copies take their sampled
/// steps in turns of 25 tokens, round robin. So every checkpoint is timed over the same seconds of the same
/// machine, and a shared VM's slow spells (seconds long here) weigh on all of them alike instead of on whichever
/// checkpoint they happen to hit. Turns of 25 rather than 1 keep each cache as warm as in a session of its own
/// (one token per copy in turn measured the caches evicting each other: 2x the time, with every checkpoint alike).
/// The untimed steps before pay for the copies' storage (copy on write).
///
/// The per-step inputs cycle through 64 pre-generated tokens, so no random numbers are drawn inside the timing.
/// Each checkpoint's output is validated against the Float64 reference over exactly the tokens the cache should
/// hold (sinks + window).
public func streamingSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) throws -> [BenchmarkRecord] {
    let (queryHeads, keyValueHeads) = (32, 8)
    let d = configuration.headDimensions?.first ?? 128
    let sinks = try SinkTokens(count: 4, window: 1020)
    let checkpoints = configuration.sequenceLengths ?? (configuration.quick ? [2000, 10000] : [2000, 20000, 100_000])
    let total = checkpoints.max() ?? 0
    let sample = configuration.quick ? 100 : 300
    let pool = 64
    let inputs = try attentionInputs(
        queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: pool, keyLength: pool, headDimension: d,
        seed: 11)
    let steps = (0..<pool).map { i in
        (tokens(inputs.queries, i..<(i + 1)), tokens(inputs.keys, i..<(i + 1)), tokens(inputs.values, i..<(i + 1)))
    }
    // Gate: a small session (2 sinks + 6-token window, 40 steps) must match the reference over sinks + window.
    let gateSinks = try SinkTokens(count: 2, window: 6)
    var gate = try StreamingKVCache(sinks: gateSinks, keyValueHeads: 2, headDimension: 8)
    let gateInputs = try attentionInputs(
        queryHeads: 4, keyValueHeads: 2, queryLength: 40, keyLength: 40, headDimension: 8, seed: 5)
    for step in 0..<40 {
        let t = step..<(step + 1)
        let output = try gate.attend(
            queries: tokens(gateInputs.queries, t), keys: tokens(gateInputs.keys, t),
            values: tokens(gateInputs.values, t))
        let held = gate.contents
        let check = checkOutput(output, queries: tokens(gateInputs.queries, t), keys: held.keys, values: held.values)
        guard check.passes else { throw ValidationFailure(description: "streaming gate at step \(step): \(check)") }
    }
    var records: [BenchmarkRecord] = []
    for threads in threadCounts(configuration, allThreads: allThreads) {
        let options = AttentionOptions(threads: threads)
        var session = try StreamingKVCache(sinks: sinks, keyValueHeads: keyValueHeads, headDimension: d)
        // (checkpoint, first sampled step, the cache as it was before that step)
        var copies: [(checkpoint: Int, start: Int, cache: StreamingKVCache)] = []
        let sortedCheckpoints = checkpoints.sorted()
        let lastStart = Swift.max(0, total - sample)
        for step in 0...lastStart {
            for checkpoint in sortedCheckpoints where Swift.max(0, checkpoint - sample) == step {
                copies.append((checkpoint, step, session))
            }
            if step == lastStart { break }
            let (q, k, v) = steps[step % pool]
            _ = try session.attend(queries: q, keys: k, values: v, options: options)
        }
        // The last copy shares the session's storage; dropping the session's hold keeps its timed steps from copying.
        session = try StreamingKVCache(sinks: sinks, keyValueHeads: keyValueHeads, headDimension: d)
        var times = [[Double]](repeating: [], count: copies.count)
        var errors = [Double](repeating: 0, count: copies.count)
        let clock = ContinuousClock()
        let turn = 25
        for turnStart in stride(from: 0, to: sample, by: turn) {
            for index in copies.indices {
                for offset in turnStart..<Swift.min(turnStart + turn, sample)
                where copies[index].start + offset < copies[index].checkpoint {
                    let step = copies[index].start + offset
                    let (q, k, v) = steps[step % pool]
                    var output: Tensor? = nil
                    let elapsed = try clock.measure {
                        output = try copies[index].cache.attend(queries: q, keys: k, values: v, options: options)
                    }
                    times[index].append(elapsed.inSeconds)
                    let position = step + 1
                    guard position == copies[index].checkpoint, let output else { continue }
                    let held = copies[index].cache.contents
                    let check = checkOutput(output, queries: q, keys: held.keys, values: held.values)
                    guard check.passes else {
                        throw ValidationFailure(description: "streaming at token \(position): \(check)")
                    }
                    errors[index] = check.kernelError
                }
            }
        }
        for (index, copy) in copies.enumerated() {
            let timing = TimingSummary(samples: times[index])
            // Keys and values of the held tokens (values are d wide too), without copying them out of the cache.
            let bytes = Double(copy.cache.count * keyValueHeads * 2 * d * MemoryLayout<Float>.size)
            records.append(
                BenchmarkRecord(
                    suite: "streaming", kernel: "cache", batch: 1, queryHeads: queryHeads, keyValueHeads: keyValueHeads,
                    queryLength: 1, keyLength: copy.checkpoint, headDimension: d, mask: "sinks4+1020", threads: threads,
                    medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                    gflops: 4 * Double(queryHeads * copy.cache.count * d) / timing.median / 1e9,
                    workspaceBytes: copy.cache.storageBytes,
                    maxAbsError: errors[index], gbPerSecond: bytes / timing.median / 1e9))
        }
        // The baseline: recompute the window's attention for every new token.
        let window = 1024
        let recompute = try attentionInputs(
            queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: window, keyLength: window,
            headDimension: d, seed: 12)
        var last: AttentionResult? = nil
        let timing = try measureTimes(minimumRepetitions: 3, budget: configuration.quick ? 0.25 : 1) {
            last = try partialAttention(
                queries: recompute.queries, keys: recompute.keys, values: recompute.values, mask: .causal,
                options: options)
        }
        let check = checkOutput(
            tokens(last!.output, (window - 1)..<window), queries: tokens(recompute.queries, (window - 1)..<window),
            keys: recompute.keys, values: recompute.values)
        guard check.passes else { throw ValidationFailure(description: "streaming recompute: \(check)") }
        records.append(
            BenchmarkRecord(
                suite: "streaming", kernel: "recompute", batch: 1, queryHeads: queryHeads, keyValueHeads: keyValueHeads,
                queryLength: window, keyLength: window, headDimension: d, mask: "causal", threads: threads,
                medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                gflops: attentionFLOPs(
                    batch: 1, queryHeads: queryHeads, queryLength: window, keyLength: window, headDimension: d,
                    visibleFraction: visibleFraction(of: .causal, queryLength: window, keyLength: window))
                    / timing.median / 1e9,
                workspaceBytes: last!.workspaceBytes, maxAbsError: check.kernelError))
    }
    return records
}

/// A timed output that failed the tolerance check against the Float64 reference.
public struct ValidationFailure: Error, CustomStringConvertible {
    public let description: String
}
