import AttentionCore
import XCTest
import _AttentionTestSupport

/// The paged cache (`PagedKVCache`): a batch of sequences of different lengths against the Float64 reference of
/// each sequence alone (decode and chunked prefill, odd block sizes), bitwise against contiguous `KVCache`s on the
/// same data for 64-multiple blocks and every thread count, block reuse after removal, and the errors.
final class PagedKVCacheTests: XCTestCase {
    /// Packed [n, H, d] rows of every sequence, seeded: the tokens each sequence will hold.
    func sequenceRows(lengths: [Int], heads: Int, dimension: Int, seed: UInt64) throws -> [Tensor] {
        try lengths.enumerated().map { index, n in
            try Tensor.randomNormal(shape: [n, heads, dimension], seed: seed + UInt64(index))
        }
    }

    /// Tokens `range` of packed [n, H, d] rows as a packed tensor.
    func rows(_ packed: Tensor, _ range: Range<Int>) -> Tensor {
        let row = packed.shape[1] * packed.shape[2]
        return try! Tensor(
            shape: [range.count, packed.shape[1], packed.shape[2]],
            scalars: Array(packed.scalars[(range.lowerBound * row)..<(range.upperBound * row)]))
    }

    /// Packed tensors joined along the tokens.
    func joined(_ parts: [Tensor], heads: Int, dimension: Int) -> Tensor {
        let total = parts.reduce(0) { $0 + $1.shape[0] }
        return try! Tensor(shape: [total, heads, dimension], scalars: parts.flatMap(\.scalars))
    }

    /// Fills a paged cache with `keys` / `values` per sequence, mixing single-sequence chunks and batched appends
    /// (so blocks of different sequences interleave in the pool), and returns the sequences.
    func fill(
        _ cache: inout PagedKVCache, keys: [Tensor], values: [Tensor], chunk: Int
    ) throws -> [PagedKVCache.SequenceID] {
        let ids = keys.map { _ in cache.addSequence() }
        var held = Array(repeating: 0, count: keys.count)
        while zip(held, keys).contains(where: { $0 < $1.shape[0] }) {
            // A batched append of up to `chunk` tokens for every unfinished sequence, then one token for the first.
            var batch: [(Int, Range<Int>)] = []
            for (i, k) in keys.enumerated() where held[i] < k.shape[0] {
                batch.append((i, held[i]..<Swift.min(k.shape[0], held[i] + chunk)))
            }
            try cache.append(
                keys: joined(
                    batch.map { rows(keys[$0.0], $0.1) }, heads: cache.keyValueHeads, dimension: cache.headDimension),
                values: joined(
                    batch.map { rows(values[$0.0], $0.1) }, heads: cache.keyValueHeads, dimension: cache.valueDimension),
                sequences: batch.map { ids[$0.0] }, tokenCounts: batch.map { $0.1.count })
            for (i, range) in batch { held[i] = range.upperBound }
            if let (i, _) = batch.first, held[i] < keys[i].shape[0] {
                let one = held[i]..<(held[i] + 1)
                try cache.append(
                    keys: headMajor(keys[i], one), values: headMajor(values[i], one), to: ids[i])
                held[i] += 1
            }
        }
        for (id, k) in zip(ids, keys) { XCTAssertEqual(try cache.count(of: id), k.shape[0]) }
        return ids
    }

