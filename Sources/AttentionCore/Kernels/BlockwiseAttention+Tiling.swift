// The blockwise kernel's tiling: tile sizes and schedule (`BlockwiseTiling`), where keys and values live
// (`KeyValueSegment`), scratch sizes, the stripe-major index, and the tile walk (`TileWalk`): the one place that
// turns a work item's keys into the sequence of key tiles it computes, with each tile's coverage and a prefetch
// handle for the tile after it.
//
// Legend: Br query positions per block (per head), Bc keys per tile, G = Hq / Hkv, R = G * Br rows per work item,
// Rp = R rounded up to 16, Dk/Dv head dimensions.

/// The blockwise kernel's tile sizes and schedule for one call.
package struct BlockwiseTiling: Sendable, Hashable {
    /// Query positions per block, per head (Br).
    package var queryBlock: Int
    /// Keys per tile (Bc).
    package var keyBlock: Int
    /// How a work item holds its rows (see `RowLayout`).
    package var layout: RowLayout = .stripes
    /// Keys per split (a multiple of `keyBlock`), or nil for one split: each (batch, key/value head, query block)
    /// is then computed by one work item over all keys. With splits, every split is a work item that produces a
    /// partial (O, m, l), and the partials are merged in split order afterwards (flash-decoding).
    package var keysPerSplit: Int? = nil
    /// The register blocking of the `.stripes` micro-kernels: the build target's unless a test asks for the other
    /// (both give identical results).
    package var shape: MicroKernelShape = .target

    package init(
        queryBlock: Int, keyBlock: Int, layout: RowLayout = .stripes, keysPerSplit: Int? = nil,
        shape: MicroKernelShape = .target
    ) {
        self.queryBlock = queryBlock
        self.keyBlock = keyBlock
        self.layout = layout
        self.keysPerSplit = keysPerSplit
        self.shape = shape
    }

    /// Rp: the rows of one work item (G * Br) rounded up to whole 16-row stripes.
    package func paddedRows(groupSize: Int) -> Int { (groupSize * queryBlock + 15) & ~15 }

    /// The number of key splits for `keyLength` keys.
    package func splitCount(keyLength: Int) -> Int {
        guard let keysPerSplit, keyLength > 0 else { return 1 }
        return (keyLength + keysPerSplit - 1) / keysPerSplit
    }
}

/// How a work item keeps its R = G * Br query rows. The work item reads it once and runs with the matching
/// `TileRowLayout` strategy (`StripeRows` or `FewRows`).
package enum RowLayout: Sendable, Hashable {
    /// Rows in lanes: Q^T and O^T stripe-major, computed 16 rows at a time by the prefill micro-kernels.
    case stripes
    /// R <= 16 rows, each row-major (query [R, Dk], output [R, Dv]); the decode micro-kernels vectorize along the
    /// head dimension, so one to a few query rows do not pay for 16 lanes. Scores and weights stay a single
    /// 16-lane stripe, so masking and the online softmax are shared with `.stripes`.
    case rows
}

/// Where the kernel keeps each tile's scores.
package enum ScoreStorage {
    /// One S^T tile per worker, reused for every tile: the blockwise kernel.
    case perWorkerTile
    /// Every work item's S^T in one tensor of `B * Hkv * Bc * Rp` floats, kept whole: the naive kernel, which runs
    /// this same code with a single tile (Br = Nq, Bc = Nk) so that it materializes the entire score matrix.
    case materialized
}

