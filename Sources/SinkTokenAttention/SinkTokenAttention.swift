// SinkTokenAttention: StreamingLLM attention sinks (Xiao et al., 2023). The first tokens of a stream stay visible
// forever beside a causal window of recent tokens, which keeps a model stable far beyond its training length with a
// fixed-size cache.
//
// `SinkTokens` states the visibility and builds the core mask; `StreamingKVCache` holds exactly those tokens (sinks
// pinned, recent tokens in a ring); `HeadPolicy` runs some heads over the full context and others over sinks +
// window in one call (DuoAttention, Xiao et al., 2024). This module holds no loop over Q, K or V.
//
// Not to be confused with *learned sink logits* (`AttentionOptions.sinkLogits`, gpt-oss): a per-head logit that
// joins every softmax denominator without being a key. Sink tokens are real keys and values that are kept.
// Both can be used together.

@_exported import AttentionCore

/// StreamingLLM visibility: each query sees the first `count` tokens of the stream (the sink tokens) and the
/// `window` most recent tokens up to and including itself. `window` counts the query's own token, so
/// `SinkTokens(count: 4, window: 1020)` keeps a 1024-token cache.
///
/// ```swift
/// let streaming = try SinkTokens(count: 4, window: 1020)
/// let out = try streaming.attention(queries: q, keys: k, values: v)   // causal, sinks + window
/// ```
public struct SinkTokens: Sendable, Hashable {
    /// Sink tokens kept from the start of the stream (>= 0).
    public let count: Int
    /// Recent tokens visible, counting the query's own (>= 1).
    public let window: Int

    /// - Throws: `AttentionError.invalidValue` unless `count >= 0` and `window >= 1`.
    public init(count: Int, window: Int) throws {
        try AttentionError.require(count >= 0, "count", expected: ">= 0", actual: "\(count)")
        try AttentionError.require(
            window >= 1, "window", expected: ">= 1 (the window counts the query's own token)", actual: "\(window)")
        self.count = count
        self.window = window
    }

    /// The core mask: `.sinks(count:window:)`, causal.
    public var mask: AttentionMask { .sinks(count: count, window: window) }

    /// Sink-token attention over whole sequences, with any option of the core `attention` function.
    public func attention(
        queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        try AttentionCore.attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    }
}

/// What one query head attends to in a DuoAttention-style call.
public enum HeadPolicy: Sendable, Hashable {
    /// Every key the call's mask allows ("retrieval heads").
    case full
    /// Only the sink tokens and the recent window ("streaming heads").
    case streaming(SinkTokens)
}

