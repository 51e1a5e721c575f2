// A throughput probe of the blockwise kernel's two micro-kernels on data that stays in L1, so that a benchmark can
// state what this binary's arithmetic reaches on this CPU (and notice a build without the CPU-target flag).

/// Runs the score and value micro-kernels (64 keys x 64 rows x d = 64, one 16 KiB tile of each operand) repeatedly
/// for at least `seconds` on the calling thread and returns their rate in GFLOP/s (2 FLOPs per multiply-add).
package func microKernelThroughput(seconds: Double = 0.2) -> Double {
    let (rows, keys, depth) = (64, 64, 64)
    let qT = UnsafeMutablePointer<Float>.allocate(capacity: depth * rows)
    let k = UnsafeMutablePointer<Float>.allocate(capacity: keys * depth)
    let scores = UnsafeMutablePointer<Float>.allocate(capacity: keys * rows)
    let oT = UnsafeMutablePointer<Float>.allocate(capacity: depth * rows)
    defer {
        qT.deallocate()
        k.deallocate()
        scores.deallocate()
        oT.deallocate()
    }
    // Small values so that repeated accumulation stays finite.
    qT.initialize(repeating: 0.001, count: depth * rows)
    k.initialize(repeating: 0.001, count: keys * depth)
    oT.initialize(repeating: 0, count: depth * rows)
    let clock = ContinuousClock()
    var iterations = 0
    let start = clock.now
    var elapsed = Duration.zero
    while elapsed < .milliseconds(Int(seconds * 1000)) {
        for _ in 0..<64 {
            computeScores(qT: qT, rowCount: rows, keys: k, keyCount: keys, depth: depth, scores: scores)
            accumulateValues(weights: scores, rowCount: rows, keyCount: keys, values: k, valueDimension: depth, oT: oT)
        }
        iterations += 64
        elapsed = clock.now - start
    }
    return Double(iterations) * 4 * Double(rows * keys * depth) / elapsed.inSeconds / 1e9
}

extension Duration {
    /// The duration in seconds, as a Double.
    package var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }
}