/// Keys and values at consecutive logical positions `start ..< start + count` that are contiguous in memory, for
/// every (batch, key/value head). A tensor is one segment; a ring-buffer cache is up to two, plus the new tokens of
/// the step. Rows are stored in their codec's format (Float32, or a ``StorageFormat`` the tile walk decodes tile by
/// tile); the kernel reads them in place.
package struct KeyValueSegment {
    /// Key row `start` of (batch 0, key/value head 0); rows are `keyRowStride` bytes apart.
    package var keys: UnsafeRawPointer
    /// Value row `start` of (batch 0, key/value head 0); rows are `valueRowStride` bytes apart.
    package var values: UnsafeRawPointer
    /// How key and value rows are stored.
    package var keyCodec: RowCodec
    package var valueCodec: RowCodec
    /// Bytes from a key row to the same row of the next key/value head, and of the next batch entry.
    package var keyHeadStride: Int
    package var keyBatchStride: Int
    /// Bytes from a value row to the same row of the next key/value head, and of the next batch entry.
    package var valueHeadStride: Int
    package var valueBatchStride: Int
    /// Bytes from one key (value) row to the next token's: the codec's row size for packed rows, more for rows
    /// interleaved with other heads (a [B, N, H, d] or fused-projection layout).
    package var keyRowStride: Int
    package var valueRowStride: Int
    /// The logical position of the segment's first key.
    package var start: Int
    /// Keys in the segment.
    package var count: Int
    /// A rotary rotation applied to the key rows as they are loaded (by their logical positions plus an offset),
    /// for caches that store keys unrotated; such a segment is always decoded into the tile scratch.
    package var keyRotation: RowRotation? = nil

    /// A segment of packed rows (each head's rows consecutive), heads of a batch entry `heads` apart.
    package init(
        keys: UnsafeRawPointer, values: UnsafeRawPointer, keyCodec: RowCodec, valueCodec: RowCodec,
        keyHeadStride: Int, valueHeadStride: Int, heads: Int, start: Int, count: Int
    ) {
        self.init(
            keys: keys, values: values, keyCodec: keyCodec, valueCodec: valueCodec,
            keyStrides: (keyHeadStride * heads, keyHeadStride, keyCodec.rowBytes),
            valueStrides: (valueHeadStride * heads, valueHeadStride, valueCodec.rowBytes), start: start, count: count)
    }

    /// A segment with explicit (batch, head, token) byte strides for keys and values.
    package init(
        keys: UnsafeRawPointer, values: UnsafeRawPointer, keyCodec: RowCodec, valueCodec: RowCodec,
        keyStrides: (batch: Int, head: Int, token: Int), valueStrides: (batch: Int, head: Int, token: Int),
        start: Int, count: Int
    ) {
        self.keys = keys
        self.values = values
        self.keyCodec = keyCodec
        self.valueCodec = valueCodec
        (keyBatchStride, keyHeadStride, keyRowStride) = keyStrides
        (valueBatchStride, valueHeadStride, valueRowStride) = valueStrides
        self.start = start
        self.count = count
    }

    /// Whether the tile walk decodes (or gathers) this segment's tiles into its tile scratch: any format but
    /// Float32, or, for a layout whose micro-kernels need consecutive rows (`gathersStridedRows`), rows that are
    /// not consecutive. The prefill micro-kernels read Float32 rows at any stride in place.
    func needsDecoding(gathersStridedRows: Bool) -> Bool {
        keyCodec.format != .float32 || valueCodec.format != .float32 || keyRotation != nil
            || (gathersStridedRows && hasInterleavedRows)
    }

    /// Whether key or value rows are not `rowBytes` apart (interleaved with other heads' rows).
    var hasInterleavedRows: Bool { keyRowStride != keyCodec.rowBytes || valueRowStride != valueCodec.rowBytes }
}

/// Calls `body` with the single segment of a [B, Hkv, Nk, D] key tensor and its value tensor (none when Nk = 0 or
/// a tensor is empty).
package func withKeyValueSegments<R>(
    keys: Tensor, values: Tensor, layout: TensorLayout = .bhnd, _ body: ([KeyValueSegment]) throws -> R
) rethrows -> R {
    let (keyShape, valueShape) = (layout.canonical(keys.shape), layout.canonical(values.shape))
    guard layout == .bnhd, keyShape.count == 4, valueShape.count == 4 else {
        return try keys.withUnsafeBufferPointer { k in
            try values.withUnsafeBufferPointer { v in
                try body(
                    wholeTensorSegments(
                        keys: k.baseAddress.map(UnsafeRawPointer.init),
                        values: v.baseAddress.map(UnsafeRawPointer.init), keyShape: keys.shape,
                        keyCodec: RowCodec(.float32, dimension: keys.shape.last ?? 0),
                        valueCodec: RowCodec(.float32, dimension: values.shape.last ?? 0)))
            }
        }
    }
    // [B, N, Hkv, d]: a head's rows are Hkv * d floats apart, read through the tile walk's gather.
    let (hkv, nk, dk, dv) = (keyShape[1], keyShape[2], keyShape[3], valueShape[3])
    let keyStrides = layout.strides(heads: hkv, tokens: nk, dimension: dk)
    let valueStrides = layout.strides(heads: hkv, tokens: nk, dimension: dv)
    return try keys.withUnsafeBufferPointer { k in
        try values.withUnsafeBufferPointer { v in
            guard let kBase = k.baseAddress, let vBase = v.baseAddress, nk > 0 else { return try body([]) }
            let float = MemoryLayout<Float>.stride
            return try body([
                KeyValueSegment(
                    keys: UnsafeRawPointer(kBase), values: UnsafeRawPointer(vBase),
                    keyCodec: RowCodec(.float32, dimension: dk), valueCodec: RowCodec(.float32, dimension: dv),
                    keyStrides: (keyStrides.batch * float, keyStrides.head * float, keyStrides.token * float),
                    valueStrides: (valueStrides.batch * float, valueStrides.head * float, valueStrides.token * float),
                    start: 0, count: nk)
            ])
        }
    }
}

