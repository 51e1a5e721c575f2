// MultiQueryAttention: every query head shares one key/value head (Shazeer, 2019).
//
// A thin descriptor over the core kernel: with one key/value head all query heads form a single group, which the
// kernel computes together so each key/value tile is read once for all of them. This module holds no loop over
// Q, K or V.

@_exported import AttentionCore

/// A multi-query head layout: `queryHeads` query heads and a single key/value head.
///
/// Shapes: queries [B, queryHeads, Nq, Dk], keys [B, 1, Nk, Dk], values [B, 1, Nk, Dv]; output
/// [B, queryHeads, Nq, Dv].
///
/// ```swift
/// let mqa = try MultiQuery(queryHeads: 16)
/// let out = try mqa.attention(queries: q, keys: k, values: v, mask: .causal)
/// ```
public struct MultiQuery: Sendable, Hashable {
    /// Query heads, all reading key/value head 0.
    public let queryHeads: Int

    /// - Throws: `AttentionError.invalidValue` unless `queryHeads >= 1`.
    public init(queryHeads: Int) throws {
        try AttentionError.require(queryHeads >= 1, "queryHeads", expected: ">= 1", actual: "\(queryHeads)")
        self.queryHeads = queryHeads
    }

    /// Key/value heads: always 1.
    public var keyValueHeads: Int { 1 }

    /// Multi-query attention with any mask and options of the core `attention` function.
    /// - Throws: ``AttentionError`` if the queries do not have `queryHeads` heads or the keys more than one head, or
    ///   anything the core kernel rejects.
    public func attention(
        queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
        options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        try requireHeadCounts(queries: queries, keys: keys, queryHeads: queryHeads, keyValueHeads: 1)
        return try AttentionCore.attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    }
}
