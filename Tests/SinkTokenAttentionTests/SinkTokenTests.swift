import SinkTokenAttention
import XCTest
import _AttentionTestSupport

final class SinkTokenTests: XCTestCase {
    /// The StreamingLLM session: 5,000 single-token steps through the cache. Every output must equal attention over
    /// exactly the sink tokens and the window, gathered from the full history and computed from scratch.
    func testFiveThousandStepStreamingSessionMatchesSinksPlusWindowFromScratch() throws {
        let (steps, sinkCount, window) = (5000, 4, 28)
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: steps, keyLength: steps, headDimension: 8, seed: 21)
        var cache = try StreamingKVCache(
            sinks: SinkTokens(count: sinkCount, window: window), keyValueHeads: 2, headDimension: 8)
        var worst = 0.0
        for step in 0..<steps {
            let t = step..<(step + 1)
            XCTAssertEqual(cache.nextCachePositions(1), [Swift.min(step, sinkCount + window - 1)])
            let output = try cache.attend(
                queries: tokens(all.queries, t), keys: tokens(all.keys, t), values: tokens(all.values, t))
            let sinks = 0..<Swift.min(sinkCount, step + 1)
            let recent = Swift.max(sinks.upperBound, step + 1 - window)..<(step + 1)
            let keys = concatenateTokens([tokens(all.keys, sinks), tokens(all.keys, recent)])
            let values = concatenateTokens([tokens(all.values, sinks), tokens(all.values, recent)])
            let check = checkOutput(output, queries: tokens(all.queries, t), keys: keys, values: values)
            worst = Swift.max(worst, check.kernelError)
            if !check.passes {
                XCTFail("step \(step): \(check)")
                return
            }
        }
        XCTAssertEqual(cache.count, sinkCount + window)
        XCTAssertEqual(cache.tokenCount, steps)
        XCTAssertEqual(cache.streamPositions, Array(0..<sinkCount) + Array((steps - window)..<steps))
        XCTAssertEqual(cache.cachePositions, 0..<(sinkCount + window))
        XCTAssertLessThan(worst, 1e-5)
    }

    func testChunkedAttendEqualsTheSinksMaskOverTheWholeSequence() throws {
        let sinks = try SinkTokens(count: 3, window: 20)
        let total = 160
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 4, queryLength: total, keyLength: total, headDimension: 16, seed: 8)
        var cache = try StreamingKVCache(sinks: sinks, keyValueHeads: 4, headDimension: 16)
        // The first chunk ends inside the sinks, the second crosses into the ring; later ones wrap it.
        let chunks = [2, 5, 20, 1, 45, 19, 68]
        XCTAssertEqual(chunks.reduce(0, +), total)
        let output = try attendInChunks(all, chunks: chunks) { try cache.attend(queries: $0, keys: $1, values: $2) }
        let check = checkOutput(
            output, queries: all.queries, keys: all.keys, values: all.values, mask: sinks.mask)
        XCTAssertTrue(check.passes, "\(check)")
        let whole = try sinks.attention(queries: all.queries, keys: all.keys, values: all.values)
        XCTAssertTrue(
            checkOutput(whole, queries: all.queries, keys: all.keys, values: all.values, mask: sinks.mask).passes)
    }

    func testSinkTokensCombineWithLearnedSinkLogits() throws {
        let sinks = try SinkTokens(count: 2, window: 6)
        let all = try attentionInputs(queryHeads: 2, queryLength: 30, keyLength: 30, headDimension: 8, seed: 3)
        let options = AttentionOptions(sinkLogits: [0.5, -1])
        var cache = try StreamingKVCache(sinks: sinks, keyValueHeads: 2, headDimension: 8)
        let output = try cache.attend(queries: all.queries, keys: all.keys, values: all.values, options: options)
        let check = checkOutput(
            output, queries: all.queries, keys: all.keys, values: all.values, mask: sinks.mask, options: options)
        XCTAssertTrue(check.passes, "\(check)")
    }

    func testHeadPoliciesEqualRunningEachHeadSeparately() throws {
        let streaming = try SinkTokens(count: 2, window: 16)
        let policies: [HeadPolicy] = [
            .full, .streaming(streaming), .streaming(try SinkTokens(count: 0, window: 5)), .full,
        ]
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 90, keyLength: 90, headDimension: 8, seed: 4)
        for kernel in [AttentionKernel.automatic, .blockwise(queryBlock: 7, keyBlock: 16), .naive] {
            let output = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, policies: policies,
                options: AttentionOptions(kernel: kernel))
            for head in 0..<4 {
                let mask: AttentionMask
                switch policies[head] {
                case .full: mask = .causal
                case .streaming(let sinks): mask = sinks.mask
                }
                let queries = try Tensor(shape: [1, 1, 90, 8]) { i in inputs.queries[0, head, i[2], i[3]] }
                let keys = try Tensor(shape: [1, 1, 90, 8]) { i in inputs.keys[0, head / 2, i[2], i[3]] }
                let values = try Tensor(shape: [1, 1, 90, 8]) { i in inputs.values[0, head / 2, i[2], i[3]] }
                let alone = try attention(queries: queries, keys: keys, values: values, mask: mask)
                let combined = Array(output.scalars[(head * 90 * 8)..<((head + 1) * 90 * 8)])
                XCTAssertLessThan(
                    maxAbsoluteError(combined, alone.scalars.map(Double.init)), 1e-5, "head \(head) \(kernel)")
                let check = checkOutput(
                    try Tensor(shape: [1, 1, 90, 8], scalars: combined), queries: queries, keys: keys, values: values,
                    mask: mask)
                XCTAssertTrue(check.passes, "head \(head) \(kernel): \(check)")
            }
        }
        XCTAssertThrowsError(
            try attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values, policies: [.full])
        ) { error in
            XCTAssertEqual("\(error)", "options.headMasks.count is 1 but expected 4 (one per query head)")
        }
    }

    func testInvalidDescriptorsThrow() {
        XCTAssertThrowsError(try SinkTokens(count: -1, window: 4)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "count")
        }
        XCTAssertThrowsError(try SinkTokens(count: 4, window: 0)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "window")
        }
    }

    /// A quantized StreamingLLM cache: sinks and the newest 3 tokens in Float32, the rest of the window in 4-bit
    /// blocks. At every step the output must equal the reference over exactly those values: the sinks and the
    /// 3 newest cached tokens (and the new one) exact, the older window tokens rounded as int4 defines it.
    func testQuantizedSessionKeepsSinksAndTheNewestTokensExact() throws {
        // With `sinksInFloat32` (the default) the sinks are exact; without, they are stored in the format like the
        // window's older tokens. The 3 newest window tokens are exact either way. A step reads its own new token as
        // given (Float32) and stores it afterwards, so its attention sees the 3 held exact tokens plus the new one.
        let (steps, sinkCount, window, recent) = (80, 2, 9, 3)
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: steps, keyLength: steps, headDimension: 32, seed: 23)
        let rounded = (roundedThrough(.int4(), all.keys)!, roundedThrough(.int4(), all.values)!)
        for sinksExact in [true, false] {
            let sinkSource = sinksExact ? (all.keys, all.values) : rounded
            /// Sinks, the window's rounded tokens, then its exact ones up to `step`; the newest exact if `asGiven`.
            func held(_ step: Int, exactFrom: Int, asGiven: Bool) -> (keys: Tensor, values: Tensor) {
                let sinks = 0..<Swift.min(sinkCount, step + 1)
                let windowStart = Swift.max(sinks.upperBound, step + 1 - window)
                let exactStart = Swift.max(windowStart, exactFrom)
                let storedSinks = asGiven && step < sinkCount ? 0..<step : sinks
                func rows(_ source: Tensor, _ roundedSource: Tensor, _ sinkTensor: Tensor) -> Tensor {
                    concatenateTokens([
                        tokens(sinkTensor, storedSinks), tokens(source, storedSinks.upperBound..<sinks.upperBound),
                        tokens(roundedSource, windowStart..<exactStart), tokens(source, exactStart..<(step + 1)),
                    ])
                }
                return (rows(all.keys, rounded.0, sinkSource.0), rows(all.values, rounded.1, sinkSource.1))
            }
            var cache = try StreamingKVCache(
                sinks: SinkTokens(count: sinkCount, window: window), keyValueHeads: 2, headDimension: 32,
                storage: CacheStorage(.int4(), recentTokensInFloat32: recent, sinksInFloat32: sinksExact))
            for step in 0..<steps {
                let t = step..<(step + 1)
                let output = try cache.attend(
                    queries: tokens(all.queries, t), keys: tokens(all.keys, t), values: tokens(all.values, t))
                let seen = held(step, exactFrom: step - recent, asGiven: true)
                let stored = held(step, exactFrom: step + 1 - recent, asGiven: false)
                let label = "step \(step), sinks exact \(sinksExact)"
                XCTAssertEqual(bitwise(cache.contents.keys), bitwise(stored.keys), label)
                XCTAssertEqual(bitwise(cache.contents.values), bitwise(stored.values), label)
                let check = checkOutput(output, queries: tokens(all.queries, t), keys: seen.keys, values: seen.values)
                if !check.passes {
                    XCTFail("\(label): \(check)")
                    return
                }
            }
            // Held now: 2 sinks, 6 window tokens in int4, the 3 newest exact.
            let finalKeys = concatenateTokens([
                tokens(sinkSource.0, 0..<2), tokens(rounded.0, (steps - 9)..<(steps - 3)),
                tokens(all.keys, (steps - 3)..<steps),
            ])
            XCTAssertEqual(bitwise(cache.contents.keys), bitwise(finalKeys), "sinks exact \(sinksExact)")
            XCTAssertEqual(cache.streamPositions, Array(0..<2) + Array((steps - 9)..<steps))
        }
    }
}
