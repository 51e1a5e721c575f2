import Attention
import XCTest
import _AttentionTestSupport

/// The three single-sequence caches driven through one generic decode loop over `KeyValueCache`: each gives its own
/// mask's attention over the whole sequence, and the shared properties mean the same for all.
final class KeyValueCacheProtocolTests: XCTestCase {
    /// Runs `all`'s tokens through `cache` in chunks, generically, and returns the outputs joined along the tokens.
    private func decode<Cache: KeyValueCache>(
        _ cache: inout Cache, _ all: (queries: Tensor, keys: Tensor, values: Tensor), chunks: [Int]
    ) throws -> Tensor {
        var outputs: [Tensor] = []
        var start = 0
        for chunk in chunks {
            let t = start..<(start + chunk)
            outputs.append(
                try cache.attend(
                    queries: tokens(all.queries, t), keys: tokens(all.keys, t), values: tokens(all.values, t)))
            start += chunk
        }
        return concatenateTokens(outputs)
    }

    /// Checks one cache after `total` tokens: output against the reference under `mask`, the shared properties,
    /// and `removeAll`.
    private func check<Cache: KeyValueCache>(
        _ cache: inout Cache, mask: AttentionMask, held: Int, storage: CacheStorage, name: String
    ) throws {
        let total = 23
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: total, keyLength: total, headDimension: 16, seed: 41)
        let output = try decode(&cache, all, chunks: [1, 5, 1, 1, 9, 6])
        let result = checkOutput(output, queries: all.queries, keys: all.keys, values: all.values, mask: mask)
        XCTAssertTrue(result.passes, "\(name): \(result)")
        XCTAssertEqual(cache.count, held, name)
        XCTAssertEqual(cache.tokenCount, total, name)
        XCTAssertEqual(cache.contents.keys.shape, [1, 2, held, 16], name)
        XCTAssertEqual(cache.storage, storage, name)
        XCTAssertGreaterThan(cache.storageBytes, 0, name)
        cache.removeAll()
        XCTAssertEqual(cache.count, 0, name)
        XCTAssertEqual(cache.tokenCount, 0, name)
        // After removeAll the cache starts over: appending the first token then attending the second sees both.
        try cache.append(keys: tokens(all.keys, 0..<1), values: tokens(all.values, 0..<1))
        let second = try cache.attend(
            queries: tokens(all.queries, 1..<2), keys: tokens(all.keys, 1..<2), values: tokens(all.values, 1..<2))
        let firstTwo = checkOutput(
            second, queries: tokens(all.queries, 1..<2), keys: tokens(all.keys, 0..<2),
            values: tokens(all.values, 0..<2), mask: .causal)
        XCTAssertTrue(firstTwo.passes, "\(name) after removeAll: \(firstTwo)")
    }

    func testEveryCacheRunsTheSameGenericDecodeLoop() throws {
        var full = try KVCache(keyValueHeads: 2, headDimension: 16)
        try check(&full, mask: .causal, held: 23, storage: .float32, name: "KVCache")
        var rolling = try RollingKVCache(window: 5, keyValueHeads: 2, headDimension: 16)
        try check(&rolling, mask: .window(left: 4, right: 0), held: 5, storage: .float32, name: "RollingKVCache")
        let sinks = try SinkTokens(count: 2, window: 6)
        var streaming = try StreamingKVCache(sinks: sinks, keyValueHeads: 2, headDimension: 16)
        try check(&streaming, mask: sinks.mask, held: 8, storage: .float32, name: "StreamingKVCache")
    }

    /// KVCache's `attend` validates everything before it stores: a bad query leaves the cache as it was.
    func testKVCacheAttendLeavesTheCacheUnchangedOnBadInput() throws {
        var cache = try KVCache(keyValueHeads: 2, headDimension: 8)
        let good = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 3, keyLength: 3, headDimension: 8, seed: 2)
        _ = try cache.attend(queries: good.queries, keys: good.keys, values: good.values)
        XCTAssertThrowsError(
            try cache.attend(queries: try Tensor(zeros: [1, 3, 3, 8]), keys: good.keys, values: good.values)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "queries")
        }
        XCTAssertThrowsError(
            try cache.attend(queries: tokens(good.queries, 0..<2), keys: good.keys, values: good.values)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "queries")
        }
        XCTAssertEqual(cache.count, 3)
        XCTAssertEqual(cache.contents.keys, good.keys)
    }
}
