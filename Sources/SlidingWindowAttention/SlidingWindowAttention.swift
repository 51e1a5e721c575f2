// SlidingWindowAttention: each query sees a fixed window of keys around its own position (Longformer, Mistral).
//
// `SlidingWindow` states the window and builds the core mask; `RollingKVCache` keeps exactly the keys and values
// a causal window needs for decoding, in a ring buffer. The core kernel skips every key tile outside the window,
// so the cost is O(N * window), not O(N^2). This module holds no loop over Q, K or V.
//
// Counting convention (stated once, used everywhere): a window counts positions relative to the query's own key
// position (its "diagonal": key i + Nk - Nq for query i). `left` keys before it and `right` keys after it are
// visible, and the diagonal key itself is always visible. So `SlidingWindow.causal(size: W)` lets each query see W
// keys *including its own*: itself and the W - 1 before it. (Mistral's `sliding_window = 4096` counted the other
// way in some implementations, seeing 4097 keys; with this package write `.causal(size: 4097)` to match those.)

@_exported import AttentionCore

/// A sliding attention window: query i sees keys from `left` before to `right` after its diagonal key, and the
/// diagonal key itself (left + right + 1 keys where the sequence allows).
///
/// ```swift
/// let window = try SlidingWindow.causal(size: 4096)        // each token sees itself and the 4095 before it
/// let out = try window.attention(queries: q, keys: k, values: v)
/// ```
public struct SlidingWindow: Sendable, Hashable {
    /// Keys visible before the diagonal (>= 0).
    public let left: Int
    /// Keys visible after the diagonal (>= 0; 0 for a causal window).
    public let right: Int

    /// - Throws: `AttentionError.invalidValue` if `left` or `right` is negative.
    public init(left: Int, right: Int) throws {
        try AttentionError.require(left >= 0, "left", expected: ">= 0", actual: "\(left)")
        try AttentionError.require(right >= 0, "right", expected: ">= 0", actual: "\(right)")
        self.left = left
        self.right = right
    }

    /// A causal window of `size` keys counting the query's own: itself and the `size - 1` keys before it.
    /// - Throws: `AttentionError.invalidValue` unless `size >= 1`.
    public static func causal(size: Int) throws -> SlidingWindow {
        try AttentionError.require(
            size >= 1, "size", expected: ">= 1 (the window counts the query's own key)",
            actual: "\(size)")
        return try SlidingWindow(left: size - 1, right: 0)
    }

    /// Keys a query sees where the sequence does not cut the window: left + right + 1.
    public var size: Int { left + right + 1 }

    /// The core mask: `.window(left:right:)`.
    public var mask: AttentionMask { .window(left: left, right: right) }

    /// Sliding-window attention with any option of the core `attention` function. Shapes as there.
    public func attention(
        queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        try AttentionCore.attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    }
}

/// A key/value cache for causal sliding-window decoding: a ring buffer of the last `window` tokens per key/value
/// head, so memory stays fixed however long the sequence grows.
///
/// Each `attend` call takes the new tokens' queries, keys and values, computes their window attention over the
/// cached tokens plus the new ones (read in place: the ring hands the kernel at most two contiguous runs, the new
/// tokens a third), then stores the new tokens, overwriting the oldest. Appending is O(1) per token and never
/// moves a stored key.
///
/// ```swift
/// var cache = try RollingKVCache(window: 4096, keyValueHeads: 8, headDimension: 128)
/// let prefill = try cache.attend(queries: q, keys: k, values: v)       // any number of tokens at once
/// let next = try cache.attend(queries: q1, keys: k1, values: v1)       // one token: q1 [1, 32, 1, 128]
/// ```
///
/// A value type: copies are independent. Concurrent reads of one instance are safe; `attend`, `append` and
/// `removeAll` mutate it and need exclusive access, as for an `Array`.
public struct RollingKVCache: KeyValueCache {
    /// The window: each new token sees itself and the `window - 1` tokens before it.
    public let window: Int
    /// How keys and values are stored.
    public let storage: CacheStorage
    /// The older window - recent.size held tokens, in the storage's format.
    private var buffer: KeyValueBuffer
    private var ring: RingSlots
    /// The newest tokens, in Float32.
    private var recent: RecentTokens
    /// Tokens seen since creation (or `removeAll`), including those no longer held.
    public private(set) var tokenCount = 0

