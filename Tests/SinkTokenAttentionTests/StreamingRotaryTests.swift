import Foundation
import SinkTokenAttention
import XCTest
import _AttentionTestSupport

/// StreamingLLM positions with `StreamingKVCache(rotary:)`: a 5,000-step session against attention recomputed
/// from scratch at every step, with every held key rotated by its position within the cache (sinks 0 ..< s, then
/// the window in order, the query after its keys): in Float64 by the textbook rotation (the spec) and, for the
/// tolerance rule's plain comparator, the same recomputation in Float32.
final class StreamingRotaryTests: XCTestCase {
    /// Pair k of the first r values rotated by `position` (interleaved pairs or halves), in the scalar type.
    func rotated<T: BinaryFloatingPoint>(
        _ row: [T], position: Int, halves: Bool, base: Double, cos: (T) -> T, sin: (T) -> T
    ) -> [T] {
        var out = row
        let r = row.count
        for k in 0..<(r / 2) {
            let angle = T(position) * T(Foundation.pow(base, -2 * Double(k) / Double(r)))
            let (i, j) = halves ? (k, k + r / 2) : (2 * k, 2 * k + 1)
            out[i] = row[i] * cos(angle) - row[j] * sin(angle)
            out[j] = row[i] * sin(angle) + row[j] * cos(angle)
        }
        return out
    }

    func rotatedExactly(_ row: [Float], _ position: Int, _ halves: Bool) -> [Double] {
        rotated(
            row.map(Double.init), position: position, halves: halves, base: 10_000, cos: { Foundation.cos($0) },
            sin: { Foundation.sin($0) })
    }

    func rotatedInFloat(_ row: [Float], _ position: Int, _ halves: Bool) -> [Float] {
        rotated(
            row, position: position, halves: halves, base: 10_000, cos: { Foundation.cos($0) },
            sin: { Foundation.sin($0) })
    }

    /// One query row's attention over `keys` / `values` (rows), scaled by 1 / sqrt(d), in the scalar type.
    func attend<T: BinaryFloatingPoint>(_ q: [T], _ keys: [[T]], _ values: [[T]], exp: (T) -> T) -> [T] {
        let scale = 1 / T(Double(q.count).squareRoot())
        let scores = keys.map { k in zip(q, k).reduce(T(0)) { $0 + $1.0 * $1.1 } * scale }
        let m = scores.max()!
        let weights = scores.map { exp($0 - m) }
        let l = weights.reduce(0, +)
        var out = [T](repeating: 0, count: values[0].count)
        for (w, v) in zip(weights, values) { for c in out.indices { out[c] += w * v[c] } }
        return out.map { $0 / l }
    }

    /// Both rotation timings: keys rotated once as they are stored (sinks re-rotated by the shift), and every held
    /// key rotated by its cache position as the kernel loads it (StreamingLLM's method).
    func testFiveThousandStepRotarySessionMatchesRecomputationFromScratch() throws {
        let (sinkCount, window, hq, hkv, d, steps) = (4, 60, 2, 1, 40, 5000)  // d 40: 16-pair vectors and a tail
        for (halves, timing) in [
            (true, StreamingKVCache.RotationTiming.whenStored), (false, .whenStored), (true, .whenLoaded),
            (false, .whenLoaded),
        ] {
            let rope = try RotaryEmbedding(pairing: halves ? .halves : .interleaved, base: 10_000)
            var cache = try StreamingKVCache(
                sinks: SinkTokens(count: sinkCount, window: window), keyValueHeads: hkv, headDimension: d, rotary: rope,
                rotationTiming: timing)
            let queries = try Tensor.randomNormal(shape: [1, hq, steps, d], seed: 1)
            let keys = try Tensor.randomNormal(shape: [1, hkv, steps, d], seed: 2)
            let values = try Tensor.randomNormal(shape: [1, hkv, steps, d], seed: 3)
            func row(_ t: Tensor, _ head: Int, _ n: Int) -> [Float] {
                Array(t.scalars[((head * steps) + n) * d..<((head * steps) + n + 1) * d])
            }
            // Chunks first (a prompt of 130 tokens crosses the point where the window fills), then single tokens.
            var chunks = [50, 80, 3]
            chunks += Array(repeating: 1, count: steps - chunks.reduce(0, +))
            var start = 0
            var worst = (kernel: 0.0, bound: Double.infinity, step: 0)
            for chunk in chunks {
                let range = start..<(start + chunk)
                let output = try cache.attend(
                    queries: tokens(queries, range), keys: tokens(keys, range), values: tokens(values, range))
                for query in range {
                    // From scratch: the keys query `query` sees and their positions within the cache.
                    let firstWindow = Swift.max(sinkCount, query - window + 1)
                    let visible =
                        Array(0..<Swift.min(sinkCount, query + 1))
                        + Array(firstWindow..<Swift.max(firstWindow, query + 1))
                    let position = { (u: Int) in u < sinkCount ? u : sinkCount + (u - firstWindow) }
                    for head in 0..<hq {
                        let q = row(queries, head, query)
                        let ks = visible.map { row(keys, 0, $0) }
                        let vs = visible.map { row(values, 0, $0) }
                        let (qPosition, kPositions) = (position(query), visible.map(position))
                        let exactKeys: [[Double]] = zip(kPositions, ks).map { p, k in rotatedExactly(k, p, halves) }
                        let plainKeys: [[Float]] = zip(kPositions, ks).map { p, k in rotatedInFloat(k, p, halves) }
                        let exact = attend(
                            rotatedExactly(q, qPosition, halves), exactKeys, vs.map { $0.map(Double.init) },
                            exp: { Foundation.exp($0) })
                        let plain = attend(
                            rotatedInFloat(q, qPosition, halves), plainKeys, vs, exp: { Foundation.exp($0) })
                        let n = query - start
                        let got = Array(output.scalars[((head * chunk) + n) * d..<((head * chunk) + n + 1) * d])
                        let check = toleranceCheck(kernel: got, reference: exact, plain: plain)
                        if !check.passes {
                            XCTFail("step \(query) head \(head) halves \(halves) \(timing): \(check)")
                            return
                        }
                        if check.kernelError / check.bound > worst.kernel / worst.bound {
                            worst = (check.kernelError, check.bound, query)
                        }
                    }
                }
                start += chunk
            }
            XCTAssertEqual(cache.tokenCount, steps)
            print(
                "streaming rotary, halves \(halves), \(timing): worst error \(worst.kernel) vs bound \(worst.bound) at step \(worst.step)"
            )
        }
    }

