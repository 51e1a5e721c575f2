// PagedKVCache: the keys and values of many sequences in one pool of fixed-size blocks (vLLM's PagedAttention),
// so a server holds sequences of any mix of lengths without reserving each one's maximum.
//
// Storage is one KeyValueBuffer of batch 1 laid out head-major: [keyValueHeads, blocks * blockSize, D], block b
// being slots b * blockSize ..< (b + 1) * blockSize of every head, `blockSize` consecutive tokens of one sequence.
// Head-major rather than block-major ([blocks, keyValueHeads, blockSize, D], vLLM's order) because the kernel reads
// one head's rows at a time: a head's rows in blocks with consecutive numbers are adjacent, so a sequence whose
// blocks were taken together (a prompt or a prefill chunk appended in one call; the free list hands blocks out in
// order and takes a removed sequence's back in order) streams like a contiguous cache, and the hardware prefetcher
// running past a block's end reads the next block of the same head instead of another head's rows. (Zen 3, one
// thread, the serving suite's 16 sequences with prompts appended in 512-token chunks: blocks of 64 at 0.93-0.95x
// the contiguous caches' speed block-major, 0.96-1.01x head-major; blocks of 16 at 0.79-0.89x and 0.97-1.05x.
// Appended a block at a time, so that no two blocks of a sequence are adjacent: 0.84-0.93x with blocks of 64,
// 0.94-1.00x with blocks of 256. Every block is then a separate stream, in either layout, and scattered 32 KiB
// runs (64 tokens of d 128 in Float32, per head) read at 0.84x of the sequential rate on that machine, 128 KiB
// runs at 0.95x, in a plain C read loop.)
// Each sequence keeps a block table (its blocks in token order) and a length; token t of a sequence is slot
// t % blockSize of block table[t / blockSize]. Appending writes into the last block's free slots and takes blocks
// from the free list as needed; removing a sequence returns its blocks. Nothing stored ever moves.
//
// Attention over a batch of sequences is one call: each sequence is its own problem (batch 1, its own length),
// its blocks are its key/value segments (one per block, read in place), and the work items of all sequences run
// in one parallel loop (`runSequenceProblems`, the same loop as packed batches), with the decode kernel's key
// splits, GQA grouping and prefetching. A block size that is a multiple of 64 (the kernel's key tile) gives
// every sequence exactly the tiles and splits of a contiguous cache holding its tokens, so the result is bitwise
// that of `KVCache.attention` on the same data; other block sizes cut tiles at block boundaries and agree to
// rounding.

/// Keys and values of many sequences in a shared pool of fixed-size blocks, with one attention call over any
/// batch of them (decode and chunked prefill).
///
/// ```swift
/// var cache = try PagedKVCache(blockCount: 4096, blockSize: 64, keyValueHeads: 8, headDimension: 128)
/// let a = cache.addSequence(), b = cache.addSequence()
/// try cache.append(keys: promptKeysA, values: promptValuesA, to: a)          // [1, 8, nA, 128]
/// try cache.append(keys: promptKeysB, values: promptValuesB, to: b)
/// // One decode step for both: queries [2, 32, 128], one token per sequence, in the order of `sequences`.
/// try cache.append(keys: stepKeys, values: stepValues, sequences: [a, b])    // [2, 8, 128]
/// let step = try cache.attention(queries: stepQueries, sequences: [a, b])    // output [2, 32, 128]
/// cache.removeSequence(a)                                                     // its blocks are reused
/// ```
///
/// A value: copies are independent (copy-on-write). Concurrent reads are safe; appends and removals need exclusive
/// access, as for an `Array`.
public struct PagedKVCache: Sendable {
    /// A sequence of the cache, valid until it is removed (identifiers are never reused).
    public struct SequenceID: Sendable, Hashable {
        /// The identifier's number: 0 for the first sequence a cache added, counting up.
        public let id: Int
        /// An identifier as `addSequence` hands them out (0, 1, 2, ...); the cache rejects one it does not hold.
        public init(id: Int) { self.id = id }
    }

    private struct Table: Sendable {
        var blocks: [Int] = []
        var count = 0
    }