/// Calls `body` with the single segment of stored [B, Hkv, Nk, D] keys and values, read in their formats (none
/// when Nk = 0 or either holds no bytes).
package func withKeyValueSegments<R>(
    keys: StoredTensor, values: StoredTensor, layout: TensorLayout = .bhnd, _ body: ([KeyValueSegment]) throws -> R
) rethrows -> R {
    let (keyShape, valueShape) = (layout.canonical(keys.shape), layout.canonical(values.shape))
    return try keys.withRows { k in
        try values.withRows { v in
            guard layout == .bnhd, keyShape.count == 4, valueShape.count == 4 else {
                return try body(
                    wholeTensorSegments(
                        keys: k, values: v, keyShape: keys.shape, keyCodec: keys.codec, valueCodec: values.codec))
            }
            // [B, N, Hkv, d]: a head's rows are Hkv rows apart, read through the tile walk's decoding (as every
            // stored tile is).
            guard let k, let v, keyShape[2] > 0 else { return try body([]) }
            let (hkv, nk) = (keyShape[1], keyShape[2])
            let (keyRow, valueRow) = (keys.codec.rowBytes, values.codec.rowBytes)
            return try body([
                KeyValueSegment(
                    keys: k, values: v, keyCodec: keys.codec, valueCodec: values.codec,
                    keyStrides: (hkv * nk * keyRow, keyRow, hkv * keyRow),
                    valueStrides: (hkv * nk * valueRow, valueRow, hkv * valueRow), start: 0, count: nk)
            ])
        }
    }
}

/// The one segment of rank-4 keys and values whose rows start at `keys` / `values` (none when Nk = 0 or either has
/// no rows).
private func wholeTensorSegments(
    keys: UnsafeRawPointer?, values: UnsafeRawPointer?, keyShape: [Int], keyCodec: RowCodec, valueCodec: RowCodec
) -> [KeyValueSegment] {
    guard let keys, let values, keyShape.count == 4, keyShape[2] > 0 else { return [] }
    let nk = keyShape[2]
    return [
        KeyValueSegment(
            keys: keys, values: values, keyCodec: keyCodec, valueCodec: valueCodec,
            keyHeadStride: nk * keyCodec.rowBytes, valueHeadStride: nk * valueCodec.rowBytes, heads: keyShape[1],
            start: 0, count: nk)
    ]
}

/// Floats of per-worker scratch: Q^T [Dk, Rp], two ALiBi rows [Rp], four rows of mask span bounds [Rp], the
/// quarantine copy of a V tile [Bc, Dv], with `decodesTiles` the decoded K, then V, tile [Bc, max(Dk, Dv)], for
/// `.perWorkerTile` the S^T tile [Bc, Rp], and with one split the softmax state (`stateFloats`).
package func tiledScratchFloats(
    _ problem: AttentionProblem, _ tiling: BlockwiseTiling, _ storage: ScoreStorage, decodesTiles: Bool
) -> Int {
    let rp = tiling.paddedRows(groupSize: problem.groupSize)
    let (dk, dv, bc) = (problem.keyDimension, problem.valueDimension, tiling.keyBlock)
    let tile = storage == .perWorkerTile ? bc * rp : 0
    let state = tiling.splitCount(keyLength: problem.keyLength) == 1 ? stateFloats(problem, tiling) : 0
    let decoded = decodesTiles ? bc * Swift.max(dk, dv) : 0
    return rp * (dk + 6) + bc * dv + decoded + tile + state
}

/// Floats of one work item's softmax state: O [Dv x Rp] (in the tiling's layout), then m [Rp] and l [Rp].
package func stateFloats(_ problem: AttentionProblem, _ tiling: BlockwiseTiling) -> Int {
    tiling.paddedRows(groupSize: problem.groupSize) * (problem.valueDimension + 2)
}

/// Floats of the materialized score tensor for `.materialized` storage, or nil if that overflows Int.
package func materializedScoreFloats(_ problem: AttentionProblem, _ tiling: BlockwiseTiling) -> Int? {
    let queryBlocks = (problem.queryLength + tiling.queryBlock - 1) / tiling.queryBlock
    var total = 1
    for factor in [
        problem.batch, problem.keyValueHeads, queryBlocks, tiling.keyBlock,
        tiling.paddedRows(groupSize: problem.groupSize),
    ] {
        let (product, overflow) = total.multipliedReportingOverflow(by: factor)
        if overflow { return nil }
        total = product
    }
    return total
}

/// Index of (row r, column x) in a stripe-major matrix with `columns` columns: rows are grouped in stripes of 16,
/// and each stripe is stored as `columns` consecutive 16-float vectors. A micro-kernel walking one stripe reads
/// contiguous memory; with plain row-major [columns, Rp] storage its 64-byte loads were Rp * 4 bytes apart and
/// fell into a quarter of L1's sets.
@inline(__always) func stripeIndex(_ r: Int, _ x: Int, columns: Int) -> Int {
    stripeRowStart(r, columns: columns) + x * 16
}

