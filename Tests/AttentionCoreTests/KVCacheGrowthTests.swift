import AttentionCore
import XCTest
import _AttentionTestSupport

/// KVCache growth: in place inside its reservation of address space (no copy, storage never moves), by one move
/// past it, copy-on-write between copies, and committed memory that follows the tokens.
final class KVCacheGrowthTests: XCTestCase {
    /// Whether this platform reserves address space by default (the documented platforms).
    private var reservesByDefault: Bool {
        #if os(Linux) || os(macOS)
            return true
        #else
            return false
        #endif
    }

    /// Appends `all`'s tokens in chunks of the given sizes (cycled) and returns the key storage address after each.
    private func append(
        _ all: (queries: Tensor, keys: Tensor, values: Tensor), to cache: inout KVCache, chunks: [Int]
    ) throws -> [UInt] {
        var addresses: [UInt] = []
        var start = 0
        var next = 0
        let total = all.keys.shape[2]
        while start < total {
            let end = Swift.min(total, start + chunks[next % chunks.count])
            try cache.append(keys: tokens(all.keys, start..<end), values: tokens(all.values, start..<end))
            addresses.append(cache.keyStorageAddress)
            start = end
            next += 1
        }
        return addresses
    }

    /// 20,000 tokens of one head at d 128 (10 MiB of keys, past the 8 MiB at which huge pages are advised) go into
    /// a cache reserved for 40,000: the storage never moves, the capacity never changes, the committed bytes stay
    /// within a huge page per head and row kind of the tokens' bytes, and attention matches the reference.
    func testAppendsWithinTheReservationNeverMoveTheStorage() throws {
        try XCTSkipUnless(reservesByDefault, "no reservation by default on this platform")
        let n = 20_000
        let all = try attentionInputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: 3, keyLength: n, headDimension: 128, seed: 31)
        var cache = try KVCache(keyValueHeads: 1, headDimension: 128, maximumCapacity: 40_000)
        XCTAssertTrue(cache.growsInPlace)
        let capacity = cache.capacity
        XCTAssertGreaterThanOrEqual(capacity, 40_000)
        XCTAssertLessThan(cache.storageBytes, 3 * 4096, "an empty reservation commits nothing")
        let addresses = try append(all, to: &cache, chunks: [1, 7, 300, 1, 64, 2048])
        XCTAssertEqual(Set(addresses).count, 1, "the storage moved")
        XCTAssertEqual(cache.capacity, capacity)
        let tokenBytes = cache.bytesPerToken * n
        XCTAssertGreaterThanOrEqual(cache.storageBytes, tokenBytes)
        XCTAssertLessThanOrEqual(cache.storageBytes, tokenBytes + 2 * (1 << 21))
        XCTAssertEqual(cache.contents.keys, all.keys)
        XCTAssertEqual(cache.contents.values, all.values)
        let output = try cache.attention(queries: all.queries)
        let check = checkOutput(output, queries: all.queries, keys: all.keys, values: all.values, mask: .causal)
        XCTAssertTrue(check.passes, "\(check)")
    }

    /// Past its reservation (4,096 slots: the smallest for 512-byte rows, whole 2 MiB pages per head) the cache
    /// moves once, into a reservation twice as large, and stays exact, for Float32 and an 8-bit format.
    func testAppendsPastTheReservationMoveOnceAndStayExact() throws {
        try XCTSkipUnless(reservesByDefault, "no reservation by default on this platform")
        let n = 5_000
        let all = try attentionInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 2, keyLength: n, headDimension: 128, seed: 32)
        var cache = try KVCache(batch: 2, keyValueHeads: 2, headDimension: 128, maximumCapacity: 1)
        XCTAssertEqual(cache.capacity, 4096)
        let addresses = try append(all, to: &cache, chunks: [500, 1, 999])
        XCTAssertEqual(Set(addresses).count, 2, "one move past the reservation")
        XCTAssertTrue(cache.growsInPlace)
        XCTAssertEqual(cache.capacity, 8192)
        XCTAssertEqual(cache.contents.keys, all.keys)
        XCTAssertEqual(cache.contents.values, all.values)
        let output = try cache.attention(queries: all.queries)
        let check = checkOutput(output, queries: all.queries, keys: all.keys, values: all.values, mask: .causal)
        XCTAssertTrue(check.passes, "\(check)")

        // An 8-bit cache (144-byte rows: its reservation rounds up to 131,072 slots, whole 2 MiB pages per head)
        // holds the format's rounding of the inputs, equal to that of a cache that doubles an array.
        var quantized = try KVCache(
            batch: 2, keyValueHeads: 2, headDimension: 128, maximumCapacity: 1,
            storage: CacheStorage(.int8(blockSize: 32)))
        var doubling = try KVCache(
            batch: 2, keyValueHeads: 2, headDimension: 128, storage: CacheStorage(.int8(blockSize: 32)),
            reservesAddressSpace: false)
        XCTAssertEqual(quantized.capacity, 131_072)
        XCTAssertEqual(Set(try append(all, to: &quantized, chunks: [700, 3])).count, 1)
        _ = try append(all, to: &doubling, chunks: [700, 3])
        XCTAssertFalse(doubling.growsInPlace)
        XCTAssertEqual(quantized.contents.keys, doubling.contents.keys)
        XCTAssertEqual(quantized.contents.values, doubling.contents.values)
        XCTAssertEqual(
            try quantized.attention(queries: all.queries), try doubling.attention(queries: all.queries))
    }

    /// A copy shares the storage until either side writes; then each holds its own tokens, whichever side writes
    /// first, for a reserved and a doubling cache.
    func testCopiesAreIndependentAfterAWrite() throws {
        let all = try attentionInputs(
            queryHeads: 2, keyValueHeads: 2, queryLength: 1, keyLength: 30, headDimension: 8, seed: 33)
        for reserves in [true, false] {
            var original = try KVCache(keyValueHeads: 2, headDimension: 8, reservesAddressSpace: reserves)
            try original.append(keys: tokens(all.keys, 0..<10), values: tokens(all.values, 0..<10))
            var copy = original
            XCTAssertEqual(copy.keyStorageAddress, original.keyStorageAddress)
            try copy.append(keys: tokens(all.keys, 10..<20), values: tokens(all.values, 10..<20))
            XCTAssertNotEqual(copy.keyStorageAddress, original.keyStorageAddress)
            XCTAssertEqual(original.contents.keys, tokens(all.keys, 0..<10))
            XCTAssertEqual(copy.contents.keys, tokens(all.keys, 0..<20))

            var second = original
            try original.append(keys: tokens(all.keys, 20..<30), values: tokens(all.values, 20..<30))
            XCTAssertEqual(second.contents.values, tokens(all.values, 0..<10))
            try second.append(keys: tokens(all.keys, 10..<11), values: tokens(all.values, 10..<11))
            XCTAssertEqual(second.contents.values, tokens(all.values, 0..<11))
            // The original holds tokens 0..<10, then 20..<30.
            let expected = concatenateTokens([tokens(all.values, 0..<10), tokens(all.values, 20..<30)])
            XCTAssertEqual(original.contents.values, expected, "reserves \(reserves)")
        }
    }

    func testMaximumCapacityMustBePositive() throws {
        XCTAssertThrowsError(try KVCache(keyValueHeads: 1, headDimension: 8, maximumCapacity: 0)) { error in
            XCTAssertEqual("\(error)", "maximumCapacity is 0 but expected >= 1")
        }
    }
}
