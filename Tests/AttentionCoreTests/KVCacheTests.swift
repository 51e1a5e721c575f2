import AttentionCore
import XCTest
import _AttentionTestSupport

final class KVCacheTests: XCTestCase {
    func testChunkedAppendsThenAttentionMatchReferenceOverAllTokens() throws {
        let all = try attentionInputs(
            batch: 2, queryHeads: 6, keyValueHeads: 3, queryLength: 5, keyLength: 150, headDimension: 16,
            valueDimension: 12, seed: 11)
        var cache = try KVCache(batch: 2, keyValueHeads: 3, headDimension: 16, valueDimension: 12)
        var start = 0
        for chunk in [1, 1, 7, 30, 1, 64, 41, 5] {
            try cache.append(
                keys: tokens(all.keys, start..<(start + chunk)), values: tokens(all.values, start..<(start + chunk)))
            start += chunk
        }
        XCTAssertEqual(cache.count, 150)
        XCTAssertEqual(cache.contents.keys, all.keys)
        XCTAssertEqual(cache.contents.values, all.values)
        for (mask, kernel) in [
            (AttentionMask.causal, AttentionKernel.automatic), (.none, .blockwise()), (.causal, .naive),
        ] {
            let output = try cache.attention(
                queries: all.queries, mask: mask, options: AttentionOptions(kernel: kernel))
            let check = checkOutput(output, queries: all.queries, keys: all.keys, values: all.values, mask: mask)
            XCTAssertTrue(check.passes, "\(check) \(mask) \(kernel)")
        }
    }

    func testStepwiseDecodeEqualsReferenceAndGrowthIsAmortized() throws {
        let steps = 300
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: steps, keyLength: steps, headDimension: 8, seed: 12)
        var cache = try KVCache(keyValueHeads: 2, headDimension: 8, reservesAddressSpace: false)
        XCTAssertFalse(cache.growsInPlace)
        var capacities: Set<Int> = []
        for step in 0..<steps {
            try cache.append(keys: tokens(all.keys, step..<(step + 1)), values: tokens(all.values, step..<(step + 1)))
            capacities.insert(cache.capacity)
            let query = tokens(all.queries, step..<(step + 1))
            let output = try cache.attention(queries: query)
            let check = checkOutput(
                output, queries: query, keys: tokens(all.keys, 0..<(step + 1)),
                values: tokens(all.values, 0..<(step + 1)))
            XCTAssertTrue(check.passes, "step \(step): \(check)")
        }
        // Doubling from 16: 16, 32, 64, 128, 256, 512 - six allocations for 300 appends.
        XCTAssertEqual(capacities.sorted(), [16, 32, 64, 128, 256, 512])
    }

    func testBadAppendsThrowAndLeaveTheCacheUnchanged() throws {
        var cache = try KVCache(keyValueHeads: 2, headDimension: 8)
        let good = try attentionInputs(queryHeads: 2, queryLength: 1, keyLength: 3, headDimension: 8, seed: 1)
        try cache.append(keys: good.keys, values: good.values)
        let wrongHeads = try Tensor(zeros: [1, 3, 1, 8])
        XCTAssertThrowsError(try cache.append(keys: wrongHeads, values: wrongHeads)) { error in
            XCTAssertEqual(
                "\(error)",
                "keys has shape [1, 3, 1, 8] but expected [1, 2, n, 8]: appended keys must match the cache's batch, "
                    + "key/value heads and key dimension")
        }
        XCTAssertThrowsError(
            try cache.append(keys: try Tensor(zeros: [1, 2, 2, 8]), values: try Tensor(zeros: [1, 2, 1, 8]))
        ) {
            error in XCTAssertEqual((error as? AttentionError)?.argument, "values")
        }
        XCTAssertEqual(cache.count, 3)
        XCTAssertThrowsError(try cache.attention(queries: try Tensor(zeros: [1, 3, 1, 8]))) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "queries")
        }
        XCTAssertThrowsError(try cache.attention(queries: try Tensor(zeros: [1, 2, 1, 7]))) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "queries")
        }
        XCTAssertThrowsError(try KVCache(keyValueHeads: 0, headDimension: 8)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "keyValueHeads")
        }
        XCTAssertThrowsError(try KVCache(keyValueHeads: 1, headDimension: 8, reservingCapacity: -1))
    }

    func testEmptyCacheGivesZeros() throws {
        let cache = try KVCache(keyValueHeads: 1, headDimension: 4)
        let result = try cache.partialAttention(queries: try Tensor(shape: [1, 2, 1, 4], repeating: 1))
        XCTAssertEqual(result.output.scalars, [Float](repeating: 0, count: 8))
        XCTAssertEqual(result.logSumExp.scalars, [-.infinity, -.infinity])
    }
}