/// Where row r of a stripe-major matrix starts: it is lane r % 16 of stripe r / 16, and its columns follow 16
/// floats apart.
@inline(__always) func stripeRowStart(_ r: Int, columns: Int) -> Int {
    (r >> 4) &* columns &* 16 &+ (r & 15)
}

/// One key tile of a work item, as the tile walk hands it to the per-tile steps.
struct KeyTile {
    /// The tile's logical key positions (at most Bc, never crossing a segment boundary).
    let keys: Range<Int>
    /// How the item's mask covers the tile (never `.empty`: empty tiles are not handed out).
    let coverage: TileCoverage
    /// Key row `keys.lowerBound` of the item's head; rows are `keyStride` floats apart (Dk unless interleaved).
    let keyRows: UnsafePointer<Float>
    /// Value row `keys.lowerBound`; rows are `valueStride` floats apart. For a stored segment, where `values()`
    /// decodes them (then Dv apart).
    let valueRows: UnsafePointer<Float>
    let keyStride: Int
    let valueStride: Int
    /// The next tile of the same segment, for prefetching while this one computes (nil after a segment's last).
    let next: TilePrefetch?
    /// A stored segment's value rows, decoded only when the tile's scores are done (see `values()`), or read as
    /// stored by the layout (`TileRowLayout.readsStoredValues`).
    var storedValues: StoredRows? = nil
    /// Stored key rows that the layout scores without decoding them (see `TileRowLayout.rowMajorQueries`); then
    /// `keyRows` holds nothing.
    var storedKeys: StoredRows? = nil

    /// Encoded rows to decode into `valueRows`.
    struct StoredRows {
        let source: UnsafeRawPointer
        /// Bytes from one stored row to the next.
        let rowStride: Int
        let codec: RowCodec
    }

    /// The tile's value rows as Float32: in place, or decoded now over the keys' decoded rows, which the scores no
    /// longer need, so a tile's decoded keys and values share the same L1 lines.
    @inline(__always) func values() -> UnsafePointer<Float> {
        if let stored = storedValues {
            stored.codec.decode(
                stored.source, rows: keys.count, rowStride: stored.rowStride,
                into: UnsafeMutablePointer(mutating: valueRows))
        }
        return valueRows
    }
}

/// The key tiles of one work item: its visible key range (clipped to its key split) cut into tiles of Bc keys
/// aligned to each segment's start, clipped to the range, skipping tiles the mask hides completely. Used by the
/// prefill, decode and naive paths alike.
struct TileWalk {
    let segments: [KeyValueSegment]
    /// The item's batch entry and key/value head, which select the rows of every segment.
    let batch: Int
    let keyValueHead: Int
    /// The keys this item visits: the mask's key hull for its rows, clipped to its split.
    let keyRange: Range<Int>
    let keyBlock: Int
    let keyDimension: Int
    let valueDimension: Int
    /// Where a stored (non-Float32) tile is decoded: [Bc, max(Dk, Dv)], keys first, then values over them.
    let decoded: UnsafeMutablePointer<Float>?
    /// Whether Float32 rows that are not consecutive are gathered into `decoded` too (the decode layout's
    /// micro-kernels need consecutive rows; the prefill ones read any stride).
    let gathersStridedRows: Bool
    /// Whether stored key rows the layout's kernels read directly (`RowCodec.directRows`, no rotation at load)
    /// are handed to them as they are stored instead of decoded (`KeyTile.storedKeys`).
    let fusesStoredKeys: Bool

    /// - Parameters:
    ///   - visibleKeys: the smallest range holding every key the item's rows see.
    ///   - split: the item's key split; with `keysPerSplit` nil the walk covers all of `visibleKeys`.
    ///   - decoded: room for one decoded tile, needed when a segment is not Float32.
    init(
        segments: [KeyValueSegment], batch: Int, keyValueHead: Int, visibleKeys: Range<Int>, split: Int,
        keysPerSplit: Int?,
        keyLength: Int, keyBlock: Int, keyDimension: Int, valueDimension: Int, decoded: UnsafeMutablePointer<Float>?,
        gathersStridedRows: Bool, fusesStoredKeys: Bool = false
    ) {
        self.decoded = decoded
        self.gathersStridedRows = gathersStridedRows
        self.fusesStoredKeys = fusesStoredKeys && keyDimension % 8 == 0
        var range = visibleKeys
        if let keysPerSplit {
            range = range.clamped(to: (split * keysPerSplit)..<Swift.min(keyLength, (split + 1) * keysPerSplit))
        }
        self.segments = segments
        self.batch = batch
        self.keyValueHead = keyValueHead
        self.keyRange = range
        self.keyBlock = keyBlock
        self.keyDimension = keyDimension
        self.valueDimension = valueDimension
    }

