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
            Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        samples.append(seconds)
        spent += seconds
    }
    return TimingSummary(samples: samples)
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
