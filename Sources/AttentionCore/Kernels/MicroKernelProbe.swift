// A throughput probe of the blockwise kernel's two micro-kernels on data that stays in L1, so that a benchmark can
// state what this binary's arithmetic reaches on this CPU (and notice a build without the CPU-target flag).
//
// It times the kernels the blockwise kernel runs (the target's `MicroKernelShape`) on a tile that fits a 32 KiB
// L1, in windows interleaved with windows of plain multiply-add chains, so that a report can put the kernels beside
// what the same core's FMA units gave in the same seconds. On the shared development VMs the host takes the core
// away in bursts, and the kernels' rate moves more than the register-only chains' (as if a neighbour shared the
// core's L1). What holds still is the fastest window over enough of them: measured on the Zen 3 VM (2026-12-07,
// one bench start-up each), a 0.6 s probe of 12 windows read 46.7-86.8 GFLOP/s in its fastest kernel window over
// six runs, its median per-window ratio 68-87%; 2.4 s of 48 windows read 74.1-81.8 GFLOP/s in 11 of 13 runs, and
// the ratio of the fastest kernel window to the fastest chain window 81-89% in those (the median per-window ratio
// of the first nine: 66-83%). The other two read 61.3 GFLOP/s (its chains peaking at 83.7 against 88-96) and 66.6
// (73%): a host that holds the core back for the whole probe. Hence 2.4 s and the ratio of the fastest windows;
// still compare a run's figures with each other, not with another run's.

/// What `microKernelProbe` measured.
package struct MicroKernelProbe: Sendable {
    /// The micro-kernels' rate in the fastest window, GFLOP/s (2 FLOPs per multiply-add).
    package var gflops: Double
    /// The plain multiply-add rate in the fastest window, GFLOP/s, with as many independent chains as the
    /// micro-kernels have accumulators (`MicroKernelShape.target.accumulators`).
    package var peakGFLOPS: Double
    /// `gflops / peakGFLOPS`: the fastest kernel window against the fastest multiply-add window.
    package var fractionOfPeak: Double
}

/// Runs the score and value micro-kernels in the build target's shape (`MicroKernelShape.target`, the kernels the
/// blockwise kernel uses) on an L1-resident tile (64 rows x 32 keys x d = 32) on the calling
/// thread, in `windows` windows of `seconds / (2 * windows)` each, alternating with windows of plain independent
/// multiply-add chains, after a warm-up of `seconds / 8` (clock ramp).
package func microKernelProbe(seconds: Double = 2.4, windows: Int = 48) -> MicroKernelProbe {
    // 64 rows (the default tile's), 32 keys and d = 32: Q^T, K, S^T and O^T take 8 + 4 + 8 + 8 KiB, inside a 32 KiB
    // L1 (the default tile, 64 keys at d = 64, needs 64 KiB and measured the L2 as much as the kernels). One
    // 64-byte-aligned block, so that no vector straddles a cache line whatever malloc returns.
    let (rows, keys, depth) = (64, 32, 32)
    let block = UnsafeMutableRawPointer.allocate(byteCount: 4 * (3 * rows * depth + keys * depth), alignment: 64)
    defer { block.deallocate() }
    let floats = block.bindMemory(to: Float.self, capacity: 3 * rows * depth + keys * depth)
    let (qT, scores, oT, k) = (floats, floats + rows * depth, floats + 2 * rows * depth, floats + 3 * rows * depth)
    // Small values so that repeated accumulation stays finite.
    qT.initialize(repeating: 0.001, count: depth * rows)
    k.initialize(repeating: 0.001, count: keys * depth)
    oT.initialize(repeating: 0, count: depth * rows)
    let clock = ContinuousClock()
    /// Repeats `round` (which returns its FLOPs) for at least `duration` and returns the rate in GFLOP/s.
    func rate(_ duration: Duration, _ round: () -> Double) -> Double {
        var flops = 0.0
        let start = clock.now
        var elapsed = Duration.zero
        while elapsed < duration {
            flops += round()
            elapsed = clock.now - start
        }
        return flops / elapsed.inSeconds / 1e9
    }
    func kernels() -> Double {
        for _ in 0..<16 {
            computeScores(qT: qT, rowCount: rows, keys: k, keyCount: keys, depth: depth, scores: scores)
            accumulateValues(weights: scores, rowCount: rows, keyCount: keys, values: k, valueDimension: depth, oT: oT)
        }
        return 16 * 4 * Double(rows * keys * depth)
    }
    var sink = SIMD16<Float>()
    func multiplyAdds() -> Double {
        let steps = 4096
        let (flops, sum) =
            MicroKernelShape.target.accumulators >= 16 ? multiplyAddChains16(steps) : multiplyAddChains6(steps)
        sink += sum
        return flops
    }
    let count = Swift.max(1, windows)
    let window = Duration.microseconds(Int(seconds * 1e6) / (2 * count))
    _ = rate(.microseconds(Int(seconds * 1e6) / 8), kernels)
    var (best, bestPeak) = (0.0, 0.0)
    for _ in 0..<count {
        best = Swift.max(best, rate(window, kernels))
        bestPeak = Swift.max(bestPeak, rate(window, multiplyAdds))
    }
    // Keeps the chains' results alive (a NaN sum would be a broken probe, not a number to hide).
    let fraction = sink.sum().isNaN ? .nan : best / bestPeak
    return MicroKernelProbe(gflops: best, peakGFLOPS: bestPeak, fractionOfPeak: fraction)
}

