// A throughput probe of the blockwise kernel's two micro-kernels on data that stays in L1, so that a benchmark can
// state what this binary's arithmetic reaches on this CPU (and notice a build without the CPU-target flag).

/// Runs the score and value micro-kernels in the build target's shape (`MicroKernelShape.target`, the kernels the
/// blockwise kernel uses) on the default tile (64 keys x 64 rows x d = 64, 16 KiB per operand) and returns their
/// rate in GFLOP/s (2 FLOPs per multiply-add) on the calling thread. After a warm-up of `seconds / 4` (clock
/// ramp), it times `windows` windows of `seconds / windows` each and returns the fastest: on a shared VM the
/// median of such windows moved by 10-25% between runs, while the fastest stays within a few percent.
package func microKernelThroughput(seconds: Double = 0.3, windows: Int = 8) -> Double {
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
    /// Runs rounds of 16 tile pairs for at least `duration` and returns the rate.
    func window(_ duration: Duration) -> Double {
        var iterations = 0
        let start = clock.now
        var elapsed = Duration.zero
        while elapsed < duration {
            for _ in 0..<16 {
                computeScores(qT: qT, rowCount: rows, keys: k, keyCount: keys, depth: depth, scores: scores)
                accumulateValues(
                    weights: scores, rowCount: rows, keyCount: keys, values: k, valueDimension: depth, oT: oT)
            }
            iterations += 16
            elapsed = clock.now - start
        }
        return Double(iterations) * 4 * Double(rows * keys * depth) / elapsed.inSeconds / 1e9
    }
    let count = Swift.max(1, windows)
    _ = window(.milliseconds(Int(seconds * 250)))
    var best = 0.0
    for _ in 0..<count { best = Swift.max(best, window(.microseconds(Int(seconds * 1e6) / count))) }
    return best
}

extension Duration {
    /// The duration in seconds, as a Double.
    package var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }
}