    /// Creates an empty cache.
    /// - Parameters:
    ///   - window: keys each token sees, counting itself (>= 1). The ring holds this many tokens.
    ///   - batch, keyValueHeads, headDimension, valueDimension: the layout of the keys and values to append
    ///     (valueDimension defaults to headDimension).
    ///   - storage: how keys and values are stored (default Float32; see ``CacheStorage``). The newest
    ///     `min(window, storage.recentTokensInFloat32)` tokens stay in Float32.
    /// - Throws: `AttentionError.invalidValue` naming the first size out of range or the dimension the storage does
    ///   not fit.
    public init(
        window: Int, batch: Int = 1, keyValueHeads: Int, headDimension: Int, valueDimension: Int? = nil,
        storage: CacheStorage = .float32
    ) throws {
        let dv = valueDimension ?? headDimension
        try AttentionError.require(window >= 1, "window", expected: ">= 1", actual: "\(window)")
        try KeyValueBuffer.validateDimensions(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv)
        try storage.validate(keyDimension: headDimension, valueDimension: dv)
        self.window = window
        self.storage = storage
        let recentSize = Swift.min(window, storage.recentTokensInFloat32)
        buffer = KeyValueBuffer(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv,
            capacity: window - recentSize, keyFormat: storage.format, valueFormat: storage.format)
        ring = RingSlots(base: 0, size: window - recentSize)
        recent = RecentTokens(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv, size: recentSize)
    }

    /// Tokens held: min(tokenCount, window).
    public var count: Int { ring.held + recent.held }

    /// Bytes of key and value storage (fixed at creation).
    public var storageBytes: Int { buffer.bytes + recent.buffer.bytes }

    /// The held tokens as the kernel reads them: the encoded ring, then the Float32 window of the newest.
    private var parts: [CachePart] {
        [CachePart(buffer: buffer, runs: ring.runs(start: 0)), recent.part(start: ring.held)]
    }

    /// Stream positions (0-based token indices since creation) of the held tokens, oldest first: the order in
    /// which the kernel sees them.
    public var positions: [Int] { Array((tokenCount - count)..<tokenCount) }

    /// Attends the new tokens and stores them.
    ///
    /// - Parameters:
    ///   - queries: [batch, queryHeads, n, headDimension], the queries of the n new tokens (queryHeads a multiple of
    ///     keyValueHeads).
    ///   - keys: [batch, keyValueHeads, n, headDimension]; values: [batch, keyValueHeads, n, valueDimension].
    ///   - options: scale, softcap, ALiBi, learned sink logits, kernel, threads (a bias must be
    ///     [.., n, count + n]).
    /// - Returns: [batch, queryHeads, n, valueDimension]: new token i attends to itself and the `window - 1`
    ///   tokens before it, whether they were cached or arrived in the same call.
    /// - Throws: ``AttentionError`` for shapes that do not fit the cache; the cache is then unchanged.
    public mutating func attend(
        queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        let n = try buffer.validateAppend(keys: keys, values: values)
        try requireOneQueryPerToken(queries, tokens: n)
        let (keys, values) = (storage.rotated(keys), storage.rotated(values))
        let result = try attentionOverCache(
            queries: queries, parts: parts, cachedCount: count, newKeys: keys, newValues: values,
            mask: .window(left: window - 1, right: 0), options: options, storage: storage)
        store(keys: keys, values: values, tokens: n)
        return result.output
    }

    /// Stores rotated tokens: into the Float32 window, and what leaves it into the encoded ring.
    private mutating func store(keys: Tensor, values: Tensor, tokens n: Int) {
        for (k, v, rows) in recent.push(keys: keys, values: values, rows: 0..<n) {
            ring.store(keys: k, values: v, rows: rows, in: &buffer)
        }
        tokenCount += n
    }

    /// Stores tokens without attending them (e.g. a prompt whose outputs are not needed).
    public mutating func append(keys: Tensor, values: Tensor) throws {
        let n = try buffer.validateAppend(keys: keys, values: values)
        store(keys: storage.rotated(keys), values: storage.rotated(values), tokens: n)
    }

    /// Forgets every token.
    public mutating func removeAll() {
        ring.removeAll()
        recent.removeAll()
        tokenCount = 0
    }

    /// The held keys and values, oldest first, as [batch, keyValueHeads, count, D] Float32 tensors, decoded (and
    /// rotated back) from the cache's storage (a copy).
    public var contents: (keys: Tensor, values: Tensor) {
        gatheredContents(parts, storage: storage)
    }
}
