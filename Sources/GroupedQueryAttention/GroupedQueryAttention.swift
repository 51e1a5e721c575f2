// GroupedQueryAttention: G query heads share each key/value head (Ainslie et al., 2023).
//
// A thin descriptor over the core kernel, which runs grouped-query attention by index mapping: query head h reads
// key/value head h / G, K and V are never copied, and the G query heads of a group are computed together so each
// key/value tile is read once per group. This module holds no loop over Q, K or V.

@_exported import AttentionCore

/// A grouped-query head layout: `queryHeads` query heads, `keyValueHeads` key/value heads, G = queryHeads /
/// keyValueHeads query heads per key/value head (MHA when G = 1, MQA when keyValueHeads = 1).
///
/// Shapes: queries [B, queryHeads, Nq, Dk], keys [B, keyValueHeads, Nk, Dk], values [B, keyValueHeads, Nk, Dv];
/// output [B, queryHeads, Nq, Dv].
///
/// ```swift
/// let gqa = try GroupedQuery(queryHeads: 32, keyValueHeads: 8)      // Llama-3-8B's layout
/// let out = try gqa.attention(queries: q, keys: k, values: v, mask: .causal)
/// ```
public struct GroupedQuery: Sendable, Hashable {
    /// Query heads (a multiple of `keyValueHeads`).
    public let queryHeads: Int
    /// Key/value heads.
    public let keyValueHeads: Int

    /// - Throws: `AttentionError.invalidValue` unless both counts are >= 1 and `keyValueHeads` divides `queryHeads`.
    public init(queryHeads: Int, keyValueHeads: Int) throws {
        try AttentionError.require(queryHeads >= 1, "queryHeads", expected: ">= 1", actual: "\(queryHeads)")
        try AttentionError.require(
            keyValueHeads >= 1 && queryHeads % keyValueHeads == 0, "keyValueHeads",
            expected: "a divisor of queryHeads (\(queryHeads))", actual: "\(keyValueHeads)")
        self.queryHeads = queryHeads
        self.keyValueHeads = keyValueHeads
    }

    /// Query heads per key/value head.
    public var groupSize: Int { queryHeads / keyValueHeads }

    /// The key/value head that query head `queryHead` reads: `queryHead / groupSize`.
    public func keyValueHead(forQueryHead queryHead: Int) -> Int { queryHead / groupSize }

    /// Grouped-query attention with any mask and options of the core `attention` function.
    /// - Throws: ``AttentionError`` if the tensors' head counts differ from this layout, or anything the core kernel
    ///   rejects.
    public func attention(
        queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
        options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        try requireHeadCounts(queries: queries, keys: keys, queryHeads: queryHeads, keyValueHeads: keyValueHeads)
        return try AttentionCore.attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    }
}
