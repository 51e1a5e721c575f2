// Spellings renamed in 0.2 (see CHANGELOG.md), kept for one release so callers can move at their own pace. Each
// forwards to the new name and does nothing else.

/// Renamed `partialAttention(queries:keys:values:mask:options:)` on tensors.
@available(*, deprecated, renamed: "partialAttention(queries:keys:values:mask:options:)")
public func attentionWithLogSumExp(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    try partialAttention(queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// Renamed `partialAttention(queries:keys:values:mask:options:)` on stored tensors.
@available(*, deprecated, renamed: "partialAttention(queries:keys:values:mask:options:)")
public func attentionWithLogSumExp(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    try partialAttention(queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// Renamed ``partialBlockSparseAttention(queries:keys:values:layout:mask:options:)``.
@available(*, deprecated, renamed: "partialBlockSparseAttention(queries:keys:values:layout:mask:options:)")
public func blockSparseAttentionWithLogSumExp(
    queries: Tensor, keys: Tensor, values: Tensor, layout: BlockSparseLayout, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    try partialBlockSparseAttention(
        queries: queries, keys: keys, values: values, layout: layout, mask: mask, options: options)
}

/// Renamed ``topKAttention(queries:keys:values:keysPerQuery:mask:options:)``.
@available(*, deprecated, renamed: "topKAttention(queries:keys:values:keysPerQuery:mask:options:)")
public func topKAttention(
    queries: Tensor, keys: Tensor, values: Tensor, k: Int, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    try topKAttention(queries: queries, keys: keys, values: values, keysPerQuery: k, mask: mask, options: options)
}

/// Replaced by ``LinearAttentionState/attend(queries:keys:values:options:)``, which continues a state in place.
@available(*, deprecated, message: "use LinearAttentionState.attend(queries:keys:values:options:)")
public func linearAttentionWithState(
    queries: Tensor, keys: Tensor, values: Tensor, initialState: LinearAttentionState? = nil,
    options: LinearAttentionOptions = LinearAttentionOptions()
) throws -> (output: Tensor, state: LinearAttentionState) {
    try linearAttentionAndState(
        queries: queries, keys: keys, values: values, initialState: initialState, options: options)
}

extension KVCache {
    /// Renamed ``partialAttention(queries:mask:options:)``.
    @available(*, deprecated, renamed: "partialAttention(queries:mask:options:)")
    public func attentionWithLogSumExp(
        queries: Tensor, mask: AttentionMask = .causal, options: AttentionOptions = AttentionOptions()
    ) throws -> AttentionResult {
        try partialAttention(queries: queries, mask: mask, options: options)
    }
}

extension BlockSparseLayout {
    /// Renamed ``topK(queries:keys:blockSize:keyBlocksPerQuery:causal:sinkBlocks:scoring:)``.
    @available(*, deprecated, renamed: "topK(queries:keys:blockSize:keyBlocksPerQuery:causal:sinkBlocks:scoring:)")
    public static func topK(
        queries: Tensor, keys: Tensor, blockSize: Int, k: Int, causal: Bool = false, sinkBlocks: Int = 0,
        scoring: BlockScoring = .meanKey
    ) throws -> BlockSparseLayout {
        try topK(
            queries: queries, keys: keys, blockSize: blockSize, keyBlocksPerQuery: k, causal: causal,
            sinkBlocks: sinkBlocks, scoring: scoring)
    }
}