    /// Tokens per block.
    public let blockSize: Int
    /// Blocks in the pool.
    public let blockCount: Int
    /// How every block stores its key and value rows.
    public let format: StorageFormat
    /// The rotary embedding applied to keys as they are appended and to queries as they attend, if any (positions
    /// count from each sequence's first token).
    public let rotary: RotaryEmbedding?
    private var pool: KeyValueBuffer
    private var tables: [Int: Table] = [:]
    /// Free blocks; the next one handed out is the last.
    private var free: [Int]
    private var nextID = 0

    /// Creates an empty pool.
    /// - Parameters:
    ///   - blockCount: blocks in the pool (>= 1); the pool holds `blockCount * blockSize` tokens in all.
    ///   - blockSize: tokens per block (>= 1). A multiple of 64 keeps the kernel's 64-key tiles whole. Where many
    ///     sequences grow side by side, so that their blocks interleave in the pool, blocks of 128 KiB or more per
    ///     key/value head (256 tokens of d 128 in Float32) decode about as fast as a contiguous cache; blocks of 64
    ///     tokens there decode at 0.84-0.93x its speed (see the README's serving measurements).
    ///   - keyValueHeads: key/value heads per token (>= 1).
    ///   - headDimension: values per key row (>= 1).
    ///   - valueDimension: values per value row; `nil` means `headDimension`.
    ///   - format: how rows are stored (``StorageFormat``), decoded tile by tile as attention reads them.
    ///   - rotary: fused rotary embedding, as for ``KVCache``: a sequence's token t is rotated by position t as it is
    ///     appended, and its queries in `attention` by the positions of its newest tokens.
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` naming the first size out of range, a
    ///   dimension the format does not fit, or a rotary dimension above the head dimension.
    public init(
        blockCount: Int, blockSize: Int = 64, keyValueHeads: Int, headDimension: Int, valueDimension: Int? = nil,
        format: StorageFormat = .float32, rotary: RotaryEmbedding? = nil
    ) throws {
        let dv = valueDimension ?? headDimension
        try AttentionError.require(blockCount >= 1, "blockCount", expected: ">= 1", actual: "\(blockCount)")
        try AttentionError.require(blockSize >= 1, "blockSize", expected: ">= 1", actual: "\(blockSize)")
        try KeyValueBuffer.validateDimensions(
            batch: 1, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv)
        try format.validate(dimension: headDimension, argument: "format", dimensionName: "headDimension")
        try format.validate(dimension: dv, argument: "format", dimensionName: "valueDimension")
        try rotary?.validate(headDimension: headDimension)
        self.rotary = rotary
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.format = format
        pool = KeyValueBuffer(
            batch: 1, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv,
            capacity: blockCount * blockSize, keyFormat: format, valueFormat: format)
        free = Array((0..<blockCount).reversed())
    }

    /// Key/value heads per token.
    public var keyValueHeads: Int { pool.heads }
    /// Values per key row (the queries' head dimension).
    public var headDimension: Int { pool.keyDimension }
    /// Values per value row (the outputs' head dimension).
    public var valueDimension: Int { pool.valueDimension }
    /// Blocks not held by any sequence.
    public var freeBlockCount: Int { free.count }
    /// Bytes of key and value storage (fixed at creation).
    public var storageBytes: Int { pool.bytes }
    /// The sequences held, in the order they were added.
    public var sequences: [SequenceID] { tables.keys.sorted().map(SequenceID.init(id:)) }

    /// Starts an empty sequence (it holds no block until tokens are appended).
    public mutating func addSequence() -> SequenceID {
        defer { nextID += 1 }
        tables[nextID] = Table()
        return SequenceID(id: nextID)
    }

    /// Removes a sequence and returns its blocks to the pool. Removing a sequence the cache does not hold does
    /// nothing.
    public mutating func removeSequence(_ sequence: SequenceID) {
        guard let table = tables.removeValue(forKey: sequence.id) else { return }
        free += table.blocks.reversed()
    }

    /// Tokens held for `sequence`.
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` for a sequence the cache does not hold.
    public func count(of sequence: SequenceID) throws -> Int { try table(sequence, "sequence").count }

