// Builders of block-sparse layouts for self-attention (queries and keys are the same N positions, cut into blocks
// of `blockSize`). Query block qb's diagonal key block is qb.
//
//   local      key blocks qb - w ... qb (+ w when not causal): Longformer / sliding window at block granularity
//   global     the global blocks see every key block, and every query block sees the global blocks (BigBird/ETC)
//   strided    the diagonal block plus every block kb with kb % stride == offset (Sparse Transformer's strided
//              pattern; one offset per head gives S2-Attention's sharded heads)
//   bigBird    local + global + `random` seeded random blocks per query block
//   topK       content-based (MoBA / SeerAttention, training-free): score key block kb for query block qb by the
//              query block's mean query against the key block's mean key (or the max over the block's keys), keep the
//              k best, always plus the diagonal block and the first `sinkBlocks` blocks
//
// Each builder takes the same `mask:` the kernel call does, `.none` or `.causal`: `.causal` drops key blocks after
// the diagonal here, and passing `.causal` to the kernel too masks inside the diagonal block.

extension BlockSparseLayout {
    private static func validateBuilder(length: Int, blockSize: Int) throws {
        try AttentionError.require(length >= 0, "length", expected: ">= 0", actual: "\(length)")
        try AttentionError.require(blockSize >= 1, "blockSize", expected: ">= 1", actual: "\(blockSize)")
    }

    private static func square(_ length: Int, _ blockSize: Int, _ blocksPerHead: [[Set<Int>]]) throws
        -> BlockSparseLayout
    {
        try BlockSparseLayout(
            queryBlock: blockSize, keyBlock: blockSize, queryLength: length, keyLength: length,
            blocksPerHead: blocksPerHead.map { head in head.map { $0.sorted() } })
    }

    /// Whether a builder's `mask` asks for causal blocks; only `.none` and `.causal` describe a block pattern.
    private static func isCausal(_ mask: AttentionMask) throws -> Bool {
        switch mask {
        case .none: return false
        case .causal: return true
        default:
            throw AttentionError.invalidValue(
                argument: "mask", expected: ".none or .causal (a block pattern has no other mask)",
                actual: "\(mask)")
        }
    }

    private static func localBlocks(_ qb: Int, _ windowBlocks: Int, _ causal: Bool, _ count: Int) -> Set<Int> {
        Set(Swift.max(0, qb - windowBlocks)...Swift.min(count - 1, causal ? qb : qb + windowBlocks))
    }

    /// Each query block sees the `windowBlocks` key blocks before it and its own (and the `windowBlocks` after it
    /// unless `mask` is ``AttentionMask/causal``).
    ///
    /// - Throws: ``AttentionError`` when `length` < 0, `blockSize` < 1, `windowBlocks` < 0, or `mask` is neither
    ///   `.none` nor `.causal`.
    public static func local(length: Int, blockSize: Int, windowBlocks: Int, mask: AttentionMask = .none) throws
        -> BlockSparseLayout
    {
        let causal = try isCausal(mask)
        try validateBuilder(length: length, blockSize: blockSize)
        try AttentionError.require(windowBlocks >= 0, "windowBlocks", expected: ">= 0", actual: "\(windowBlocks)")
        let n = (length + blockSize - 1) / blockSize
        return try square(length, blockSize, [(0..<n).map { localBlocks($0, windowBlocks, causal, n) }])
    }

    /// Global blocks attend to every key block (up to the diagonal when `mask` is ``AttentionMask/causal``), and
    /// every query block attends to the global blocks (those not after it when causal) and to its own block.
    ///
    /// - Throws: ``AttentionError`` when `length` < 0, `blockSize` < 1, a global block is outside the blocks, or
    ///   `mask` is neither `.none` nor `.causal`.
    public static func global(length: Int, blockSize: Int, globalBlocks: [Int], mask: AttentionMask = .none) throws
        -> BlockSparseLayout
    {
        let causal = try isCausal(mask)
        try validateBuilder(length: length, blockSize: blockSize)
        let n = (length + blockSize - 1) / blockSize
        for (index, block) in globalBlocks.enumerated() {
            try AttentionError.require(
                block >= 0 && block < n, "globalBlocks[\(index)]", expected: "a block in 0..<\(n)", actual: "\(block)")
        }
        return try square(length, blockSize, [(0..<n).map { globalPattern($0, Set(globalBlocks), causal, n) }])
    }