    /// Calls `body` for each tile in key order; `coverage` classifies a tile's keys for the item's rows.
    @inline(__always)
    func forEach(coverage: (Range<Int>) -> TileCoverage, _ body: (KeyTile) -> Void) {
        if keyRange.isEmpty { return }
        let (bc, dk, dv) = (keyBlock, keyDimension, valueDimension)
        // Segments are sorted by start; a paged cache has one per block, so the walk starts at the first segment
        // that reaches the range (binary search) and stops at the first past it.
        var (low, high) = (0, segments.count)
        while low < high {
            let middle = (low + high) / 2
            if segments[middle].start + segments[middle].count <= keyRange.lowerBound {
                low = middle + 1
            } else {
                high = middle
            }
        }
        for (index, segment) in zip(segments.indices[low...], segments[low...]) {
            if segment.start >= keyRange.upperBound { break }
            let part = keyRange.clamped(to: segment.start..<(segment.start + segment.count))
            if part.isEmpty { continue }
            let keyBase = segment.keys + batch * segment.keyBatchStride + keyValueHead * segment.keyHeadStride
            let valueBase = segment.values + batch * segment.valueBatchStride + keyValueHead * segment.valueHeadStride
            let (keyBytes, valueBytes) = (segment.keyRowStride, segment.valueRowStride)
            let decodes = segment.needsDecoding(gathersStridedRows: gathersStridedRows)
            let fusesKeys = fusesStoredKeys && segment.keyRotation == nil && segment.keyCodec.directRows != nil
            var tileStart = segment.start + (part.lowerBound - segment.start) / bc * bc
            while tileStart < part.upperBound {
                let keys = Swift.max(tileStart, part.lowerBound)..<Swift.min(tileStart + bc, part.upperBound)
                tileStart += bc
                let tileCoverage = coverage(keys)
                if tileCoverage == .empty { continue }
                let row0 = keys.lowerBound - segment.start
                // The next tile is prefetched while this one computes: decode reads each key and value once and is
                // bound by memory; prefill at long N reads tiles that have left L2.
                let next = nextTile(segment: index, tileStart: tileStart)
                if !decodes {
                    // Float32 rows in place, at their stride (a [B, N, H, d] or packed tensor's rows are H * d
                    // floats apart).
                    let (keyStride, valueStride) = (keyBytes / 4, valueBytes / 4)
                    body(
                        KeyTile(
                            keys: keys, coverage: tileCoverage,
                            keyRows: (keyBase + row0 * keyBytes).assumingMemoryBound(to: Float.self),
                            valueRows: (valueBase + row0 * valueBytes).assumingMemoryBound(to: Float.self),
                            keyStride: keyStride, valueStride: valueStride, next: next))
                    continue
                }
                // A stored tile is decoded into the worker's tile scratch (its keys not when the layout reads them
                // as stored, `fusesKeys`); the micro-kernels then read Float32 rows from L1/L2.
                guard let decoded else { preconditionFailure("a stored segment needs a decoding scratch") }
                if !fusesKeys {
                    segment.keyCodec.decode(
                        keyBase + row0 * keyBytes, rows: keys.count, rowStride: keyBytes, into: decoded)
                    segment.keyRotation?.rotate(decoded, count: keys.count, stride: dk, firstKey: keys.lowerBound)
                }
                // The micro-kernels prefetch the next tile's stored rows, spread over their work as for Float32
                // rows (a burst of hints while decoding took 1.4x as long from memory; see `prefetch`).
                var tile = KeyTile(
                    keys: keys, coverage: tileCoverage, keyRows: decoded, valueRows: decoded, keyStride: dk,
                    valueStride: dv, next: next)
                tile.storedValues = KeyTile.StoredRows(
                    source: valueBase + row0 * valueBytes, rowStride: valueBytes, codec: segment.valueCodec)
                if fusesKeys {
                    tile.storedKeys = KeyTile.StoredRows(
                        source: keyBase + row0 * keyBytes, rowStride: keyBytes, codec: segment.keyCodec)
                }
                body(tile)
            }
        }
    }

    /// The prefetch handle of the walk's tile after the current one, whose aligned successor starts at `tileStart`
    /// in segment `index`: that tile when the segment still has keys in range, else the first tile in range of the
    /// next segment (a paged cache's next block, so the stream of hints does not stop at every block), else nil.
    /// Tiles the mask hides are not looked ahead over (a hint for one costs a few wasted lines).
    @inline(__always)
    private func nextTile(segment index: Int, tileStart: Int) -> TilePrefetch? {
        let segment = segments[index]
        let end = Swift.min(keyRange.upperBound, segment.start + segment.count)
        if tileStart < end {
            return prefetch(
                segment, row: tileStart - segment.start, count: Swift.min(tileStart + keyBlock, end) - tileStart)
        }
        guard index + 1 < segments.count else { return nil }
        let following = segments[index + 1]
        let part = keyRange.clamped(to: following.start..<(following.start + following.count))
        if part.isEmpty { return nil }
        let aligned = following.start + (part.lowerBound - following.start) / keyBlock * keyBlock
        return prefetch(
            following, row: part.lowerBound - following.start,
            count: Swift.min(aligned + keyBlock, part.upperBound) - part.lowerBound)
    }