    func testBatchMatchesEachSequencesReference() throws {
        // Block sizes that cut the kernel's tiles (5, 16) and one that keeps them whole; chunked prefill (several
        // queries per sequence) and decode; sequences of 0 to 300 tokens.
        let lengths = [37, 1, 0, 300, 64, 129]
        let (hq, hkv, dk, dv) = (6, 2, 13, 9)
        let keys = try sequenceRows(lengths: lengths, heads: hkv, dimension: dk, seed: 11)
        let values = try sequenceRows(lengths: lengths, heads: hkv, dimension: dv, seed: 31)
        for blockSize in [5, 16, 64] {
            var cache = try PagedKVCache(
                blockCount: 200, blockSize: blockSize, keyValueHeads: hkv, headDimension: dk, valueDimension: dv)
            let ids = try fill(&cache, keys: keys, values: values, chunk: 23)
            for queryCounts in [[1, 1, 0, 1, 1, 1], [5, 1, 0, 17, 64, 2]] {
                let sequences = try PackedSequences(queryLengths: queryCounts, keyLengths: lengths)
                let queries = try Tensor.randomNormal(shape: [queryCounts.reduce(0, +), hq, dk], seed: 7)
                for mask in [AttentionMask.causal, .none, .window(left: 9, right: 0)] {
                    let options = AttentionOptions(softcap: 5, sinkLogits: [0, 1, -1, 0.5, 2, -2])
                    let result = try cache.attention(
                        queries: queries, sequences: ids, queryCounts: queryCounts, mask: mask, options: options)
                    XCTAssertEqual(result.output.shape, [queryCounts.reduce(0, +), hq, dv])
                    let failures = packedReferenceFailures(
                        result, queries: queries, keys: joined(keys, heads: hkv, dimension: dk),
                        values: joined(values, heads: hkv, dimension: dv), sequences: sequences, mask: mask,
                        options: options)
                    XCTAssertEqual(failures, [], "block \(blockSize) queries \(queryCounts) \(mask)")
                }
            }
        }
    }

    func testDecodeEqualsContiguousCachesBitwise() throws {
        // Blocks of 64 and 128 keep every tile and key split of a contiguous cache: one step over all sequences
        // equals each sequence's own KVCache bitwise, for every thread count and stored format.
        let lengths = [1, 63, 64, 65, 700, 2049]
        let (hq, hkv, d) = (8, 2, 32)
        let keys = try sequenceRows(lengths: lengths, heads: hkv, dimension: d, seed: 41)
        let values = try sequenceRows(lengths: lengths, heads: hkv, dimension: d, seed: 61)
        let queries = try Tensor.randomNormal(shape: [lengths.count, hq, d], seed: 3)
        for format in [StorageFormat.float32, .float16, .int8()] {
            var expected: [Float] = []
            for (i, (k, v)) in zip(keys, values).enumerated() {
                var contiguous = try KVCache(keyValueHeads: hkv, headDimension: d, storage: CacheStorage(format))
                try contiguous.append(keys: headMajor(k, 0..<k.shape[0]), values: headMajor(v, 0..<v.shape[0]))
                let q = headMajor(rows(queries, i..<(i + 1)), 0..<1)
                expected += try contiguous.attention(queries: q).scalars
            }
            for blockSize in [64, 128] {
                var cache = try PagedKVCache(
                    blockCount: 60, blockSize: blockSize, keyValueHeads: hkv, headDimension: d, format: format)
                let ids = try fill(&cache, keys: keys, values: values, chunk: 97)
                for threads in [1, 2] {
                    let result = try cache.attention(
                        queries: queries, sequences: ids, options: AttentionOptions(threads: threads))
                    XCTAssertEqual(
                        bitwise(result.output.scalars), bitwise(expected),
                        "\(format) block \(blockSize) threads \(threads)")
                }
            }
        }
    }