    /// The blocks of `sequence` in token order (its block table).
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` for a sequence the cache does not hold.
    public func blockTable(of sequence: SequenceID) throws -> [Int] { try table(sequence, "sequence").blocks }

    private func table(_ sequence: SequenceID, _ argument: @autoclosure () -> String) throws -> Table {
        guard let table = tables[sequence.id] else {
            throw AttentionError.invalidValue(
                argument: argument(), expected: "a sequence the cache holds",
                actual: "sequence \(sequence.id), \(sequence.id < nextID ? "removed" : "never added")")
        }
        return table
    }

    /// Appends keys [1, keyValueHeads, n, headDimension] and values [1, keyValueHeads, n, valueDimension] to one
    /// sequence (a prompt, or a chunk of one).
    /// - Throws: ``AttentionError`` for shapes that do not fit, a sequence the cache does not hold, or too few free
    ///   blocks; the cache is then unchanged.
    public mutating func append(keys: Tensor, values: Tensor, to sequence: SequenceID) throws {
        let (h, dk, dv) = (keyValueHeads, headDimension, valueDimension)
        guard keys.rank == 4, keys.shape[0] == 1, keys.shape[1] == h, keys.shape[3] == dk else {
            throw AttentionError.shapeMismatch(
                argument: "keys", expected: "[1, \(h), n, \(dk)]", actual: keys.shape,
                reason: "keys appended to one sequence are [1, keyValueHeads, tokens, headDimension]")
        }
        let n = keys.shape[2]
        guard values.shape == [1, h, n, dv] else {
            throw AttentionError.shapeMismatch(
                argument: "values", expected: "\([1, h, n, dv])", actual: values.shape,
                reason: "appended values must match the keys' token count and the cache's value dimension")
        }
        let start = try table(sequence, "sequence").count
        let keys = try rotary?.apply(to: keys, positions: Array(start..<(start + n))) ?? keys
        try reserve([(sequence, n)])
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                guard let k = k.baseAddress, let v = v.baseAddress else { return }
                write(
                    sequence, tokens: n, keys: k, keyStrides: (n * dk, dk), values: v, valueStrides: (n * dv, dv))
            }
        }
    }

    /// Appends tokens to several sequences at once, in the packed layout of `attention(queries:sequences:)`:
    /// keys [totalTokens, keyValueHeads, headDimension] and values [totalTokens, keyValueHeads, valueDimension],
    /// sequence i taking the next `tokenCounts[i]` tokens (default one token per sequence: a decode step).
    /// - Throws: ``AttentionError`` for shapes or counts that do not fit, a sequence the cache does not hold or
    ///   listed twice, or too few free blocks for all of them; the cache is then unchanged.
    public mutating func append(
        keys: Tensor, values: Tensor, sequences: [SequenceID], tokenCounts: [Int]? = nil
    ) throws {
        let counts = try validatedCounts(tokenCounts, sequences: sequences, name: "tokenCounts")
        let total = counts.reduce(0, +)
        let (h, dk, dv) = (keyValueHeads, headDimension, valueDimension)
        guard keys.shape == [total, h, dk] else {
            throw AttentionError.shapeMismatch(
                argument: "keys", expected: "\([total, h, dk])", actual: keys.shape,
                reason:
                    "packed keys are [totalTokens, keyValueHeads, headDimension], totalTokens the sum of tokenCounts")
        }
        guard values.shape == [total, h, dv] else {
            throw AttentionError.shapeMismatch(
                argument: "values", expected: "\([total, h, dv])", actual: values.shape,
                reason: "packed values have the keys' token and head counts and the cache's value dimension")
        }
        if let repeated = sequences.indices.first(where: { i in sequences[..<i].contains(sequences[i]) }) {
            throw AttentionError.invalidValue(
                argument: "sequences[\(repeated)]", expected: "each sequence at most once in one append",
                actual: "sequence \(sequences[repeated].id) again")
        }
        let keys = try rotated(
            keys,
            positions: zip(sequences, counts).flatMap { sequence, n in
                let start = tables[sequence.id]?.count ?? 0
                return Array(start..<(start + n))
            })
        try reserve(Array(zip(sequences, counts)))
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                guard let k = k.baseAddress, let v = v.baseAddress else { return }
                var first = 0
                for (sequence, n) in zip(sequences, counts) {
                    write(
                        sequence, tokens: n, keys: k + first * h * dk, keyStrides: (dk, h * dk),
                        values: v + first * h * dv, valueStrides: (dv, h * dv))
                    first += n
                }
            }
        }
    }

    /// Packed rows [tokens, heads, d] rotated by one position per token (unchanged without `rotary`).
    private func rotated(_ packed: Tensor, positions: [Int]) throws -> Tensor {
        guard let rotary, !positions.isEmpty else { return packed }
        let tokenMajor = Tensor(uncheckedShape: [1] + packed.shape, scalars: packed.scalars)
        let rotated = try rotary.apply(to: tokenMajor, positions: positions, layout: .bnhd)
        return Tensor(uncheckedShape: packed.shape, scalars: rotated.scalars)
    }

    /// Counts per sequence (default 1 each), checked: one per sequence, each >= 0.
    private func validatedCounts(_ counts: [Int]?, sequences: [SequenceID], name: String) throws -> [Int] {
        guard let counts else { return Array(repeating: 1, count: sequences.count) }
        try AttentionError.require(
            counts.count == sequences.count, "\(name).count", expected: "\(sequences.count) (one per sequence)",
            actual: "\(counts.count)")
        if let bad = counts.firstIndex(where: { $0 < 0 }) {
            throw AttentionError.invalidValue(argument: "\(name)[\(bad)]", expected: ">= 0", actual: "\(counts[bad])")
        }
        return counts
    }

    /// Checks that every sequence is held and that the free list covers every block the appends need, then takes
    /// those blocks: after it returns, the writes cannot fail.
    private mutating func reserve(_ appends: [(SequenceID, Int)]) throws {
        var needed = 0
        for (index, (sequence, n)) in appends.enumerated() {
            let table = try table(sequence, appends.count == 1 ? "sequence" : "sequences[\(index)]")
            needed += (table.count + n + blockSize - 1) / blockSize - table.blocks.count
        }
        guard needed <= free.count else {
            throw AttentionError.invalidValue(
                argument: "blockCount",
                expected:
                    "at least \(needed) free blocks of \(blockSize) tokens for this append (the pool is exhausted)",
                actual: "\(free.count) free of \(blockCount)")
        }
        for (sequence, n) in appends {
            var table = tables[sequence.id]!
            while table.blocks.count * blockSize < table.count + n { table.blocks.append(free.removeLast()) }
            tables[sequence.id] = table
        }
    }

    /// Writes `n` tokens at the end of `sequence`, whose blocks `reserve` has taken.
    private mutating func write(
        _ sequence: SequenceID, tokens n: Int, keys: UnsafePointer<Float>, keyStrides: (head: Int, token: Int),
        values: UnsafePointer<Float>, valueStrides: (head: Int, token: Int)
    ) {
        var table = tables[sequence.id]!
        var written = 0
        while written < n {
            let (blockIndex, slot) = table.count.quotientAndRemainder(dividingBy: blockSize)
            let run = Swift.min(n - written, blockSize - slot)
            pool.write(
                slot: table.blocks[blockIndex] * blockSize + slot, tokens: run, keys: keys + written * keyStrides.token,
                keyStrides: keyStrides, values: values + written * valueStrides.token, valueStrides: valueStrides)
            written += run
            table.count += run
        }
        tables[sequence.id] = table
    }

    /// Attention of a batch of sequences' newest tokens over everything each has cached, in one call.
    ///
    /// - Parameters:
    ///   - queries: [totalQueries, queryHeads, headDimension], packed: sequence i's `queryCounts[i]` queries (default
    ///     one per sequence: a decode step), in the order of `sequences`. `queryHeads` is a multiple of
    ///     `keyValueHeads`.
    ///   - sequences: the sequences to attend (any held ones, in any order; one may appear more than once).
    ///   - queryCounts: queries per sequence, in the order of `sequences`; `nil` means one each.
    ///   - mask: per sequence, aligned bottom-right (the default `.causal` lets query j of a sequence holding n
    ///     tokens see tokens up to n - queryCounts[i] + j: the queries are its newest tokens).
    ///   - options: as for `packedAttention` (no bias, padding or layouts; not the naive kernel).
    /// - Returns: output [totalQueries, queryHeads, valueDimension] and log-sum-exp [totalQueries, queryHeads].
    /// - Throws: ``AttentionError`` for a sequence the cache does not hold, shapes or counts that do not fit, or a
    ///   mask or option invalid for some sequence (the argument then names it).
    public func attention(
        queries: Tensor, sequences: [SequenceID], queryCounts: [Int]? = nil, mask: AttentionMask = .causal,
        options: AttentionOptions = AttentionOptions()
    ) throws -> AttentionResult {
        let counts = try validatedCounts(queryCounts, sequences: sequences, name: "queryCounts")
        let tables = try sequences.enumerated().map { index, sequence in
            try table(sequence, "sequences[\(index)]")
        }
        let totalQueries = counts.reduce(0, +)
        let (hkv, dk, dv) = (keyValueHeads, headDimension, valueDimension)
        guard queries.rank == 3, queries.shape[0] == totalQueries, queries.shape[1] >= 1,
            queries.shape[1] % hkv == 0, queries.shape[2] == dk
        else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "[\(totalQueries), H, \(dk)] with H a multiple of \(hkv)",
                actual: queries.shape,
                reason: "queries are packed [totalQueries, queryHeads, headDimension], one run per sequence")
        }
        let hq = queries.shape[1]
        if let bad = counts.indices.first(where: { rotary != nil && counts[$0] > tables[$0].count }) {
            throw AttentionError.invalidValue(
                argument: "queryCounts[\(bad)]",
                expected: "at most \(tables[bad].count), the tokens sequence \(bad) holds",
                actual:
                    "\(counts[bad]) (with a rotary embedding the queries are its newest tokens and take their positions)"
            )
        }
        let queries = try rotated(
            queries, positions: zip(tables, counts).flatMap { table, n in Array((table.count - n)..<table.count) })
        let problems = try sequenceProblems(
            queryHeads: hq, keyValueHeads: hkv, queryLengths: counts, keyLengths: tables.map(\.count),
            keyDimension: dk, valueDimension: dv, mask: mask, options: options, batchName: "the paged batch")
        var queryOffsets = [0]
        for n in counts { queryOffsets.append(queryOffsets[queryOffsets.count - 1] + n) }
        // Every block of every sequence, as one run each; sequence i's segments are runs first[i] ..< first[i + 1].
        var runs: [(slots: Range<Int>, start: Int)] = []
        var first = [0]
        for table in tables {
            for (index, block) in table.blocks.enumerated() {
                let start = index * blockSize
                let slot = block * blockSize
                runs.append((slot..<(slot + Swift.min(blockSize, table.count - start)), start))
            }
            first.append(runs.count)
        }
        let tilings = sequenceTilings(problems)
        let threads = options.threads ?? Parallel.defaultThreadCount
        var output = overwrittenScalars(count: totalQueries * hq * dv)
        var logSumExp = [Float](repeating: 0, count: totalQueries * hq)
        let workspace = pool.withSegments(runs) { segments in
            queries.withUnsafeBufferPointer { q in
                output.withUnsafeMutableBufferPointer { o in
                    logSumExp.withUnsafeMutableBufferPointer { lse in
                        runSequenceProblems(
                            problems, tilings: tilings, queryOffsets: queryOffsets, queries: q.baseAddress,
                            output: o.baseAddress, logSumExp: lse.baseAddress, threads: threads
                        ) { i in Array(segments[first[i]..<first[i + 1]]) }
                    }
                }
            }
        }
        return AttentionResult(
            output: Tensor(uncheckedShape: [totalQueries, hq, dv], scalars: output),
            logSumExp: Tensor(uncheckedShape: [totalQueries, hq], scalars: logSumExp), workspaceBytes: workspace)
    }
}
