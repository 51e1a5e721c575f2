import AttentionCore
import XCTest
import _AttentionTestSupport

/// Rotary embedding fused into the caches: keys rotated by their position as they are appended (in chunks, so
/// positions must carry on), queries by the positions of the newest tokens, against the Float64 reference on the
/// rotated tensors (`RotaryEmbedding.apply` itself is checked against the textbook rotation in
/// RotaryEmbeddingTests); the paged cache bitwise against `KVCache`; and the errors.
final class FusedRotaryTests: XCTestCase {
    func testKVCacheRotatesKeysOnAppendAndQueriesOnAttention() throws {
        let (hq, hkv, d, n) = (4, 2, 12, 70)
        let keys = try Tensor.randomNormal(shape: [2, hkv, n, d], seed: 1)
        let values = try Tensor.randomNormal(shape: [2, hkv, n, d], seed: 2)
        let queries = try Tensor.randomNormal(shape: [2, hq, 3, d], seed: 3)
        for rope in [
            try RotaryEmbedding(pairing: .halves, base: 500_000),
            try RotaryEmbedding(pairing: .interleaved, rotaryDimension: 8, scaling: .linear(factor: 2)),
        ] {
            var cache = try KVCache(batch: 2, keyValueHeads: hkv, headDimension: d, rotary: rope)
            var held = 0
            for chunk in [1, 16, 0, 53] {
                try cache.append(
                    keys: tokens(keys, held..<(held + chunk)), values: tokens(values, held..<(held + chunk)))
                held += chunk
            }
            let rotatedKeys = try rope.apply(to: keys, positions: Array(0..<n))
            XCTAssertEqual(cache.contents.keys, rotatedKeys, "keys rotated once, at their own positions")
            let rotatedQueries = try rope.apply(to: queries, positions: [n - 3, n - 2, n - 1])
            let output = try cache.attention(queries: queries)
            let check = checkOutput(
                output, queries: rotatedQueries, keys: rotatedKeys, values: values, mask: .causal)
            XCTAssertTrue(check.passes, "\(check)")
            // The same as a plain cache fed the rotated tensors.
            var plain = try KVCache(batch: 2, keyValueHeads: hkv, headDimension: d)
            try plain.append(keys: rotatedKeys, values: values)
            XCTAssertEqual(bitwise(output), bitwise(try plain.attention(queries: rotatedQueries)))
        }
    }

    func testPagedCacheRotatesLikeKVCache() throws {
        let rope = try RotaryEmbedding(pairing: .halves, scaling: .yarn(factor: 4, originalContextLength: 64))
        let (hq, hkv, d) = (4, 2, 16)
        let lengths = [5, 130, 64]
        var paged = try PagedKVCache(blockCount: 10, blockSize: 64, keyValueHeads: hkv, headDimension: d, rotary: rope)
        var expected: [Float] = []
        var ids: [PagedKVCache.SequenceID] = []
        let queries = try Tensor.randomNormal(shape: [lengths.count, hq, d], seed: 9)
        for (i, n) in lengths.enumerated() {
            let keys = try Tensor.randomNormal(shape: [1, hkv, n, d], seed: 10 + UInt64(i))
            let values = try Tensor.randomNormal(shape: [1, hkv, n, d], seed: 20 + UInt64(i))
            var contiguous = try KVCache(keyValueHeads: hkv, headDimension: d, rotary: rope)
            try contiguous.append(keys: keys, values: values)
            let q = try Tensor(
                shape: [1, hq, 1, d], scalars: Array(queries.scalars[(i * hq * d)..<((i + 1) * hq * d)]))
            expected += try contiguous.attention(queries: q).scalars
            // The paged cache gets all but the last token alone, the last one in a batched append below.
            let id = paged.addSequence()
            try paged.append(keys: tokens(keys, 0..<(n - 1)), values: tokens(values, 0..<(n - 1)), to: id)
            ids.append(id)
        }
        // Last tokens of every sequence, packed [3, hkv, d], in one append: each at its own sequence's position.
        var lastKeys: [Float] = []
        var lastValues: [Float] = []
        for (i, n) in lengths.enumerated() {
            let keys = try Tensor.randomNormal(shape: [1, hkv, n, d], seed: 10 + UInt64(i))
            let values = try Tensor.randomNormal(shape: [1, hkv, n, d], seed: 20 + UInt64(i))
            lastKeys += packedRows(keys, batch: 0, (n - 1)..<n)
            lastValues += packedRows(values, batch: 0, (n - 1)..<n)
        }
        try paged.append(
            keys: Tensor(shape: [3, hkv, d], scalars: lastKeys),
            values: Tensor(shape: [3, hkv, d], scalars: lastValues),
            sequences: ids)
        XCTAssertEqual(bitwise(try paged.attention(queries: queries, sequences: ids).output.scalars), bitwise(expected))
    }

    func testRotaryErrorsNameTheArgument() throws {
        func argument(_ body: () throws -> Void) -> String? {
            do { try body() } catch let error as AttentionError { return error.argument } catch { return "\(error)" }
            return nil
        }
        let wide = try RotaryEmbedding(pairing: .halves, rotaryDimension: 16)
        XCTAssertEqual(
            argument { _ = try KVCache(keyValueHeads: 1, headDimension: 8, rotary: wide) }, "rotary.rotaryDimension")
        XCTAssertEqual(
            argument { _ = try PagedKVCache(blockCount: 1, keyValueHeads: 1, headDimension: 8, rotary: wide) },
            "rotary.rotaryDimension")
        let rope = try RotaryEmbedding(pairing: .halves)
        var cache = try KVCache(keyValueHeads: 1, headDimension: 8, rotary: rope)
        try cache.append(keys: Tensor(zeros: [1, 1, 2, 8]), values: Tensor(zeros: [1, 1, 2, 8]))
        XCTAssertEqual(argument { _ = try cache.attention(queries: Tensor(zeros: [1, 1, 3, 8])) }, "queries")
        var paged = try PagedKVCache(blockCount: 2, keyValueHeads: 1, headDimension: 8, rotary: rope)
        let id = paged.addSequence()
        try paged.append(keys: Tensor(zeros: [1, 1, 2, 8]), values: Tensor(zeros: [1, 1, 2, 8]), to: id)
        XCTAssertEqual(
            argument { _ = try paged.attention(queries: Tensor(zeros: [3, 1, 8]), sequences: [id], queryCounts: [3]) },
            "queryCounts[0]")
    }
}