    /// Prefetch hints for `count` rows from row `row` of `segment`. Float32 rows read in place get hints at their
    /// stride; stored rows at the stored row size, in floats. Stored rows interleaved with other heads' rows get
    /// none (a hint per row would cover the other heads too); the hardware prefetcher follows their stride.
    @inline(__always)
    private func prefetch(_ segment: KeyValueSegment, row: Int, count: Int) -> TilePrefetch? {
        let keyBase = segment.keys + batch * segment.keyBatchStride + keyValueHead * segment.keyHeadStride
        let valueBase = segment.values + batch * segment.valueBatchStride + keyValueHead * segment.valueHeadStride
        let (keyBytes, valueBytes) = (segment.keyRowStride, segment.valueRowStride)
        let keys = (keyBase + row * keyBytes).assumingMemoryBound(to: Float.self)
        let values = (valueBase + row * valueBytes).assumingMemoryBound(to: Float.self)
        if !segment.needsDecoding(gathersStridedRows: gathersStridedRows) {
            return TilePrefetch(
                keys: keys, values: values, keyCount: count, keyDimension: keyDimension,
                valueDimension: valueDimension, keyStride: keyBytes / 4, valueStride: valueBytes / 4)
        }
        guard keyBytes == segment.keyCodec.rowBytes && valueBytes == segment.valueCodec.rowBytes else { return nil }
        return TilePrefetch(
            keys: keys, values: values, keyCount: count, keyDimension: (keyBytes + 3) / 4,
            valueDimension: (valueBytes + 3) / 4)
    }
}

/// The next tile's keys and values, prefetched while the current tile computes, spread over the whole tile (see
/// the measurements in the micro-kernel files): the decode kernels' four-key score steps and 32-column value passes
/// take their lines themselves; these helpers serve the single-key steps, the leftover rows, the 16-column passes
/// and the prefill score kernel (`computeScores`).
struct TilePrefetch {
    /// Row 0 of the next tile's keys and values.
    let keys: UnsafePointer<Float>
    let values: UnsafePointer<Float>
    /// Keys in the next tile.
    let keyCount: Int
    /// Floats of a row to prefetch, and from one row to the next.
    let keyDimension: Int
    let valueDimension: Int
    let keyStride: Int
    let valueStride: Int

    init(
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keyCount: Int, keyDimension: Int,
        valueDimension: Int, keyStride: Int? = nil, valueStride: Int? = nil
    ) {
        self.keys = keys
        self.values = values
        self.keyCount = keyCount
        self.keyDimension = keyDimension
        self.valueDimension = valueDimension
        self.keyStride = keyStride ?? keyDimension
        self.valueStride = valueStride ?? valueDimension
    }

    /// Key row `kk` of the next tile (nothing past its last row).
    @inline(__always) func prefetchKeyRow(_ kk: Int) {
        if kk < keyCount { prefetchToL2(keys + kk * keyStride, count: keyDimension) }
    }

    /// Key rows `rows` of the next tile (nothing past its last row).
    @inline(__always) func prefetchKeyRows(_ rows: Range<Int>) {
        for row in rows { prefetchKeyRow(row) }
    }

    /// Key rows `kk...` to the end of the next tile, for when the current tile has fewer keys than the next.
    @inline(__always) func prefetchKeyRows(from kk: Int) {
        prefetchKeyRows(kk..<Swift.max(kk, keyCount))
    }

    /// Value rows `rows` of the next tile (nothing past its last row).
    @inline(__always) func prefetchValueRows(_ rows: Range<Int>) {
        for row in rows where row < keyCount { prefetchToL2(values + row * valueStride, count: valueDimension) }
    }

    /// Value rows `kk...` to the end of the next tile, for when the current tile has fewer keys than the next.
    @inline(__always) func prefetchValueRows(from kk: Int) {
        prefetchValueRows(kk..<Swift.max(kk, keyCount))
    }

    /// The line holding value column `column` of every row of the next tile.
    @inline(__always) func prefetchValueColumn(_ column: Int) {
        var row = values + column
        for _ in 0..<keyCount {
            prefetchToL2(UnsafeRawPointer(row))
            row += valueStride
        }
    }
}

