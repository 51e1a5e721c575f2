// KeyValueCache: the API the single-sequence caches share (KVCache here, RollingKVCache and StreamingKVCache in
// their variant modules), so that a model's layer can be written once over any of them.

/// A key/value cache of one attention layer for one batch of sequences decoded in step: it stores the keys and
/// values of the tokens it is given, in its `storage` format, and attends new tokens' queries over what it holds,
/// reading the stored tokens in place.
///
/// What a cache keeps and what a new token sees is the cache's own semantics: ``KVCache`` keeps every token (causal
/// attention over all of them), `RollingKVCache` the last `window` (sliding-window attention), `StreamingKVCache`
/// the first sinks and the last window (StreamingLLM). A decode loop generic over the cache reads the same for all:
///
/// ```swift
/// func decodeStep<Cache: KeyValueCache>(_ cache: inout Cache, q: Tensor, k: Tensor, v: Tensor) throws -> Tensor {
///     try cache.attend(queries: q, keys: k, values: v)     // q [B, Hq, n, d], k and v [B, Hkv, n, d]
/// }
/// ```
///
/// Conforming types are values (copies are independent) and `Sendable`; reads may run concurrently, mutations need
/// exclusive access, as for an `Array`. ``PagedKVCache``, which holds many sequences of different lengths, has its
/// own API (sequence identifiers and per-sequence counts) and does not conform.
public protocol KeyValueCache: Sendable {
    /// How keys and values are stored (``CacheStorage``: Float32, Float16, BFloat16, 8- or 4-bit blocks, and which
    /// tokens stay in Float32).
    var storage: CacheStorage { get }
    /// Tokens held (those the next `attend` can see, subject to the cache's mask).
    var count: Int { get }
    /// Tokens appended since creation or `removeAll()`, including any no longer held: the stream position of the
    /// next token.
    var tokenCount: Int { get }
    /// Bytes of key and value storage the cache occupies.
    var storageBytes: Int { get }
    /// The held keys and values in the order attention sees them, as [batch, keyValueHeads, count, D] Float32
    /// tensors decoded from the storage (a copy, for inspection and tests).
    var contents: (keys: Tensor, values: Tensor) { get }

    /// Attends the queries of n new tokens [batch, queryHeads, n, headDimension] over the held tokens and the new
    /// keys [batch, keyValueHeads, n, headDimension] and values [batch, keyValueHeads, n, valueDimension] under the
    /// cache's mask (new token i sees the new tokens up to itself), and stores the new tokens. Returns
    /// [batch, queryHeads, n, valueDimension].
    /// - Throws: ``AttentionError`` for shapes or options that do not fit the cache; the cache is then unchanged.
    mutating func attend(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws -> Tensor
    /// Stores n new tokens without attending them (a prompt whose outputs are not needed).
    /// - Throws: ``AttentionError`` for shapes that do not fit the cache; the cache is then unchanged.
    mutating func append(keys: Tensor, values: Tensor) throws
    /// Forgets every token (`count` and `tokenCount` become 0).
    mutating func removeAll()
}

extension KeyValueCache {
    /// `attend(queries:keys:values:options:)` with default options.
    public mutating func attend(queries: Tensor, keys: Tensor, values: Tensor) throws -> Tensor {
        try attend(queries: queries, keys: keys, values: values, options: AttentionOptions())
    }
}
