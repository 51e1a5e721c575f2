// Spellings renamed in 0.2 (see CHANGELOG.md), kept for one release so callers can move at their own pace. Each
// forwards to the new name and does nothing else.

/// Renamed ``partialAttention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` on tensors.
@available(*, deprecated, renamed: "partialAttention(queries:keys:values:mask:options:)")
public func attentionWithLogSumExp(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    try partialAttention(queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// Renamed ``partialAttention(queries:keys:values:mask:options:)-(StoredTensor,_,_,_,_)`` on stored tensors.
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
    /// Renamed ``topK(queries:keys:blockSize:keyBlocksPerQuery:mask:sinkBlocks:scoring:)``; `causal: true` is
    /// `mask: .causal`.
    @available(*, deprecated, renamed: "topK(queries:keys:blockSize:keyBlocksPerQuery:mask:sinkBlocks:scoring:)")
    public static func topK(
        queries: Tensor, keys: Tensor, blockSize: Int, k: Int, causal: Bool = false, sinkBlocks: Int = 0,
        scoring: BlockScoring = .meanKey
    ) throws -> BlockSparseLayout {
        try topK(
            queries: queries, keys: keys, blockSize: blockSize, keyBlocksPerQuery: k, mask: causal ? .causal : .none,
            sinkBlocks: sinkBlocks, scoring: scoring)
    }

    /// Use ``local(length:blockSize:windowBlocks:mask:)``; `causal: true` is `mask: .causal`.
    @available(*, deprecated, message: "use mask: .causal or .none")
    public static func local(length: Int, blockSize: Int, windowBlocks: Int, causal: Bool) throws
        -> BlockSparseLayout
    {
        try local(length: length, blockSize: blockSize, windowBlocks: windowBlocks, mask: causal ? .causal : .none)
    }

    /// Use ``global(length:blockSize:globalBlocks:mask:)``; `causal: true` is `mask: .causal`.
    @available(*, deprecated, message: "use mask: .causal or .none")
    public static func global(length: Int, blockSize: Int, globalBlocks: [Int], causal: Bool) throws
        -> BlockSparseLayout
    {
        try global(length: length, blockSize: blockSize, globalBlocks: globalBlocks, mask: causal ? .causal : .none)
    }

    /// Use ``strided(length:blockSize:stride:offsets:mask:)``; `causal: true` is `mask: .causal`.
    @available(*, deprecated, message: "use mask: .causal or .none")
    public static func strided(length: Int, blockSize: Int, stride: Int, offsets: [Int] = [0], causal: Bool) throws
        -> BlockSparseLayout
    {
        try strided(
            length: length, blockSize: blockSize, stride: stride, offsets: offsets, mask: causal ? .causal : .none)
    }

    /// Use ``bigBird(length:blockSize:windowBlocks:globalBlocks:random:seed:mask:)``; `causal: true` is
    /// `mask: .causal`.
    @available(*, deprecated, message: "use mask: .causal or .none")
    public static func bigBird(
        length: Int, blockSize: Int, windowBlocks: Int, globalBlocks: [Int], random: Int, seed: UInt64, causal: Bool
    ) throws -> BlockSparseLayout {
        try bigBird(
            length: length, blockSize: blockSize, windowBlocks: windowBlocks, globalBlocks: globalBlocks,
            random: random, seed: seed, mask: causal ? .causal : .none)
    }
}
