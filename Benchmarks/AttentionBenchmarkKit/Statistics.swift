// Timing statistics and the FLOP formula of attention-bench.
//
// FLOP formula (one number for every kernel): 4 * B * Hq * Nq * Nk * d * visibleFraction.
// Q K^T and P V each take 2 * Nq * Nk * d multiply-adds-as-two-FLOPs per head; softmax work is not counted.
// `visibleFraction` is the share of (query, key) pairs the mask lets through, so a causal run is credited with
// about half the work of a full one: the work that has to be done, not the work a kernel chose to do.

import AttentionCore

/// The median and range of repeated timings, in seconds.
public struct TimingSummary: Sendable, Equatable {
    public var median: Double
    public var minimum: Double
    public var maximum: Double
    public var repetitions: Int
    /// Runs timed in turn with a baseline (`alternateTimes(..., baseline:)`): the median over the rounds of this
    /// run's time divided by the baseline's time in the same round. Nil otherwise.
    public var pairedRatio: Double?

    /// Summarizes `samples` (seconds). The median of an even count is the mean of the two middle samples.
    public init(samples: [Double]) {
        precondition(!samples.isEmpty, "a timing summary needs at least one sample")
        let sorted = samples.sorted()
        let middle = sorted.count / 2
        median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
        minimum = sorted[0]
        maximum = sorted[sorted.count - 1]
        repetitions = sorted.count
    }
}

/// Runs `body` `warmup` times untimed, then times it until `budget` seconds have been spent, at least
/// `minimumRepetitions` and at most `maximumRepetitions` times.
public func measureTimes(
    warmup: Int = 1, minimumRepetitions: Int = 3, maximumRepetitions: Int = 50, budget: Double = 1,
    _ body: () throws -> Void
) rethrows -> TimingSummary {
    for _ in 0..<warmup { try body() }
    let clock = ContinuousClock()
    var samples: [Double] = []
    var spent = 0.0
    while samples.count < minimumRepetitions || (spent < budget && samples.count < maximumRepetitions) {
        let elapsed = try clock.measure(body)
        let seconds =
            elapsed.inSeconds
        samples.append(seconds)
        spent += seconds
    }
    return TimingSummary(samples: samples)
}

/// Times every run in turn (one warm-up each, then each once per round, the first of a round rotating so that no
/// run always follows the same one) until each has `minimumRepetitions` samples and `budget` seconds are spent (at
/// most 50 rounds). With `baseline` (an index into `runs`), every other run's summary also gets the median of its
/// per-round time ratios to that run (`pairedRatio`; the baseline's own stays nil): on a shared machine whose slow
/// spells last seconds, a ratio formed within a round compares like with like, where the ratio of two medians can
/// pair different minutes.
package func alternateTimes(
    minimumRepetitions: Int, budget: Double, _ runs: [() throws -> Void], baseline: Int? = nil
) throws -> [TimingSummary] {
    let samples = try alternateSamples(minimumRepetitions: minimumRepetitions, budget: budget, runs)
    return samples.indices.map { run in
        var summary = TimingSummary(samples: samples[run])
        if let baseline, run != baseline { summary.pairedRatio = medianRatio(samples[run], samples[baseline]) }
        return summary
    }
}

/// The seconds of every call `alternateTimes` makes after the warm-ups, per run, in rounds: `samples[run][round]`.
/// With `budget` 0, exactly `minimumRepetitions` rounds.
package func alternateSamples(
    minimumRepetitions: Int, budget: Double, _ runs: [() throws -> Void]
) throws -> [[Double]] {
    for run in runs { try run() }
    let clock = ContinuousClock()
    var samples = runs.map { _ in [Double]() }
    var spent = 0.0
    var round = 0
    while samples[0].count < minimumRepetitions || (spent < budget && samples[0].count < 50) {
        for step in runs.indices {
            let index = (round + step) % runs.count
            samples[index].append(try clock.measure(runs[index]).inSeconds)
            spent += samples[index].last!
        }
        round += 1
    }
    return samples
}

/// The median of `numerators[i] / denominators[i]` over the pairs (rounds timed in turn).
public func medianRatio(_ numerators: [Double], _ denominators: [Double]) -> Double {
    ratioSummary(numerators, denominators).median
}

/// The ratios `numerators[i] / denominators[i]` of the pairs (rounds timed in turn) summarized: their median and
/// range.
package func ratioSummary(_ numerators: [Double], _ denominators: [Double]) -> TimingSummary {
    precondition(numerators.count == denominators.count && !numerators.isEmpty, "a ratio needs paired samples")
    return TimingSummary(samples: zip(numerators, denominators).map { $0 / $1 })
}

/// 4 * B * Hq * Nq * Nk * d * visibleFraction (see the file header).
public func attentionFLOPs(
    batch: Int, queryHeads: Int, queryLength: Int, keyLength: Int, headDimension: Int,
    visibleFraction: Double
) -> Double {
    4 * Double(batch) * Double(queryHeads) * Double(queryLength) * Double(keyLength)
        * Double(headDimension)
        * visibleFraction
}

/// The share of (query, key) pairs that `mask` lets through; 0 when there are no pairs.
public func visibleFraction(of mask: AttentionMask, queryLength: Int, keyLength: Int) -> Double {
    guard queryLength > 0, keyLength > 0 else { return 0 }
    var visible = 0
    for query in 0..<queryLength {
        for span in mask.visibleSpans(query: query, queryLength: queryLength, keyLength: keyLength) {
            if mask.hasPredicate {
                visible +=
                    span.lazy.filter {
                        mask.allows(query: query, key: $0, queryLength: queryLength, keyLength: keyLength)
                    }.count
            } else {
                visible += span.count
            }
        }
    }
    return Double(visible) / (Double(queryLength) * Double(keyLength))
}

/// The machine's sustained read bandwidth in GB/s (1e9 bytes/s): `threads` workers each sum their share of a
/// `bytes`-byte buffer (far larger than any cache) with 16-lane vector loads; the best of `repetitions` passes.
/// This is the yardstick for memory-bound kernels such as decode, measured by the same binary on the same machine.
public func measureReadBandwidth(bytes: Int = 1 << 30, threads: Int, repetitions: Int = 3) -> Double {
    let count = bytes / MemoryLayout<Float>.size / 16 * 16
    let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
    defer { buffer.deallocate() }
    buffer.initialize(repeating: 1, count: count)
    let shared = UncheckedSendable(UnsafePointer(buffer))
    let sink = UnsafeMutablePointer<Float>.allocate(capacity: threads)
    defer { sink.deallocate() }
    let sums = UncheckedSendable(sink)
    var best = 0.0
    let clock = ContinuousClock()
    for _ in 0..<repetitions {
        let elapsed = clock.measure {
            Parallel.forEach(items: threads, threads: threads) { _, part in
                let chunk = count / threads / 16 * 16
                let start = part * chunk
                let end = part == threads - 1 ? count : start + chunk
                var a0 = SIMD16<Float>(), a1 = SIMD16<Float>()
                var i = start
                while i + 32 <= end {
                    a0 += load16(shared.value, i)
                    a1 += load16(shared.value, i + 16)
                    i += 32
                }
                sums.value[part] = horizontalSum(a0 + a1)
            }
        }
        let seconds = elapsed.inSeconds
        best = Swift.max(best, Double(count * MemoryLayout<Float>.size) / seconds / 1e9)
    }
    return best
}
