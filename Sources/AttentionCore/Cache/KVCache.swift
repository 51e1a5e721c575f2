// KVCache: the append-only key/value cache of one attention layer, for autoregressive decoding.
//
// Storage is a KeyValueBuffer ([batch, keyValueHeads, capacity, D], slots of a head contiguous). Appending copies
// the new tokens into free slots. The buffer is an address-space reservation for `maximumCapacity` tokens whose
// pages the operating system commits as the tokens reach them (SlotMemory), so growing never copies and never
// holds two copies of the cache; past the reservation (or where none can be made) the capacity doubles, one
// re-layout each time, amortized O(1) per token. Attention reads the stored keys and values in place.

/// An append-only cache of keys and values for one attention layer, in the grouped-query layout
/// [batch, keyValueHeads, tokens, headDimension].
///
/// ```swift
/// var cache = try KVCache(keyValueHeads: 8, headDimension: 128)
/// for step in 0..<steps {
///     let (q, k, v) = projections(step)                          // q [1, 32, 1, 128], k and v [1, 8, 1, 128]
///     try cache.append(keys: k, values: v)
///     let out = try cache.attention(queries: q)                  // [1, 32, 1, 128], over every cached token
/// }
/// ```
///
/// A ``KVCache`` is a value: copies are independent (copy-on-write), and a cache may be read from many threads at once
/// (`attention` does not mutate it) but, like an `Array`, must not be mutated while another thread uses it.
public struct KVCache: KeyValueCache {
    /// Tokens 0..<count - recent.held, in the storage's format (slot i holds token i).
    private var buffer: KeyValueBuffer
    /// The newest tokens, in Float32 (``CacheStorage/recentTokensInFloat32``).
    private var recent: RecentTokens
    /// How keys and values are stored.
    public let storage: CacheStorage
    /// The rotary embedding applied to keys as they are appended and to queries as they attend, if any.
    public let rotary: RotaryEmbedding?
    /// Tokens stored.
    public private(set) var count: Int = 0
    /// Tokens in `buffer` (count - recent.held).
    private var encoded = 0