    func testRemovedSequencesBlocksAreReused() throws {
        let (hkv, d) = (1, 8)
        var cache = try PagedKVCache(blockCount: 6, blockSize: 4, keyValueHeads: hkv, headDimension: d)
        let keys = try sequenceRows(lengths: [10, 13], heads: hkv, dimension: d, seed: 90)
        let values = try sequenceRows(lengths: [10, 13], heads: hkv, dimension: d, seed: 95)
        let a = cache.addSequence()
        try cache.append(keys: headMajor(keys[0], 0..<10), values: headMajor(values[0], 0..<10), to: a)
        XCTAssertEqual(cache.freeBlockCount, 3)
        // 13 tokens need 4 blocks: the pool is exhausted until `a` is removed, and a failed append changes nothing.
        let b = cache.addSequence()
        XCTAssertThrowsError(
            try cache.append(keys: headMajor(keys[1], 0..<13), values: headMajor(values[1], 0..<13), to: b)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "blockCount")
        }
        XCTAssertEqual(try cache.count(of: b), 0)
        XCTAssertEqual(cache.freeBlockCount, 3)
        let blocksOfA = Set(try cache.blockTable(of: a))
        cache.removeSequence(a)
        XCTAssertEqual(cache.freeBlockCount, 6)
        try cache.append(keys: headMajor(keys[1], 0..<13), values: headMajor(values[1], 0..<13), to: b)
        XCTAssertFalse(blocksOfA.isDisjoint(with: try cache.blockTable(of: b)), "freed blocks are handed out again")
        XCTAssertEqual(cache.sequences, [b])
        // The reused blocks hold b's tokens: attention equals the reference over them.
        let queries = try Tensor.randomNormal(shape: [1, 2, d], seed: 4)
        let result = try cache.attention(queries: queries, sequences: [b])
        let failures = packedReferenceFailures(
            result, queries: queries, keys: keys[1], values: values[1],
            sequences: try PackedSequences(queryLengths: [1], keyLengths: [13]), mask: .causal,
            options: AttentionOptions())
        XCTAssertEqual(failures, [])
    }

    func testBadInputNamesTheArgument() throws {
        var cache = try PagedKVCache(blockCount: 4, blockSize: 8, keyValueHeads: 2, headDimension: 4)
        let a = cache.addSequence()
        try cache.append(
            keys: Tensor(zeros: [1, 2, 3, 4]), values: Tensor(zeros: [1, 2, 3, 4]), to: a)
        let removed = cache.addSequence()
        cache.removeSequence(removed)
        let unknown = PagedKVCache.SequenceID(id: 99)
        func argument(_ body: () throws -> Void) -> String? {
            do {
                try body()
                return nil
            } catch {
                return (error as? AttentionError)?.argument ?? "not an AttentionError"
            }
        }
        let query = try Tensor(zeros: [1, 4, 4])
        XCTAssertEqual(argument { _ = try cache.attention(queries: query, sequences: [removed]) }, "sequences[0]")
        XCTAssertEqual(argument { _ = try cache.count(of: unknown) }, "sequence")
        XCTAssertEqual(
            argument {
                try cache.append(keys: Tensor(zeros: [1, 2, 1, 4]), values: Tensor(zeros: [1, 2, 1, 4]), to: unknown)
            },
            "sequence")
        XCTAssertEqual(
            argument {
                try cache.append(keys: Tensor(zeros: [1, 3, 1, 4]), values: Tensor(zeros: [1, 3, 1, 4]), to: a)
            },
            "keys")
        XCTAssertEqual(
            argument {
                try cache.append(keys: Tensor(zeros: [1, 2, 1, 4]), values: Tensor(zeros: [1, 2, 2, 4]), to: a)
            },
            "values")
        XCTAssertEqual(
            argument {
                try cache.append(keys: Tensor(zeros: [2, 2, 4]), values: Tensor(zeros: [2, 2, 4]), sequences: [a, a])
            }, "sequences[1]")
        XCTAssertEqual(
            argument {
                try cache.append(
                    keys: Tensor(zeros: [2, 2, 4]), values: Tensor(zeros: [2, 2, 4]), sequences: [a], tokenCounts: [-1])
            }, "tokenCounts[0]")
        // 3 + 30 tokens need 5 blocks of 8; the pool has 4.
        XCTAssertEqual(
            argument {
                try cache.append(keys: Tensor(zeros: [1, 2, 30, 4]), values: Tensor(zeros: [1, 2, 30, 4]), to: a)
            }, "blockCount")
        XCTAssertEqual(try cache.count(of: a), 3)
        XCTAssertEqual(
            argument { _ = try cache.attention(queries: Tensor(zeros: [2, 4, 4]), sequences: [a]) }, "queries")
        XCTAssertEqual(
            argument { _ = try cache.attention(queries: Tensor(zeros: [1, 3, 4]), sequences: [a]) }, "queries")
        XCTAssertEqual(
            argument { _ = try cache.attention(queries: query, sequences: [a], queryCounts: [1, 1]) },
            "queryCounts.count")
        XCTAssertEqual(
            argument {
                _ = try cache.attention(queries: query, sequences: [a], options: AttentionOptions(kernel: .naive))
            }, "options.kernel")
        XCTAssertEqual(
            argument {
                _ = try cache.attention(
                    queries: query, sequences: [a],
                    options: AttentionOptions(keyPadding: .lengths([1])))
            }, "options.keyPadding")
        XCTAssertEqual(
            argument { _ = try PagedKVCache(blockCount: 0, keyValueHeads: 1, headDimension: 4) }, "blockCount")
        XCTAssertEqual(
            argument { _ = try PagedKVCache(blockCount: 1, blockSize: 0, keyValueHeads: 1, headDimension: 4) },
            "blockSize")
    }
}