/// Attention where each query head follows its own policy (DuoAttention): retrieval heads see the full causal
/// context, streaming heads only sinks + window. One call: the heads sharing a key/value head still read each key
/// tile once, and tiles that no head of a group sees are skipped.
///
/// - Parameters:
///   - policies: one per query head.
///   - mask: the visibility every head starts from (default `.causal`); streaming heads intersect it with their
///     sinks + window.
/// - Throws: ``AttentionError`` if `policies.count` differs from the query heads, or anything the core kernel rejects.
public func attention(
    queries: Tensor, keys: Tensor, values: Tensor, policies: [HeadPolicy], mask: AttentionMask = .causal,
    options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    var options = options
    options.headMasks = policies.map { policy in
        switch policy {
        case .full: return AttentionMask.none
        case .streaming(let sinks): return sinks.mask
        }
    }
    return try AttentionCore.attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// A key/value cache for StreamingLLM decoding: the first `sinks.count` tokens pinned, the most recent tokens in a
/// ring, so memory stays fixed however long the stream runs.
///
/// Each `attend` call takes the new tokens' queries, keys and values, computes their sinks + window attention over
/// the cached tokens plus the new ones (read in place: the sink slots, at most two runs of the ring, and the new
/// tokens), then stores the new tokens. O(1) per appended token; no stored key moves.
///
/// Positions for RoPE. StreamingLLM rotates queries and keys by their position *within the cache*, not in the
/// stream: the held tokens, sinks first, have positions 0, 1, 2, ... and a new token gets the position after the
/// keys it sees. `nextCachePositions(_:)` gives the new tokens' positions, and `cachePositions` the held tokens' in
/// attention order; `streamPositions` gives their original indices, for callers that rotate by stream position.
///
/// With `rotary` the cache does this itself (pass unrotated queries and keys), the cheap way: a score depends only
/// on the difference of its query's and key's positions, and between a query and a key of its window the
/// difference of cache positions equals that of stream positions (the window is a contiguous run of the stream).
/// So window keys are rotated once, by their stream position, as they are stored, and queries by theirs; only the
/// sinks, whose cache positions j lag the stream by the shift s(T) = T - (the query's cache position), are
/// re-rotated from a Float32 copy of their unrotated rows to j + s(T) when the shift changes (once per token after
/// the window fills). Cost per step: the new tokens' rotation plus sinks.count rows, independent of the stream's
/// length and of the window; nothing else in the cache is touched. This is `RotationTiming.whenStored`, the default.
///
/// `RotationTiming.whenLoaded` is StreamingLLM's own method: keys are stored unrotated, queries rotated by their
/// cache positions, and every held key is rotated by its cache position as the kernel loads its tile (into the
/// tile scratch, from a table of the cache's S + W positions computed once; no rotated copy of the cache is ever
/// made). Cost per step: a rotation of every held key of every key/value head (S + W rows, d / 2 multiply pairs
/// each) on top of the attention, which reads them anyway; storage types are decoded first and rotated after.
/// It cannot combine with `CacheStorage.hadamardRotation` (the Hadamard transform would sit between the key and
/// its position rotation). `contents` then returns the unrotated keys.
///
/// Either way, once the window is full every token has its own shift (its own cache positions), so `attend` runs
/// a chunk of several tokens one token at a time from there on.
///
/// ```swift
/// var cache = try StreamingKVCache(sinks: SinkTokens(count: 4, window: 1020), keyValueHeads: 8, headDimension: 128)
/// let position = cache.nextCachePositions(1)[0]          // rotate the new query and key by this position
/// let out = try cache.attend(queries: q, keys: k, values: v)
/// ```
///
/// A value type: copies are independent. Concurrent reads of one instance are safe; `attend`, `append` and
/// `removeAll` mutate it and need exclusive access, as for an `Array`.
public struct StreamingKVCache: KeyValueCache {
    /// When a cache with `rotary` rotates keys by their positions (see the type's documentation).
    public enum RotationTiming: Sendable, Hashable {
        /// Window keys once as they are stored, by stream position; the sinks re-rotated when the shift changes.
        case whenStored
        /// Every held key by its cache position as the kernel loads it (StreamingLLM's method); keys stored
        /// unrotated.
        case whenLoaded
    }

    /// The visibility the cache serves.
    public let sinks: SinkTokens
    /// How keys and values are stored.
    public let storage: CacheStorage
    /// The sink tokens, slots 0..<sinks.count (in Float32 when `storage.sinksInFloat32`).
    private var sinkBuffer: KeyValueBuffer
    private var sinkHeld = 0
    /// The older window - recent.size recent tokens, in the storage's format.
    private var buffer: KeyValueBuffer
    private var ring: RingSlots
    /// The newest tokens, in Float32.
    private var recent: RecentTokens
    /// The rotary embedding the cache applies by StreamingLLM positions, if any (see the type's documentation).
    public let rotary: RotaryEmbedding?
    /// When `rotary` is applied to keys.
    public let rotationTiming: RotationTiming
    /// With `.whenLoaded`: the cosines and sines of the cache positions 0 ..< sinks.count + sinks.window.
    private let positionTable: RotaryPositionTable?
    /// With `rotary`: the held sinks' keys and values before any rotation, [batch, keyValueHeads, sinks.count, D]
    /// (filled up to `sinkHeld`), and the shift the stored sink keys are rotated by.
    private var sinkKeys: [Float] = []
    private var sinkValues: [Float] = []
    private var sinkShift = 0
    /// Tokens seen since creation (or `removeAll`), including those no longer held.
    public private(set) var tokenCount = 0

    /// Creates an empty cache for `sinks` (valueDimension defaults to headDimension).
    /// - Parameter storage: how keys and values are stored (default Float32; see ``CacheStorage``): the sinks in
    ///   Float32 when `sinksInFloat32`, the newest `min(sinks.window, recentTokensInFloat32)` tokens in Float32,
    ///   the rest of the window in the storage's format.
    /// - Throws: `AttentionError.invalidValue` naming the first size out of range or the dimension the storage does
    ///   not fit.
    ///   - rotary: a rotary embedding to apply by StreamingLLM's cache positions (see the type's documentation).
    ///   - rotationTiming: when keys are rotated (`.whenStored` by default); `.whenLoaded` with `rotary` and
    ///     `storage.hadamardRotation` throws `AttentionError.invalidValue` naming `rotationTiming`.
    public init(
        sinks: SinkTokens, batch: Int = 1, keyValueHeads: Int, headDimension: Int, valueDimension: Int? = nil,
        storage: CacheStorage = .float32, rotary: RotaryEmbedding? = nil, rotationTiming: RotationTiming = .whenStored
    ) throws {
        let dv = valueDimension ?? headDimension
        try KeyValueBuffer.validateDimensions(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv)
        try storage.validate(keyDimension: headDimension, valueDimension: dv)
        try rotary?.validate(headDimension: headDimension)
        try AttentionError.require(
            !(rotationTiming == .whenLoaded && rotary != nil && storage.hadamardRotation), "rotationTiming",
            expected: ".whenStored with storage.hadamardRotation (keys are rotated before the Hadamard transform)",
            actual: ".whenLoaded")
        self.rotary = rotary
        self.rotationTiming = rotationTiming
        positionTable =
            rotationTiming == .whenLoaded
            ? rotary.map {
                RotaryPositionTable($0, headDimension: headDimension, positions: sinks.count + sinks.window)
            }
            : nil
        self.sinks = sinks
        self.storage = storage
        if rotary != nil && rotationTiming == .whenStored {
            sinkKeys = [Float](repeating: 0, count: batch * keyValueHeads * sinks.count * headDimension)
            sinkValues = [Float](repeating: 0, count: batch * keyValueHeads * sinks.count * dv)
        }
        let sinkFormat = storage.sinksInFloat32 ? StorageFormat.float32 : storage.format
        sinkBuffer = KeyValueBuffer(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv,
            capacity: sinks.count, keyFormat: sinkFormat, valueFormat: sinkFormat)
        let recentSize = Swift.min(sinks.window, storage.recentTokensInFloat32)
        buffer = KeyValueBuffer(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv,
            capacity: sinks.window - recentSize, keyFormat: storage.format, valueFormat: storage.format)
        ring = RingSlots(base: 0, size: sinks.window - recentSize)
        recent = RecentTokens(
            batch: batch, heads: keyValueHeads, keyDimension: headDimension, valueDimension: dv, size: recentSize)
    }

    /// Tokens held: at most sinks.count + sinks.window.
    public var count: Int { sinkHeld + ring.held + recent.held }

    /// Bytes of key and value storage (fixed at creation).
    public var storageBytes: Int { sinkBuffer.bytes + buffer.bytes + recent.buffer.bytes }

    /// Stream indices of the held tokens in attention order: the sinks, then the recent tokens oldest first.
    public var streamPositions: [Int] {
        Array(0..<sinkHeld) + Array((tokenCount - ring.held - recent.held)..<tokenCount)
    }

    /// Held tokens in attention order: the sinks, the encoded ring, the Float32 window of the newest. Between the
    /// sinks and the ring lies the evicted gap, which the mask never reaches: a window only looks back `window - 1`
    /// tokens and the cache holds the last `window`.
    private var parts: [CachePart] {
        [
            CachePart(buffer: sinkBuffer, runs: [(0..<sinkHeld, 0)]),
            CachePart(buffer: buffer, runs: ring.runs(start: sinkHeld)), recent.part(start: sinkHeld + ring.held),
        ]
    }

    /// Positions within the cache of the held tokens in attention order: 0..<count.
    public var cachePositions: Range<Int> { 0..<count }

    /// The position within the cache of each of the next `n` tokens when it is attended: the number of keys it
    /// sees before itself (its sinks, then the up to `window - 1` recent tokens before it). This is the position
    /// StreamingLLM rotates a new query and key by.
    public func nextCachePositions(_ n: Int) -> [Int] {
        (tokenCount..<(tokenCount + Swift.max(0, n))).map { t in
            t < sinks.count ? t : sinks.count + Swift.min(t - sinks.count, sinks.window - 1)
        }
    }

    /// Attends the new tokens (each sees the sinks and the `window` most recent tokens up to itself) and stores them.
    ///
    /// - Parameters:
    ///   - queries: [batch, queryHeads, n, headDimension], one per new token (queryHeads a multiple of keyValueHeads).
    ///   - keys: [batch, keyValueHeads, n, headDimension]; values: [batch, keyValueHeads, n, valueDimension].
    ///   - options: any core option; learned `sinkLogits` may be combined with sink tokens.
    /// - Returns: [batch, queryHeads, n, valueDimension].
    /// - Throws: ``AttentionError`` for shapes that do not fit the cache; the cache is then unchanged.
    public mutating func attend(
        queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions = AttentionOptions()
    ) throws -> Tensor {
        let n = try buffer.validateAppend(keys: keys, values: values)
        try requireOneQueryPerToken(queries, tokens: n)
        guard let rotary else {
            return try attendRotated(queries: queries, keys: keys, values: values, options: options)
        }
        try AttentionCore.RotaryEmbedding.validatePositions(Array(tokenCount..<(tokenCount + n)))
        // Runs of tokens that share a sink shift: everything up to a full window, then one token at a time.
        var outputs: [Tensor] = []
        var t = 0
        while t < n {
            let stream = tokenCount
            let shift = stream - nextCachePositions(1)[0]
            let run = shift == 0 ? Swift.min(n - t, sinks.count + sinks.window - stream) : 1
            let (q, k, v) = (slice(queries, t..<(t + run)), slice(keys, t..<(t + run)), slice(values, t..<(t + run)))
            if let positionTable {
                outputs.append(
                    try attendRotatingAtLoad(
                        queries: rotary.apply(to: q, positions: nextCachePositions(run)), keys: k, values: v,
                        table: positionTable, options: options))
                t += run
                continue
            }
            if shift != sinkShift { rotateSinks(by: shift, rotary) }
            let positions = Array(stream..<(stream + run))
            outputs.append(
                try attendRotated(
                    queries: rotary.apply(to: q, positions: positions), keys: rotary.apply(to: k, positions: positions),
                    values: v, originalKeys: k, options: options))
            t += run
        }
        return outputs.count == 1 ? outputs[0] : concatenated(outputs)
    }

    /// Rewrites the held sinks' keys rotated by positions j + shift (from their unrotated copy).
    private mutating func rotateSinks(by shift: Int, _ rotary: RotaryEmbedding) {
        sinkShift = shift
        guard sinkHeld > 0 else { return }
        let (b, h, dk, dv) = (sinkBuffer.batch, sinkBuffer.heads, sinkBuffer.keyDimension, sinkBuffer.valueDimension)
        let keys = Tensor(uncheckedShape: [b, h, sinks.count, dk], scalars: sinkKeys)
        let values = Tensor(uncheckedShape: [b, h, sinks.count, dv], scalars: sinkValues)
        // Positions stay far below RotaryEmbedding.maximumPosition: the shift is at most the stream index.
        let rotated = try! rotary.apply(to: keys, positions: (0..<sinks.count).map { $0 + shift })
        sinkBuffer.write(
            keys: storage.rotated(rotated), values: storage.rotated(values), rows: 0..<sinkHeld, toSlot: 0)
    }

    /// One run of `attend`, its queries and keys already at their positions.
    private mutating func attendRotated(
        queries: Tensor, keys: Tensor, values: Tensor, originalKeys: Tensor? = nil, options: AttentionOptions
    ) throws -> Tensor {
        let n = keys.shape[2]
        let original = (originalKeys ?? keys, values)
        let (keys, values) = (storage.rotated(keys), storage.rotated(values))
        let result = try attentionOverCache(
            queries: queries, parts: parts, cachedCount: count, newKeys: keys, newValues: values, mask: sinks.mask,
            options: options, storage: storage)
        store(keys: keys, values: values, tokens: n, original: original)
        return result.output
    }

    /// One run of `attend` with `.whenLoaded`: its queries at their cache positions, its keys unrotated. Held keys
    /// are rotated by cache position as they load: the sinks by their slot, every later key by its logical index
    /// less the held window tokens the run's queries no longer see (at most one, the oldest, once the window is
    /// full; it is hidden by the mask, and its clamped rotation never matters).
    private mutating func attendRotatingAtLoad(
        queries: Tensor, keys: Tensor, values: Tensor, table: RotaryPositionTable, options: AttentionOptions
    ) throws -> Tensor {
        let n = keys.shape[2]
        let windowHeld = ring.held + recent.held
        let hidden = Swift.max(0, windowHeld - (sinks.window - 1))
        let (keys, values) = (storage.rotated(keys), storage.rotated(values))
        let sinkCount = sinkHeld
        let result = try table.withRowRotation { rotation in
            try attentionOverCache(
                queries: queries, parts: parts, cachedCount: count, newKeys: keys, newValues: values, mask: sinks.mask,
                options: options, storage: storage,
                keyRotation: { segment in
                    var rotation = rotation
                    rotation.positionOffset = segment.start < sinkCount ? 0 : -hidden
                    return rotation
                })
        }
        store(keys: keys, values: values, tokens: n, original: (keys, values))
        return result.output
    }

    /// Stores tokens without attending them (with `rotary` and `.whenStored`, keys rotated by their stream
    /// positions; with `.whenLoaded` stored as given).
    /// - Throws: ``AttentionError`` for shapes that do not fit the cache, or a position past
    ///   `RotaryEmbedding.maximumPosition`; the cache is then unchanged.
    public mutating func append(keys: Tensor, values: Tensor) throws {
        let n = try buffer.validateAppend(keys: keys, values: values)
        let positioned =
            positionTable != nil
            ? keys : try rotary?.apply(to: keys, positions: Array(tokenCount..<(tokenCount + n))) ?? keys
        store(
            keys: storage.rotated(positioned), values: storage.rotated(values), tokens: n, original: (keys, values))
    }

    /// Stores tokens (`original`: the keys and values before any rotation, kept for the sinks with `rotary`).
    private mutating func store(keys: Tensor, values: Tensor, tokens n: Int, original: (Tensor, Tensor)) {
        // The first sinks.count tokens of the stream fill the sink slots; the rest go to the ring.
        let toSinks = Swift.min(n, sinks.count - sinkHeld)
        if rotary != nil && rotationTiming == .whenStored && toSinks > 0 {
            // Sinks join at shift 0 (the stream's first tokens), so their stored rotation is by their own position.
            let (heads, dk, dv) = (
                sinkBuffer.batch * sinkBuffer.heads, sinkBuffer.keyDimension, sinkBuffer.valueDimension
            )
            for head in 0..<heads {
                for t in 0..<toSinks {
                    for c in 0..<dk {
                        sinkKeys[(head * sinks.count + sinkHeld + t) * dk + c] =
                            original.0.scalars[(head * n + t) * dk + c]
                    }
                    for c in 0..<dv {
                        sinkValues[(head * sinks.count + sinkHeld + t) * dv + c] =
                            original.1.scalars[(head * n + t) * dv + c]
                    }
                }
            }
        }
        sinkBuffer.write(keys: keys, values: values, rows: 0..<toSinks, toSlot: sinkHeld)
        sinkHeld += toSinks
        // Then into the Float32 window of the newest; what leaves it goes to the encoded ring.
        for (k, v, rows) in recent.push(keys: keys, values: values, rows: toSinks..<n) {
            ring.store(keys: k, values: v, rows: rows, in: &buffer)
        }
        tokenCount += n
    }

    /// Forgets every token.
    public mutating func removeAll() {
        sinkHeld = 0
        sinkShift = 0
        ring.removeAll()
        recent.removeAll()
        tokenCount = 0
    }

    /// The held keys and values in attention order, as [batch, keyValueHeads, count, D] tensors (a copy).
    public var contents: (keys: Tensor, values: Tensor) {
        gatheredContents(parts, storage: storage)
    }
}

/// Tokens `range` (axis 2) of a [batch, heads, n, D] tensor.
private func slice(_ tensor: Tensor, _ range: Range<Int>) -> Tensor {
    let s = tensor.shape
    if range == 0..<s[2] { return tensor }
    var scalars: [Float] = []
    scalars.reserveCapacity(s[0] * s[1] * range.count * s[3])
    for head in 0..<(s[0] * s[1]) {
        scalars += tensor.scalars[((head * s[2] + range.lowerBound) * s[3])..<((head * s[2] + range.upperBound) * s[3])]
    }
    return Tensor(uncheckedShape: [s[0], s[1], range.count, s[3]], scalars: scalars)
}

/// [batch, heads, n_i, D] tensors joined along axis 2.
private func concatenated(_ parts: [Tensor]) -> Tensor {
    let s = parts[0].shape
    let total = parts.reduce(0) { $0 + $1.shape[2] }
    var scalars: [Float] = []
    scalars.reserveCapacity(s[0] * s[1] * total * s[3])
    for head in 0..<(s[0] * s[1]) {
        for part in parts {
            let rows = part.shape[2] * s[3]
            scalars += part.scalars[(head * rows)..<((head + 1) * rows)]
        }
    }
    return Tensor(uncheckedShape: [s[0], s[1], total, s[3]], scalars: scalars)
}
