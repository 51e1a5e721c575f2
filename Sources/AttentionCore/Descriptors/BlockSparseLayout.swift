// BlockSparseLayout: which key blocks each query block visits (Sparse Transformer, BigBird, MoBA, SeerAttention).
//
// Queries are cut into blocks of `queryBlock` positions and keys into blocks of `keyBlock` positions (the last
// block of each may be shorter). For every query block (per head, or shared by all heads) the layout lists the key
// blocks to visit, sorted. The blockwise kernel runs with exactly these tiles, so its cost is proportional to the
// number of listed blocks; combined with another mask (e.g. causal) the partial tiles are still masked exactly.

/// A block-sparse visibility pattern. Build one from explicit lists or with a builder
/// (`local`, `global`, `strided`, `bigBird`, `topK`).
///
/// ```swift
/// let layout = try BlockSparseLayout.local(length: 4096, blockSize: 64, windowBlocks: 2, mask: .causal)
/// let out = try blockSparseAttention(queries: q, keys: k, values: v, layout: layout, mask: .causal)
/// ```
public struct BlockSparseLayout: Sendable, Hashable {
    /// Query positions per block.
    public let queryBlock: Int
    /// Key positions per block.
    public let keyBlock: Int
    /// The query length the layout was made for.
    public let queryLength: Int
    /// The key length the layout was made for.
    public let keyLength: Int
    /// 1 when all heads share the layout, else the number of query heads it holds one pattern for.
    public let heads: Int
    /// offsets[h * queryBlocks + qb] ..< offsets[h * queryBlocks + qb + 1] index `indices`.
    private let offsets: [Int]
    private let indices: [Int]

    /// Query blocks: ceil(queryLength / queryBlock).
    public var queryBlocks: Int { (queryLength + queryBlock - 1) / queryBlock }
    /// Key blocks: ceil(keyLength / keyBlock).
    public var keyBlocks: Int { (keyLength + keyBlock - 1) / keyBlock }

    /// A layout shared by every head: `blocks[qb]` lists the key blocks of query block qb.
    /// - Throws: ``AttentionError`` if a size is below 1 (lengths may be 0), `blocks.count` is not the number of query
    ///   blocks, or a list is not strictly increasing within 0..<keyBlocks.
    public init(queryBlock: Int, keyBlock: Int, queryLength: Int, keyLength: Int, blocks: [[Int]]) throws {
        try self.init(
            queryBlock: queryBlock, keyBlock: keyBlock, queryLength: queryLength, keyLength: keyLength,
            blocksPerHead: [blocks])
    }

    /// A layout with one pattern per query head: `blocksPerHead[h][qb]`.
    public init(queryBlock: Int, keyBlock: Int, queryLength: Int, keyLength: Int, blocksPerHead: [[[Int]]]) throws {
        try AttentionError.require(queryBlock >= 1, "queryBlock", expected: ">= 1", actual: "\(queryBlock)")
        try AttentionError.require(keyBlock >= 1, "keyBlock", expected: ">= 1", actual: "\(keyBlock)")
        try AttentionError.require(queryLength >= 0, "queryLength", expected: ">= 0", actual: "\(queryLength)")
        try AttentionError.require(keyLength >= 0, "keyLength", expected: ">= 0", actual: "\(keyLength)")
        try AttentionError.require(
            !blocksPerHead.isEmpty, "blocksPerHead.count", expected: ">= 1 (one pattern per head, or one shared)",
            actual: "0")
        let queryBlocks = (queryLength + queryBlock - 1) / queryBlock
        let keyBlocks = (keyLength + keyBlock - 1) / keyBlock
        var offsets = [0]
        var indices: [Int] = []
        for (head, blocks) in blocksPerHead.enumerated() {
            let name = blocksPerHead.count == 1 ? "blocks" : "blocksPerHead[\(head)]"
            try AttentionError.require(
                blocks.count == queryBlocks, "\(name).count",
                expected: "\(queryBlocks) (one list per query block of \(queryBlock) positions)",
                actual: "\(blocks.count)")
            for (qb, list) in blocks.enumerated() {
                for (position, kb) in list.enumerated() {
                    try AttentionError.require(
                        kb >= 0 && kb < keyBlocks, "\(name)[\(qb)][\(position)]",
                        expected: "a key block in 0..<\(keyBlocks)", actual: "\(kb)")
                    if position > 0 {
                        try AttentionError.require(
                            kb > list[position - 1], "\(name)[\(qb)]", expected: "strictly increasing key blocks",
                            actual: "\(list)")
                    }
                }
                indices += list
                offsets.append(indices.count)
            }
        }
        self.queryBlock = queryBlock
        self.keyBlock = keyBlock
        self.queryLength = queryLength
        self.keyLength = keyLength
        self.heads = blocksPerHead.count
        self.offsets = offsets
        self.indices = indices
    }

    /// The sorted key blocks that query block `queryBlock` of head `head` visits (head is ignored for a shared
    /// layout). Like `Array`'s subscript, a query block outside 0..<queryBlocks, or a head outside 0..<heads of a
    /// per-head layout, is a programming error and traps (it would otherwise read another head's blocks).
    public func keyBlocks(head: Int = 0, queryBlock qb: Int) -> ArraySlice<Int> {
        precondition(qb >= 0 && qb < queryBlocks, "query block \(qb) is out of bounds for \(queryBlocks) query blocks")
        precondition(heads == 1 || (head >= 0 && head < heads), "head \(head) is out of bounds for \(heads) heads")
        let h = heads == 1 ? 0 : head
        return indices[offsets[h * queryBlocks + qb]..<offsets[h * queryBlocks + qb + 1]]
    }

    /// The share of (query block, key block) pairs listed, averaged over heads.
    public var density: Double {
        let pairs = queryBlocks * keyBlocks * heads
        return pairs == 0 ? 0 : Double(indices.count) / Double(pairs)
    }

    /// The layout of one head as a shared layout (the same layout when already shared). A head outside 0..<heads
    /// of a per-head layout traps, as in `keyBlocks(head:queryBlock:)`.
    public func forHead(_ head: Int) -> BlockSparseLayout {
        if heads == 1 { return self }
        let blocks = (0..<queryBlocks).map { Array(keyBlocks(head: head, queryBlock: $0)) }
        // The lists come from a validated layout.
        return try! BlockSparseLayout(
            queryBlock: queryBlock, keyBlock: keyBlock, queryLength: queryLength, keyLength: keyLength, blocks: blocks)
    }

    /// The key ranges query `query` sees (head 0 of a per-head layout), merged where blocks touch.
    package func visibleSpans(query: Int) -> [Range<Int>] {
        guard query >= 0 && query < queryLength else { return [] }
        var spans: [Range<Int>] = []
        for kb in keyBlocks(queryBlock: query / queryBlock) {
            let range = (kb * keyBlock)..<Swift.min((kb + 1) * keyBlock, keyLength)
            if let last = spans.last, last.upperBound == range.lowerBound {
                spans[spans.count - 1] = last.lowerBound..<range.upperBound
            } else {
                spans.append(range)
            }
        }
        return spans
    }
}