/// Float32 key and value rows interleaved with other heads' ([B, N, H, d], packed batches, fused projections),
/// copied head-major once per call when the prefill kernel will read every key more than once (unless the workers
/// stage them group by group instead, see `RowStaging`). A stored tensor's encoded rows are not copied here: the
/// tile walk decodes them tile by tile at their stride (copying their bytes head-major first made a [B, N, H, d]
/// BFloat16 prefill slower: N 1024, d 64, causal, two threads, 1.13x the [B, H, N, d] time against 1.07-1.08x
/// without, alternating binaries, Zen 3, 2026-12-08; even at N 2048).
///
/// Read in place, such rows are H * d floats apart, so a 64-key tile touches 64 pages of keys and 64 of values
/// (4 KiB pages; a 2048-token K tensor of 8 x 64 heads alone spans 1024 pages, more than the second-level TLB
/// holds), and the hardware prefetchers, which stop at page boundaries, cannot stream them. Measured with
/// `attention-bench --suite layouts` (Intel Xeon model 167, 2026-12-03): reading them in place took 1.21x the time
/// of head-major tensors (median of 17 shapes, 1.00-1.46x). The copy runs in parallel over chunks of 64 tokens,
/// reading the source in memory order; it costs one pass over K and V and their bytes in workspace, never Nq x Nk.
/// The decode kernel reads each key once and gathers tiles instead (see `TileWalk`).
///
/// - Parameters:
///   - reuse: how many work items read each key (query blocks per key/value head); with 1 there is nothing to
///     gain and `body` gets the segments as they are.
/// - Returns: what `body` returns; `body` also gets the bytes of the copies.
package func withHeadMajorRows<R>(
    _ segments: [KeyValueSegment], batch: Int, keyValueHeads: Int, reuse: Int, threads: Int,
    _ body: ([KeyValueSegment], Int) -> R
) -> R {
    let strided = segments.map {
        reuse > 1 && $0.hasInterleavedRows && $0.keyCodec.format == .float32 && $0.valueCodec.format == .float32
    }
    guard strided.contains(true) else { return body(segments, 0) }
    let rows = batch * keyValueHeads
    let floats = zip(segments, strided).filter(\.1).reduce(0) { $0 + $1.0.storedFloats(rows: rows * $1.0.count).all }
    // Every float is written before it is read; storage of 4 MiB or more faults in 2 MiB pages (see
    // `overwrittenScalars`: a packed batch of 16 sequences up to 4096 tokens, d 64, copies 67 MiB per call).
    var storage = overwrittenScalars(count: Swift.max(1, floats))
    return storage.withUnsafeMutableBufferPointer { buffer in
        var result = segments
        var next = buffer.baseAddress!
        for (index, segment) in segments.enumerated() where strided[index] {
            let (n, keyCodec, valueCodec) = (segment.count, segment.keyCodec, segment.valueCodec)
            let keys = UnsafeMutableRawPointer(next)
            let sizes = segment.storedFloats(rows: rows * n)
            let values = UnsafeMutableRawPointer(next + sizes.keys)
            next += sizes.all
            // In chunks of tokens, each token's heads in turn: the source is read in memory order when a token's
            // heads are adjacent ([B, N, H, d], fused projections, packed batches), and the destination is one
            // stream per head. Copied head by head instead, every row of d 128 starts a new page of the source,
            // which the hardware prefetchers do not follow: a C copy of K and V from [N, 8, d] to [8, N, d] (Zen 3,
            // 2026-12-07) read 5.1 GB/s head by head against 9.3 token by token at N 4096, d 64, and 7.8 against
            // 12.9 at N 2048, d 128; with the source in cache (N 512) both orders ran at 21-25 GB/s.
            let chunk = 64
            let chunks = (n + chunk - 1) / chunk
            let shared = UncheckedSendable((segment, keys, values))
            Parallel.forEach(items: batch * chunks, threads: threads) { _, item in
                let (segment, keys, values) = shared.value
                let (b, first) = item.quotientAndRemainder(dividingBy: chunks)
                let tokens = (first * chunk)..<Swift.min(n, first * chunk + chunk)
                /// Rows `tokens` of every head of batch entry b, token by token, into [heads, n] rows at `target`.
                func copy(
                    _ source: UnsafeRawPointer, headStride: Int, rowStride: Int, rowBytes: Int,
                    into target: UnsafeMutableRawPointer
                ) {
                    for t in tokens {
                        for h in 0..<keyValueHeads {
                            (target + (h * n + t) * rowBytes).copyMemory(
                                from: source + h * headStride + t * rowStride, byteCount: rowBytes)
                        }
                    }
                }
                let (keyBytes, valueBytes) = (segment.keyCodec.rowBytes, segment.valueCodec.rowBytes)
                copy(
                    segment.keys + b * segment.keyBatchStride, headStride: segment.keyHeadStride,
                    rowStride: segment.keyRowStride, rowBytes: keyBytes, into: keys + b * keyValueHeads * n * keyBytes)
                copy(
                    segment.values + b * segment.valueBatchStride, headStride: segment.valueHeadStride,
                    rowStride: segment.valueRowStride, rowBytes: valueBytes,
                    into: values + b * keyValueHeads * n * valueBytes)
            }
            result[index] = KeyValueSegment(
                keys: UnsafeRawPointer(keys), values: UnsafeRawPointer(values), keyCodec: keyCodec,
                valueCodec: valueCodec, keyHeadStride: n * keyCodec.rowBytes, valueHeadStride: n * valueCodec.rowBytes,
                heads: keyValueHeads, start: segment.start, count: n)
            result[index].keyRotation = segment.keyRotation
        }
        return body(result, floats * MemoryLayout<Float>.size)
    }
}