    private static func globalPattern(_ qb: Int, _ globals: Set<Int>, _ causal: Bool, _ count: Int) -> Set<Int> {
        let limit = causal ? qb : count - 1
        if globals.contains(qb) { return Set(0...limit) }
        return Set(globals.filter { $0 <= limit }).union([qb])
    }

    /// The diagonal block plus every key block kb (not after the diagonal when `mask` is ``AttentionMask/causal``)
    /// with kb % stride == offsets[h] % stride; one offset per head gives a per-head layout (S2-Attention), a single
    /// offset a shared one.
    ///
    /// - Throws: ``AttentionError`` when `length` < 0, `blockSize` < 1, `stride` < 1, `offsets` is empty, or
    ///   `mask` is neither `.none` nor `.causal`.
    public static func strided(
        length: Int, blockSize: Int, stride: Int, offsets: [Int] = [0], mask: AttentionMask = .none
    ) throws -> BlockSparseLayout {
        let causal = try isCausal(mask)
        try validateBuilder(length: length, blockSize: blockSize)
        try AttentionError.require(stride >= 1, "stride", expected: ">= 1", actual: "\(stride)")
        try AttentionError.require(!offsets.isEmpty, "offsets.count", expected: ">= 1", actual: "0")
        let n = (length + blockSize - 1) / blockSize
        return try square(
            length, blockSize,
            offsets.map { offset in
                let phase = ((offset % stride) + stride) % stride
                return (0..<n).map { qb in
                    Set((0..<n).filter { $0 % stride == phase && (!causal || $0 <= qb) }).union([qb])
                }
            })
    }

    /// BigBird: ``local(length:blockSize:windowBlocks:mask:)`` + ``global(length:blockSize:globalBlocks:mask:)`` +
    /// `random` key blocks per query block drawn with SplitMix64 from `seed` (from the blocks not already chosen
    /// and, when `mask` is ``AttentionMask/causal``, not after the diagonal).
    ///
    /// - Throws: ``AttentionError`` for the arguments the two builders reject, or `random` < 0.
    public static func bigBird(
        length: Int, blockSize: Int, windowBlocks: Int, globalBlocks: [Int], random: Int, seed: UInt64,
        mask: AttentionMask = .none
    ) throws -> BlockSparseLayout {
        let causal = try isCausal(mask)
        try AttentionError.require(random >= 0, "random", expected: ">= 0", actual: "\(random)")
        let local = try local(length: length, blockSize: blockSize, windowBlocks: windowBlocks, mask: mask)
        let global = try global(length: length, blockSize: blockSize, globalBlocks: globalBlocks, mask: mask)
        var generator = SplitMix64(seed: seed)
        let n = local.queryBlocks
        let blocks = (0..<n).map { qb -> Set<Int> in
            var chosen = Set(local.keyBlocks(queryBlock: qb)).union(global.keyBlocks(queryBlock: qb))
            var candidates = (0...(causal ? qb : n - 1)).filter { !chosen.contains($0) }
            for _ in 0..<Swift.min(random, candidates.count) {
                let pick = Int(generator.next() % UInt64(candidates.count))
                chosen.insert(candidates.remove(at: pick))
            }
            return chosen
        }
        return try square(length, blockSize, [blocks])
    }

    /// How `topK` scores a key block for a query block.
    public enum BlockScoring: Sendable, Hashable {
        /// mean(queries of the block) . mean(keys of the block) (MoBA).
        case meanKey
        /// max over the block's keys of mean(queries of the block) . key.
        case maxKey
    }