    func testRotaryAppendThenAttendAgreesWithAttendingEveryToken() throws {
        // `append` stores keys at their stream positions too: appending a prefix and attending the rest gives the
        // same outputs (up to rounding) as attending every token.
        let rope = try RotaryEmbedding(pairing: .halves)
        let sinks = try SinkTokens(count: 2, window: 16)
        let q = try Tensor.randomNormal(shape: [1, 2, 40, 8], seed: 4)
        let k = try Tensor.randomNormal(shape: [1, 1, 40, 8], seed: 5)
        let v = try Tensor.randomNormal(shape: [1, 1, 40, 8], seed: 6)
        var a = try StreamingKVCache(sinks: sinks, keyValueHeads: 1, headDimension: 8, rotary: rope)
        var b = a
        _ = try a.attend(queries: tokens(q, 0..<30), keys: tokens(k, 0..<30), values: tokens(v, 0..<30))
        try b.append(keys: tokens(k, 0..<30), values: tokens(v, 0..<30))
        for t in 30..<40 {
            let (qt, kt, vt) = (tokens(q, t..<(t + 1)), tokens(k, t..<(t + 1)), tokens(v, t..<(t + 1)))
            let (x, y) = (
                try a.attend(queries: qt, keys: kt, values: vt), try b.attend(queries: qt, keys: kt, values: vt)
            )
            XCTAssertLessThan(maxAbsoluteError(x.scalars, y.scalars), 1e-5, "token \(t)")
        }
    }

    /// `.whenLoaded` stores the keys as given (`contents` returns them unrotated), works over a Float16 cache
    /// and a GQA group (within the tolerance of the same session with `.whenStored`, whose keys are rounded after
    /// rotation instead of before), and refuses a Hadamard-rotated storage by name.
    func testRotationAtLoadStoresKeysUnrotatedAndRefusesHadamard() throws {
        let rope = try RotaryEmbedding(pairing: .halves)
        let sinks = try SinkTokens(count: 3, window: 20)
        let (q, k, v) = (
            try Tensor.randomNormal(shape: [1, 4, 70, 32], seed: 7),
            try Tensor.randomNormal(shape: [1, 2, 70, 32], seed: 8),
            try Tensor.randomNormal(shape: [1, 2, 70, 32], seed: 9)
        )
        var loaded = try StreamingKVCache(
            sinks: sinks, keyValueHeads: 2, headDimension: 32, storage: CacheStorage(.float16), rotary: rope,
            rotationTiming: .whenLoaded)
        var stored = try StreamingKVCache(
            sinks: sinks, keyValueHeads: 2, headDimension: 32, storage: CacheStorage(.float16), rotary: rope)
        for (start, count) in [(0, 10), (10, 1), (11, 15), (26, 1), (27, 43)] {
            let range = start..<(start + count)
            let (qs, ks, vs) = (tokens(q, range), tokens(k, range), tokens(v, range))
            let a = try loaded.attend(queries: qs, keys: ks, values: vs)
            let b = try stored.attend(queries: qs, keys: ks, values: vs)
            XCTAssertLessThan(maxAbsoluteError(a.scalars, b.scalars), 2e-2, "tokens \(range)")
        }
        // The held keys as stored: the first 3 tokens, then the last 20, unrotated (to Float16 precision).
        let held = loaded.contents.keys
        var expected: [Float] = []
        for h in 0..<2 {
            for t in Array(0..<3) + Array(50..<70) {
                expected += k.scalars[((h * 70) + t) * 32..<((h * 70) + t + 1) * 32]
            }
        }
        XCTAssertEqual(held.shape, [1, 2, 23, 32])
        XCTAssertLessThan(maxAbsoluteError(held.scalars, expected), 4e-3)
        XCTAssertThrowsError(
            try StreamingKVCache(
                sinks: sinks, keyValueHeads: 2, headDimension: 32,
                storage: CacheStorage(.int8(), hadamardRotation: true), rotary: rope, rotationTiming: .whenLoaded)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "rotationTiming")
        }
    }
}