/// 6 independent chains of `steps` SIMD16 multiply-adds (a = a * x + y); returns the FLOPs and a sum to keep.
@inline(never)
private func multiplyAddChains6(_ steps: Int) -> (Double, SIMD16<Float>) {
    let x = SIMD16<Float>(repeating: 0.999_999), y = SIMD16<Float>(repeating: 1e-7)
    var a0 = SIMD16<Float>(repeating: 1e-3)
    var a1 = SIMD16<Float>(repeating: 2e-3)
    var a2 = SIMD16<Float>(repeating: 3e-3)
    var a3 = SIMD16<Float>(repeating: 4e-3)
    var a4 = SIMD16<Float>(repeating: 5e-3)
    var a5 = SIMD16<Float>(repeating: 6e-3)
    for _ in 0..<steps {
        a0 = multiplyAdd(a0, x, y)
        a1 = multiplyAdd(a1, x, y)
        a2 = multiplyAdd(a2, x, y)
        a3 = multiplyAdd(a3, x, y)
        a4 = multiplyAdd(a4, x, y)
        a5 = multiplyAdd(a5, x, y)
    }
    return (Double(steps * 6 * 32), a0 + a1 + a2 + a3 + a4 + a5)
}

/// 16 independent chains of `steps` SIMD16 multiply-adds (a = a * x + y); returns the FLOPs and a sum to keep.
@inline(never)
private func multiplyAddChains16(_ steps: Int) -> (Double, SIMD16<Float>) {
    let x = SIMD16<Float>(repeating: 0.999_999), y = SIMD16<Float>(repeating: 1e-7)
    var a0 = SIMD16<Float>(repeating: 1e-3)
    var a1 = SIMD16<Float>(repeating: 2e-3)
    var a2 = SIMD16<Float>(repeating: 3e-3)
    var a3 = SIMD16<Float>(repeating: 4e-3)
    var a4 = SIMD16<Float>(repeating: 5e-3)
    var a5 = SIMD16<Float>(repeating: 6e-3)
    var a6 = SIMD16<Float>(repeating: 7e-3)
    var a7 = SIMD16<Float>(repeating: 8e-3)
    var a8 = SIMD16<Float>(repeating: 9e-3)
    var a9 = SIMD16<Float>(repeating: 10e-3)
    var a10 = SIMD16<Float>(repeating: 11e-3)
    var a11 = SIMD16<Float>(repeating: 12e-3)
    var a12 = SIMD16<Float>(repeating: 13e-3)
    var a13 = SIMD16<Float>(repeating: 14e-3)
    var a14 = SIMD16<Float>(repeating: 15e-3)
    var a15 = SIMD16<Float>(repeating: 16e-3)
    for _ in 0..<steps {
        a0 = multiplyAdd(a0, x, y)
        a1 = multiplyAdd(a1, x, y)
        a2 = multiplyAdd(a2, x, y)
        a3 = multiplyAdd(a3, x, y)
        a4 = multiplyAdd(a4, x, y)
        a5 = multiplyAdd(a5, x, y)
        a6 = multiplyAdd(a6, x, y)
        a7 = multiplyAdd(a7, x, y)
        a8 = multiplyAdd(a8, x, y)
        a9 = multiplyAdd(a9, x, y)
        a10 = multiplyAdd(a10, x, y)
        a11 = multiplyAdd(a11, x, y)
        a12 = multiplyAdd(a12, x, y)
        a13 = multiplyAdd(a13, x, y)
        a14 = multiplyAdd(a14, x, y)
        a15 = multiplyAdd(a15, x, y)
    }
    return (
        Double(steps * 16 * 32), a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15
    )
}

extension Duration {
    /// The duration in seconds, as a Double.
    package var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }
}
