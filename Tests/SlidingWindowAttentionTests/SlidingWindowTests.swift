import SlidingWindowAttention
import XCTest
import _AttentionTestSupport

final class SlidingWindowTests: XCTestCase {
    func testCausalSizeCountsTheQueryItself() throws {
        let window = try SlidingWindow.causal(size: 3)
        XCTAssertEqual(window.size, 3)
        guard case .window(left: 2, right: 0) = window.mask else { return XCTFail("\(window.mask)") }
        // Query 5 of 8 (square, so its diagonal key is 5) sees exactly keys 3, 4, 5.
        let visible = (0..<8).filter { window.mask.allows(query: 5, key: $0, queryLength: 8, keyLength: 8) }
        XCTAssertEqual(visible, [3, 4, 5])
        let twoSided = try SlidingWindow(left: 1, right: 2)
        XCTAssertEqual(
            (0..<8).filter { twoSided.mask.allows(query: 5, key: $0, queryLength: 8, keyLength: 8) }, [4, 5, 6, 7])
        XCTAssertEqual(twoSided.size, 4)
    }

    func testMatchesReferenceWithAnExplicitPredicate() throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 150, keyLength: 150, headDimension: 16, seed: 2)
        for size in [1, 2, 64, 65, 149, 150, 400] {
            let window = try SlidingWindow.causal(size: size)
            let output = try window.attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values)
            let predicate = AttentionMask.custom { q, k in k <= q && k > q - size }
            let check = checkOutput(
                output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: predicate)
            XCTAssertTrue(check.passes, "size \(size): \(check)")
        }
    }

    func testInvalidWindowsThrow() {
        XCTAssertThrowsError(try SlidingWindow.causal(size: 0)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "size")
        }
        XCTAssertThrowsError(try SlidingWindow(left: -1, right: 0)) { error in
            XCTAssertEqual("\(error)", "left is -1 but expected >= 0")
        }
        XCTAssertThrowsError(try SlidingWindow(left: 0, right: -2))
        XCTAssertThrowsError(try RollingKVCache(window: 0, keyValueHeads: 1, headDimension: 4)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "window")
        }
    }

    /// Streams tokens one at a time through a rolling cache; every output must equal window attention over the
    /// whole history, and the held tokens must be exactly the last `window`.
    private func streamOneAtATime(window: Int, steps: Int, seed: UInt64) throws {
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: steps, keyLength: steps, headDimension: 8, seed: seed)
        var cache = try RollingKVCache(window: window, keyValueHeads: 2, headDimension: 8)
        for step in 0..<steps {
            let t = step..<(step + 1)
            let output = try cache.attend(
                queries: tokens(all.queries, t), keys: tokens(all.keys, t), values: tokens(all.values, t))
            let seen = Swift.max(0, step + 1 - window)..<(step + 1)
            let check = checkOutput(
                output, queries: tokens(all.queries, t), keys: tokens(all.keys, seen), values: tokens(all.values, seen))
            XCTAssertTrue(check.passes, "window \(window) step \(step): \(check)")
        }
        XCTAssertEqual(cache.count, Swift.min(steps, window))
        XCTAssertEqual(cache.positions, Array(Swift.max(0, steps - window)..<steps))
        let held = Swift.max(0, steps - window)..<steps
        XCTAssertEqual(cache.contents.keys, tokens(all.keys, held))
        XCTAssertEqual(cache.contents.values, tokens(all.values, held))
    }

    func testWraparoundAtTheExactBoundary() throws {
        let window = 16
        for steps in [window - 1, window, window + 1, 3 * window + 5] {
            try streamOneAtATime(window: window, steps: steps, seed: UInt64(steps))
        }
        try streamOneAtATime(window: 1, steps: 5, seed: 9)
    }

    func testChunkedAttendEqualsWindowAttentionOverTheWholeSequence() throws {
        let (window, total) = (24, 200)
        let all = try attentionInputs(
            queryHeads: 6, keyValueHeads: 3, queryLength: total, keyLength: total, headDimension: 12, seed: 5)
        var cache = try RollingKVCache(window: window, keyValueHeads: 3, headDimension: 12)
        // Chunks smaller than, equal to and larger than the window, crossing the ring's end.
        let chunks = [5, 24, 1, 50, 23, 25, 72]
        XCTAssertEqual(chunks.reduce(0, +), total)
        let output = try attendInChunks(all, chunks: chunks) { try cache.attend(queries: $0, keys: $1, values: $2) }
        let check = checkOutput(
            output, queries: all.queries, keys: all.keys, values: all.values,
            mask: .window(left: window - 1, right: 0))
        XCTAssertTrue(check.passes, "\(check)")
        XCTAssertEqual(cache.contents.keys, tokens(all.keys, (total - window)..<total))
    }

    func testAttendRejectsMismatchedTokensAndKeepsTheCache() throws {
        var cache = try RollingKVCache(window: 4, keyValueHeads: 1, headDimension: 4)
        let inputs = try attentionInputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: 2, keyLength: 3, headDimension: 4, seed: 1)
        XCTAssertThrowsError(try cache.attend(queries: inputs.queries, keys: inputs.keys, values: inputs.values)) {
            error in
            XCTAssertEqual(
                "\(error)",
                "queries has shape [1, 2, 2, 4] but expected [batch, queryHeads, 3, headDimension]: a cache step takes "
                    + "one query per appended token (3 keys and values were given)")
        }
        XCTAssertEqual(cache.count, 0)
        XCTAssertEqual(cache.tokenCount, 0)
    }

    /// A Float16 rolling cache whose newest 4 tokens stay in Float32, in chunks that cross the window boundary.
    func testStoredRingKeepsTheNewestTokensExactAcrossWraparound() throws {
        let (total, window, recent) = (70, 10, 4)
        let all = try attentionInputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: total, keyLength: total, headDimension: 16, seed: 29)
        guard let roundedKeys = roundedThrough(.bfloat16, all.keys),
            let roundedValues = roundedThrough(.bfloat16, all.values)
        else { return }
        var cache = try RollingKVCache(
            window: window, keyValueHeads: 1, headDimension: 16,
            storage: CacheStorage(.bfloat16, recentTokensInFloat32: recent))
        var start = 0
        for chunk in [1, 2, 3, 5, 1, 13, 1, 1, 20, 4, 19] {
            let t = start..<(start + chunk)
            _ = try cache.attend(
                queries: tokens(all.queries, t), keys: tokens(all.keys, t), values: tokens(all.values, t))
            start += chunk
            let held = Swift.max(0, start - window)..<start
            let exact = Swift.max(held.lowerBound, start - recent)
            XCTAssertEqual(
                cache.contents.keys,
                concatenateTokens([tokens(roundedKeys, held.lowerBound..<exact), tokens(all.keys, exact..<start)]))
            XCTAssertEqual(
                cache.contents.values,
                concatenateTokens([tokens(roundedValues, held.lowerBound..<exact), tokens(all.values, exact..<start)]))
            XCTAssertEqual(cache.positions, Array(held))
        }
    }

    /// With no Float32 window, a step's own token is read as given (exact) and stored in the format afterwards
    /// (CacheStorage's "New tokens"): each step's output is attention over the held tokens as stored plus the new
    /// one exact, and the held tokens are all stored in the format.
    func testAStepReadsItsNewTokenAsGivenAndStoresItAfterwards() throws {
        let (total, window) = (30, 8)
        let all = try attentionInputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: total, keyLength: total, headDimension: 32, seed: 31)
        let rounded = (roundedThrough(.int4(), all.keys)!, roundedThrough(.int4(), all.values)!)
        var cache = try RollingKVCache(window: window, keyValueHeads: 1, headDimension: 32, storage: .int4)
        for step in 0..<total {
            let t = step..<(step + 1)
            let output = try cache.attend(
                queries: tokens(all.queries, t), keys: tokens(all.keys, t), values: tokens(all.values, t))
            let seen = Swift.max(0, step + 1 - window)..<step
            let check = checkOutput(
                output, queries: tokens(all.queries, t),
                keys: concatenateTokens([tokens(rounded.0, seen), tokens(all.keys, t)]),
                values: concatenateTokens([tokens(rounded.1, seen), tokens(all.values, t)]))
            XCTAssertTrue(check.passes, "step \(step): \(check)")
            let held = Swift.max(0, step + 1 - window)..<(step + 1)
            XCTAssertEqual(bitwise(cache.contents.keys), bitwise(tokens(rounded.0, held)), "step \(step)")
            XCTAssertEqual(bitwise(cache.contents.values), bitwise(tokens(rounded.1, held)), "step \(step)")
        }
    }
}