    /// Content-based layout per query head: for each query block, the `keyBlocksPerQuery` key blocks with the highest
    /// score (see ``BlockScoring``), plus the diagonal block and the first `sinkBlocks` blocks, from key blocks not
    /// after the diagonal when `mask` is ``AttentionMask/causal``. Queries [B, Hq, N, D] and keys [B, Hkv, N, D]; batch
    /// 0 is scored (one layout serves the batch). Never forms an N x N matrix: it costs O(Hq * (N / blockSize)^2 * D)
    /// for `.meanKey` and O(Hq * (N / blockSize) * N * D) for `.maxKey`. Ties keep the lower block index.
    public static func topK(
        queries: Tensor, keys: Tensor, blockSize: Int, keyBlocksPerQuery k: Int, mask: AttentionMask = .none,
        sinkBlocks: Int = 0, scoring: BlockScoring = .meanKey
    ) throws -> BlockSparseLayout {
        let causal = try isCausal(mask)
        guard queries.rank == 4, keys.rank == 4, keys.shape[0] == queries.shape[0], keys.shape[2] == queries.shape[2],
            keys.shape[3] == queries.shape[3], keys.shape[1] >= 1, queries.shape[1] % keys.shape[1] == 0
        else {
            throw AttentionError.shapeMismatch(
                argument: "keys",
                expected: "[\(queries.shape.first ?? 0), H dividing the query heads, same length and "
                    + "head dimension as the queries]", actual: keys.shape,
                reason: "top-k layouts are for self-attention over the queries' positions")
        }
        let (hq, hkv, length, d) = (queries.shape[1], keys.shape[1], queries.shape[2], queries.shape[3])
        try validateBuilder(length: length, blockSize: blockSize)
        try AttentionError.require(k >= 0, "keyBlocksPerQuery", expected: ">= 0", actual: "\(k)")
        try AttentionError.require(sinkBlocks >= 0, "sinkBlocks", expected: ">= 0", actual: "\(sinkBlocks)")
        let n = (length + blockSize - 1) / blockSize
        func means(_ tensor: Tensor, head: Int, heads: Int) -> [Float] {
            var out = [Float](repeating: 0, count: n * d)
            tensor.withUnsafeBufferPointer { t in
                let base = t.baseAddress! + head * length * d
                for block in 0..<n {
                    let rows = (block * blockSize)..<Swift.min((block + 1) * blockSize, length)
                    for row in rows {
                        for c in 0..<d { out[block * d + c] += base[row * d + c] }
                    }
                    for c in 0..<d { out[block * d + c] /= Float(rows.count) }
                }
            }
            return out
        }
        var layout: [[Set<Int>]] = []
        let keyMeans = (0..<hkv).map { means(keys, head: $0, heads: hkv) }
        for h in 0..<hq {
            let queryMeans = means(queries, head: h, heads: hq)
            let kvHead = h / (hq / hkv)
            var blocks: [Set<Int>] = []
            for qb in 0..<n {
                let last = causal ? qb : n - 1
                var scored: [(score: Float, block: Int)] = []
                for kb in 0...last {
                    let q = queryMeans[(qb * d)..<((qb + 1) * d)]
                    switch scoring {
                    case .meanKey:
                        scored.append((dot(q, keyMeans[kvHead][(kb * d)..<((kb + 1) * d)]), kb))
                    case .maxKey:
                        var best = -Float.infinity
                        keys.withUnsafeBufferPointer { t in
                            let base = t.baseAddress! + kvHead * length * d
                            for row in (kb * blockSize)..<Swift.min((kb + 1) * blockSize, length) {
                                var s: Float = 0
                                for (c, x) in q.enumerated() { s += x * base[row * d + c] }
                                best = Swift.max(best, s)
                            }
                        }
                        scored.append((best, kb))
                    }
                }
                scored.sort { $0.score > $1.score || ($0.score == $1.score && $0.block < $1.block) }
                var chosen = Set(scored.prefix(k).map(\.block))
                chosen.insert(qb)
                for sink in 0..<Swift.min(sinkBlocks, last + 1) { chosen.insert(sink) }
                blocks.append(chosen)
            }
            layout.append(blocks)
        }
        return try square(length, blockSize, layout)
    }
}

private func dot(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
    var sum: Float = 0
    for (x, y) in zip(a, b) { sum += x * y }
    return sum
}