    /// Creates an empty cache.
    /// - Parameters:
    ///   - batch: sequences decoded together (>= 1).
    ///   - keyValueHeads: key/value heads (>= 1); queries may have any multiple of it.
    ///   - headDimension: the key dimension (>= 1).
    ///   - valueDimension: the value dimension (default: `headDimension`).
    ///   - reservingCapacity: tokens to allocate room for up front (>= 0) when the cache has no reservation of
    ///     address space (see `maximumCapacity`); the cache grows past it as needed.
    ///   - maximumCapacity: tokens to reserve address space for (>= 1), so that the cache grows to that length in
    ///     place: pages are committed as tokens are written (at most one page per batch entry and head beyond the
    ///     tokens: 4 KiB, or 2 MiB once a head's rows pass 8 MiB), appending never copies stored tokens, and peak
    ///     memory never holds the cache twice. Default on Linux and macOS: as many tokens as fit in 64 GiB of
    ///     address space, at most 2^22 (`defaultMaximumCapacity`); elsewhere (iOS and other platforms with a small
    ///     address space) no reservation unless one is asked for. Appends past the reservation still work: the
    ///     cache moves once into a reservation twice as large. Where the system refuses the reservation (strict
    ///     overcommit, an address-space limit) or has no such mapping, the storage is an array whose capacity
    ///     doubles when it runs out (one copy each time).
    ///   - storage: how keys and values are stored (default Float32; see ``CacheStorage`` and ``StorageFormat``).
    ///     Tokens are encoded once, as they are appended (or as they leave the Float32 window of the newest
    ///     tokens); attention decodes them tile by tile as it reads them and accumulates in Float32.
    ///   - rotary: a rotary position embedding fused into the cache (FlashAttention's `rotary_cos`/`rotary_sin`,
    ///     ONNX Runtime's `do_rotary`): token t's key is rotated by position t as it is appended (only the new
    ///     tokens are touched, never the cache), and `attention` rotates its Nq queries by positions
    ///     count - Nq ..< count (they are the newest tokens). Pass unrotated keys and queries. Positions count from
    ///     the first appended token; every batch entry shares them.
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` naming the first size out of range, or the
    ///   dimension the storage does not fit (a block size that does not divide it, or a rotation of a dimension that is
    ///   not a power of two), or a rotary dimension above the head dimension.
    public init(
        batch: Int = 1, keyValueHeads: Int, headDimension: Int, valueDimension: Int? = nil,
        reservingCapacity: Int = 0, maximumCapacity: Int? = nil, storage: CacheStorage = .float32,
        rotary: RotaryEmbedding? = nil
    ) throws {
        try self.init(
            batch: batch, keyValueHeads: keyValueHeads, headDimension: headDimension, valueDimension: valueDimension,
            reservingCapacity: reservingCapacity, maximumCapacity: maximumCapacity, storage: storage,
            rotary: rotary, reservesAddressSpace: true)
    }

    /// `init(batch:keyValueHeads:headDimension:valueDimension:reservingCapacity:maximumCapacity:storage:rotary:)`,
    /// with `reservesAddressSpace: false` giving the doubling array whatever the platform (for the benchmark's
    /// comparison).
    package init(
        batch: Int = 1, keyValueHeads: Int, headDimension: Int, valueDimension: Int? = nil,
        reservingCapacity: Int = 0, maximumCapacity: Int? = nil, storage: CacheStorage = .float32,
        rotary: RotaryEmbedding? = nil, reservesAddressSpace: Bool
    ) throws {
        let dv = valueDimension ?? headDimension
        try KeyValueBuffer.validateDimensions(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv)
        try storage.validate(keyDimension: headDimension, valueDimension: dv)
        try AttentionError.require(
            reservingCapacity >= 0, "reservingCapacity", expected: ">= 0", actual: "\(reservingCapacity)")
        if let maximumCapacity {
            try AttentionError.require(
                maximumCapacity >= 1, "maximumCapacity", expected: ">= 1", actual: "\(maximumCapacity)")
        }
        try rotary?.validate(headDimension: headDimension)
        self.storage = storage
        self.rotary = rotary
        let rowBytes =
            storage.format.bytesPerRow(dimension: headDimension) + storage.format.bytesPerRow(dimension: dv)
        let reservation =
            reservesAddressSpace
            ? maximumCapacity ?? Self.defaultMaximumCapacity(bytesPerToken: batch * keyValueHeads * rowBytes) : nil
        buffer = KeyValueBuffer(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv,
            capacity: reservingCapacity, reservingSlots: reservation, keyFormat: storage.format,
            valueFormat: storage.format)
        recent = RecentTokens(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv,
            size: storage.recentTokensInFloat32)
    }

    /// The reservation `maximumCapacity` defaults to for a cache of `bytesPerToken` bytes per token: as many tokens
    /// as fit in 64 GiB of address space, at most 2^22, on Linux and macOS; nil (no reservation) elsewhere.
    public static func defaultMaximumCapacity(bytesPerToken: Int) -> Int? {
        #if os(Linux) || os(macOS)
            return Swift.max(1, Swift.min(1 << 22, (1 << 36) / Swift.max(1, bytesPerToken)))
        #else
            return nil
        #endif
    }

    /// Tokens the cache holds room for before it grows by a copy (with a reservation of address space, the
    /// tokens it is reserved for, rounded up to whole huge pages per head).
    public var capacity: Int { buffer.capacity + recent.buffer.capacity }
    /// Whether the cache grows in place in reserved address space (see `maximumCapacity`), rather than by
    /// doubling an array.
    public var growsInPlace: Bool { buffer.isReserved }
    /// The address of the encoded keys' storage, which moves only when the storage is replaced (for tests).
    package var keyStorageAddress: UInt { buffer.keyStorageAddress }
    /// Bytes of key and value storage the cache occupies: with a reservation, the pages its tokens have reached
    /// (committed memory, not the reserved address space); otherwise the allocated array.
    public var storageBytes: Int { buffer.bytes + recent.buffer.bytes }
    /// Bytes each token takes in the cache's format (its key and value rows in every batch entry and key/value
    /// head); tokens in the Float32 window of the newest take `4 * (headDimension + valueDimension)` per head.
    public var bytesPerToken: Int { buffer.bytesPerToken }

    /// Appends keys [batch, keyValueHeads, n, headDimension] and values [batch, keyValueHeads, n, valueDimension]
    /// (n >= 0 new tokens). O(n) in place within the reservation; past it (or without one) amortized O(n), the
    /// capacity doubling when it runs out. With `rotary`, key t is rotated
    /// by its position `count + t` first.
    /// - Throws: ``AttentionError/shapeMismatch(argument:expected:actual:reason:)`` if a shape does not fit the cache,
    ///   `.invalidValue` for a position past ``RotaryEmbedding/maximumPosition``; the cache is then unchanged.
    public mutating func append(keys: Tensor, values: Tensor) throws {
        let n = try buffer.validateAppend(keys: keys, values: values)
        let positioned = try rotary?.apply(to: keys, positions: Array(count..<(count + n))) ?? keys
        let (keys, values) = (storage.rotated(positioned), storage.rotated(values))
        for (k, v, rows) in recent.push(keys: keys, values: values, rows: 0..<n) {
            appendEncoded(keys: k, values: v, rows: rows)
        }
        count += n
    }

    /// Encodes tokens into `buffer`, growing it by doubling when it is full (past a reservation, into a new one).
    private mutating func appendEncoded(keys: Tensor, values: Tensor, rows: Range<Int>) {
        if encoded + rows.count > buffer.capacity {
            buffer.resize(to: Swift.max(encoded + rows.count, 2 * buffer.capacity, 16), keeping: encoded)
        }
        buffer.write(keys: keys, values: values, rows: rows, toSlot: encoded)
        encoded += rows.count
    }

    /// Tokens appended since creation or `removeAll()`: `count` (the cache keeps every token).
    public var tokenCount: Int { count }

    /// Appends the new tokens, then attends their queries over every cached token with `.causal` (new token i sees
    /// the tokens before it and itself): `append(keys:values:)` followed by `attention(queries:options:)`, the
    /// ``KeyValueCache`` step.
    /// - Throws: as `append` and `attention`, and ``AttentionError/shapeMismatch(argument:expected:actual:reason:)``
    ///   unless there is one query per new token; the cache is then unchanged.
    public mutating func attend(
        queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        let n = try buffer.validateAppend(keys: keys, values: values)
        try requireOneQueryPerToken(queries, tokens: n)
        // Validate the attention before the append changes anything.
        _ = try AttentionProblem(
            queries: queries, cacheBatch: buffer.batch, keyValueHeads: buffer.heads, keyLength: count + n,
            keyDimension: buffer.keyDimension, valueDimension: buffer.valueDimension, mask: .causal, options: options)
        try append(keys: keys, values: values)
        return try attention(queries: queries, options: options)
    }

    /// Forgets every token; keeps the allocated storage for reuse.
    public mutating func removeAll() {
        count = 0
        encoded = 0
        recent.removeAll()
    }

    /// The cache's tokens as the kernel reads them: the encoded ones, then the Float32 window.
    private var parts: [CachePart] {
        [CachePart(buffer: buffer, runs: [(0..<encoded, 0)]), recent.part(start: encoded)]
    }

    /// Attention of `queries` [batch, queryHeads, Nq, headDimension] over every cached token, read in place.
    ///
    /// The queries are taken to be the newest Nq tokens, so the default mask `.causal` (aligned bottom-right)
    /// lets query i see the cached tokens up to and including its own position; with one query this is every token.
    /// Any mask and option of ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` applies; `.automatic`
    /// picks the split-KV decode kernel for short queries.
    /// - Throws: ``AttentionError`` if the queries do not fit the cache (batch, head dimension, head grouping) or an
    ///   option is invalid.
    public func attention(
        queries: Tensor, mask: AttentionMask = .causal, options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        try partialAttention(queries: queries, mask: mask, options: options).output
    }

    /// Like `attention(queries:mask:options:)`, also returning each row's log-sum-exp and the kernel's workspace.
    public func partialAttention(
        queries: Tensor, mask: AttentionMask = .causal, options: AttentionOptions = AttentionOptions()
    ) throws -> AttentionResult {
        let queries = try rotary?.applyToNewest(queries, of: count) ?? queries
        return try attentionOverCache(
            queries: queries, parts: parts, cachedCount: count, newKeys: nil, newValues: nil, mask: mask,
            options: options, storage: storage)
    }

    /// The cached keys and values as [batch, keyValueHeads, count, D] Float32 tensors, decoded from the cache's
    /// storage (and Hadamard-rotated back when it rotates; keys keep their rotary embedding): attention over them
    /// equals attention over the cache up to rounding. A copy, for inspection and tests.
    public var contents: (keys: Tensor, values: Tensor) {
        gatheredContents(parts, storage: storage)
    }
}
