// CacheStorage: how a key/value cache stores its tokens: the row format, the most recent tokens and the sink tokens
// kept in Float32 beside a quantized cache (as KIVI does, and as ONNX Runtime's low-bit proposal does), and an
// optional Hadamard rotation that spreads outliers across a row before it is quantized (on in llama.cpp for every
// quantized cache). Also the pieces the three caches share to honour it: `RecentTokens` (the Float32 ring of the
// newest tokens) and `attentionOverCache(parts:)` (attention over tokens held in several buffers, read in place).

/// How a cache stores keys and values.
///
/// ```swift
/// // 4-bit blocks of 32, the newest 128 tokens in Float32, rows rotated before they are quantized.
/// let storage = CacheStorage(.int4(), recentTokensInFloat32: 128, hadamardRotation: true)
/// var cache = try KVCache(keyValueHeads: 8, headDimension: 128, storage: storage)
/// ```
///
/// - Recent tokens: the newest `recentTokensInFloat32` tokens stay in Float32; a token is encoded in `format` once,
///   when it leaves that window, and never again (nothing stored is re-encoded, except the sinks of a
///   `StreamingKVCache` with `rotary`, `.whenStored` and `sinksInFloat32: false`, which are encoded again from a
///   Float32 copy whenever their rotation shifts).
/// - New tokens: `RollingKVCache.attend` and `StreamingKVCache.attend` read a step's new keys and values as given
///   (Float32) for that step's own attention and store them afterwards, so with `recentTokensInFloat32: 0` a token
///   is exact in its own step and encoded in every later one. `KVCache.attend` appends first (`append`, then
///   `attention`), so its new tokens are read as stored.
/// - Sink tokens (`StreamingKVCache`): with `sinksInFloat32` (the default) the pinned sinks stay in Float32.
/// - Hadamard rotation: every key and value row is multiplied by H / sqrt(D), H the D x D Walsh-Hadamard matrix
///   (D a power of two), before it is stored; queries are rotated the same way and outputs rotated back. The
///   rotation is orthonormal and its own inverse, so scores q . k and outputs are unchanged in exact arithmetic;
///   what changes is that a few large coordinates are spread over the whole row, so a block's scale is set by the
///   row's typical size rather than by its outlier. It costs O(D log D) per row on append and per query and output.
public struct CacheStorage: Sendable, Hashable {
    /// The format of tokens outside the Float32 windows.
    public var format: StorageFormat
    /// The newest tokens kept in Float32 (>= 0).
    public var recentTokensInFloat32: Int
    /// Whether `StreamingKVCache` keeps its sink tokens in Float32.
    public var sinksInFloat32: Bool
    /// Whether rows are Hadamard-rotated before they are stored (key and value dimensions must be powers of two).
    public var hadamardRotation: Bool

    /// A storage choice; only `format` is required.
    ///
    /// The combination is checked when a cache is created with it (for instance `hadamardRotation` needs
    /// power-of-two key and value dimensions, `recentTokensInFloat32` must be >= 0): the cache's initializer throws
    /// ``AttentionError/invalidValue(argument:expected:actual:)`` otherwise, naming what does not fit (for instance
    /// `recentTokensInFloat32`, `headDimension` or `format.blockSize`).
    public init(
        _ format: StorageFormat, recentTokensInFloat32: Int = 0, sinksInFloat32: Bool = true,
        hadamardRotation: Bool = false
    ) {
        self.format = format
        self.recentTokensInFloat32 = recentTokensInFloat32
        self.sinksInFloat32 = sinksInFloat32
        self.hadamardRotation = hadamardRotation
    }

    /// Every token in Float32 (4 bytes per value), the default.
    public static let float32 = CacheStorage(.float32)
    /// Every token in IEEE binary16 (2 bytes per value).
    public static let float16 = CacheStorage(.float16)
    /// Every token in bfloat16 (2 bytes per value; Float32's range, 8 significant bits).
    public static let bfloat16 = CacheStorage(.bfloat16)
    /// 8-bit blocks of 32 values.
    public static let int8 = CacheStorage(.int8())
    /// 4-bit blocks of 32 values.
    public static let int4 = CacheStorage(.int4())

    /// Throws unless the storage fits rows of these dimensions.
    package func validate(keyDimension: Int, valueDimension: Int) throws {
        try format.validate(dimension: keyDimension, argument: "format", dimensionName: "headDimension")
        try format.validate(dimension: valueDimension, argument: "format", dimensionName: "valueDimension")
        try AttentionError.require(
            recentTokensInFloat32 >= 0, "recentTokensInFloat32", expected: ">= 0", actual: "\(recentTokensInFloat32)")
        if hadamardRotation {
            for (name, d) in [("headDimension", keyDimension), ("valueDimension", valueDimension)] {
                try AttentionError.require(
                    d & (d - 1) == 0, name, expected: "a power of two for hadamardRotation", actual: "\(d)")
            }
        }
    }

    /// `tensor` ([..., D]) as the cache holds it: rotated when `hadamardRotation` is on. Rotating twice restores it
    /// (up to rounding), so this also turns rotated outputs and contents back.
    package func rotated(_ tensor: Tensor) -> Tensor {
        hadamardRotation ? hadamardRotatedRows(tensor) : tensor
    }
}