extension KeyValueSegment {
    /// Floats that hold `rows` of this segment's key rows, then `rows` value rows, as stored (a head-major copy's
    /// buffer; each part rounded up to whole floats).
    func storedFloats(rows: Int) -> (keys: Int, values: Int, all: Int) {
        let keys = (rows * keyCodec.rowBytes + 3) / 4
        let values = (rows * valueCodec.rowBytes + 3) / 4
        return (keys, values, keys + values)
    }
}

/// Interleaved rows (see `withHeadMajorRows`) copied head-major one (batch entry, key/value head) group at a time,
/// into a buffer of the worker that then runs all of that group's work items, instead of all at once into a copy
/// for the whole call. Rows are copied as stored: Float32 rows as they are, a stored tensor's encoded rows as its
/// bytes (half a Float32 copy for 16-bit formats), which the tile walk then decodes tile by tile from consecutive
/// rows, as it does for [B, H, N, d] stored tensors. (Decoded per tile from the interleaved rows instead, the
/// [B, N, H, d] BFloat16 prefill took 1.07-1.13x the time of the [B, H, N, d] one at N 2048, H 8, one thread, Zen 3,
/// 2026-12-08; each key tile is decoded once per query block, 32 times here.)
///
/// The call-wide copy is K + V floats of fresh memory each call: a packed batch of 16 sequences up to 4096
/// tokens (8 heads, d 64) copied 67 MiB, whose page faults took 3.7% of a causal call and the copy itself 2.9%
/// (perf, one thread, Zen 3, 2026-12-07). Staged, a worker's buffer holds one group's rows (here at most 2 MiB),
/// is reused from group to group, and is still in cache when the group's items read it. The work is then handed
/// out by group rather than by item, so it applies only when there are enough groups to balance the workers
/// (`init`); otherwise the call-wide copy runs. With four groups per thread (8 heads, 2 threads) the layouts
/// suite's median ratio to `[B, H, N, d]` was 1.10x on two threads (causal shapes 1.08-1.18x) against 1.04x on
/// one: a worker that finishes its last group early waits for the other's (a shared VM's two cores do not run at
/// the same speed). Sixteen groups per thread keep that tail small; the packed batch above has 128.
package struct RowStaging {
    /// Floats of one worker's buffer: the interleaved segments' key and value rows of one group.
    package let floatsPerWorker: Int

    /// Nil when no segment has interleaved rows, when each key is read once (`reuse` 1: nothing to gain), or when
    /// `groups` (batch entries x key/value heads of every job in the parallel loop) are fewer than 16 per thread.
    package init?(_ segments: [KeyValueSegment], reuse: Int, groups: Int, threads: Int) {
        let interleaved = segments.filter(\.hasInterleavedRows)
        guard reuse > 1, !interleaved.isEmpty, threads <= 1 || groups >= 16 * threads else { return nil }
        floatsPerWorker = interleaved.reduce(0) {
            $0 + $1.storedFloats(rows: $1.count).all
        }
    }

    /// Copies the interleaved segments' rows of (`batch`, `keyValueHead`) into `buffer` (`floatsPerWorker`
    /// floats), head-major, and returns the segments with those reading the copy (their batch and head strides 0,
    /// so the group's own coordinates select it); other segments are returned as they are.
    func stage(
        _ segments: [KeyValueSegment], batch b: Int, keyValueHead h: Int, into buffer: UnsafeMutablePointer<Float>
    ) -> [KeyValueSegment] {
        var next = buffer
        return segments.map { segment in
            guard segment.hasInterleavedRows else { return segment }
            let (n, keyCodec, valueCodec) = (segment.count, segment.keyCodec, segment.valueCodec)
            let keys = UnsafeMutableRawPointer(next)
            let sizes = segment.storedFloats(rows: n)
            let values = UnsafeMutableRawPointer(next + sizes.keys)
            next += sizes.all
            keyCodec.copyRows(
                segment.keys + b * segment.keyBatchStride + h * segment.keyHeadStride, rows: n,
                rowStride: segment.keyRowStride, into: keys)
            valueCodec.copyRows(
                segment.values + b * segment.valueBatchStride + h * segment.valueHeadStride, rows: n,
                rowStride: segment.valueRowStride, into: values)
            var staged = KeyValueSegment(
                keys: UnsafeRawPointer(keys), values: UnsafeRawPointer(values), keyCodec: keyCodec,
                valueCodec: valueCodec, keyStrides: (0, 0, keyCodec.rowBytes),
                valueStrides: (0, 0, valueCodec.rowBytes), start: segment.start, count: n)
            staged.keyRotation = segment.keyRotation
            return staged
        }
    }
}