/// Every row (last dimension D, a power of two) of `tensor` multiplied by the orthonormal Walsh-Hadamard matrix
/// H / sqrt(D): the fast transform's log2(D) butterfly passes, then the scale.
package func hadamardRotatedRows(_ tensor: Tensor) -> Tensor {
    let d = tensor.shape.last ?? 1
    var scalars = tensor.scalars
    let scale = 1 / Float(d).squareRoot()
    scalars.withUnsafeMutableBufferPointer { buffer in
        guard let base = buffer.baseAddress, d > 1 else { return }
        for rowStart in stride(from: 0, to: buffer.count, by: d) {
            let row = base + rowStart
            var half = 1
            while half < d {
                for start in stride(from: 0, to: d, by: 2 * half) {
                    for i in start..<(start + half) {
                        let (a, b) = (row[i], row[i + half])
                        row[i] = a + b
                        row[i + half] = a - b
                    }
                }
                half *= 2
            }
            for i in 0..<d { row[i] *= scale }
        }
    }
    return Tensor(uncheckedShape: tensor.shape, scalars: scalars)
}

/// The newest tokens of a cache in Float32: a ring of `size` slots. Pushing tokens hands back, oldest first, the
/// tokens that leave it, for the cache to encode into its own format once.
package struct RecentTokens: Sendable {
    package private(set) var buffer: KeyValueBuffer
    package private(set) var ring: RingSlots

    package init(batch: Int, heads: Int, keyDimension: Int, valueDimension: Int, size: Int) {
        buffer = KeyValueBuffer(
            batch: batch, heads: heads, keyDimension: keyDimension, valueDimension: valueDimension, capacity: size)
        ring = RingSlots(base: 0, size: size)
    }

    /// Tokens held (<= size).
    package var held: Int { ring.held }

    /// Stores tokens `rows` of `keys` / `values` ([batch, heads, n, D]) and returns the tokens that no longer fit,
    /// oldest first, as (keys, values, rows) pieces: first the ring's oldest, then the oldest of the new rows.
    package mutating func push(keys: Tensor, values: Tensor, rows: Range<Int>) -> [(Tensor, Tensor, Range<Int>)] {
        let leaving = Swift.max(0, ring.held + rows.count - ring.size)
        let fromRing = Swift.min(leaving, ring.held)
        var evicted: [(Tensor, Tensor, Range<Int>)] = []
        if fromRing > 0 {
            let oldest = buffer.gather(prefix(ring.slotRuns, count: fromRing))
            evicted.append((oldest.keys, oldest.values, 0..<fromRing))
        }
        let fromNew = leaving - fromRing
        if fromNew > 0 { evicted.append((keys, values, rows.lowerBound..<(rows.lowerBound + fromNew))) }
        // Storing overwrites exactly the ring's `fromRing` oldest slots (see `RingSlots.store`).
        ring.store(keys: keys, values: values, rows: (rows.lowerBound + fromNew)..<rows.upperBound, in: &buffer)
        return evicted
    }

    /// The held tokens as one cache part, the oldest at logical position `start`.
    package func part(start: Int) -> CachePart { CachePart(buffer: buffer, runs: ring.runs(start: start)) }

    package mutating func removeAll() { ring.removeAll() }
}

/// The first `count` slots of `runs`, in order.
private func prefix(_ runs: [Range<Int>], count: Int) -> [Range<Int>] {
    var left = count
    var out: [Range<Int>] = []
    for run in runs where left > 0 {
        let take = Swift.min(left, run.count)
        out.append(run.lowerBound..<(run.lowerBound + take))
        left -= take
    }
    return out
}

/// Tokens held in one buffer: slot runs, each starting at a logical key position.
package struct CachePart {
    package let buffer: KeyValueBuffer
    package let runs: [(slots: Range<Int>, start: Int)]

    package init(buffer: KeyValueBuffer, runs: [(slots: Range<Int>, start: Int)]) {
        self.buffer = buffer
        self.runs = runs
    }
}

/// Calls `body` with the segments of every part, in order, each buffer read in place.
package func withSegments<R>(of parts: ArraySlice<CachePart>, _ body: ([KeyValueSegment]) throws -> R) rethrows -> R {
    guard let first = parts.first else { return try body([]) }
    return try first.buffer.withSegments(first.runs) { head in
        try withSegments(of: parts.dropFirst()) { rest in try body(head + rest) }
    }
}

/// The keys and values of `parts`, decoded, concatenated in order and rotated back by `storage`, as
/// [batch, heads, n, D] Float32 tensors: a cache's `contents`.
package func gatheredContents(_ parts: [CachePart], storage: CacheStorage) -> (keys: Tensor, values: Tensor) {
    let pieces = parts.map { $0.buffer.gather($0.runs.map(\.slots)) }
    func joined(_ tensors: [Tensor]) -> Tensor {
        guard let first = tensors.first else { return Tensor(uncheckedShape: [0], scalars: []) }
        let (heads, width) = (first.shape[0] * first.shape[1], first.shape[3])
        let n = tensors.reduce(0) { $0 + $1.shape[2] }
        var out: [Float] = []
        out.reserveCapacity(heads * n * width)
        for head in 0..<heads {
            for t in tensors {
                let rows = t.shape[2] * width
                out += t.scalars[(head * rows)..<((head + 1) * rows)]
            }
        }
        return Tensor(uncheckedShape: [first.shape[0], first.shape[1], n, width], scalars: out)
    }
    return (storage.rotated(joined(pieces.map(\.keys))), storage.rotated(joined(pieces.map(\.values))))
}
