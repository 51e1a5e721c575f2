// Blockwise attention: the FlashAttention-2 forward pass (Dao, 2023) on the CPU. Every softmax variant of this
// package (MHA/GQA/MQA, every mask, softcap, ALiBi, bias, learned sinks) runs through this one kernel.
//
// Work item = (batch b, key/value head, query block). The G query heads that share the key/value head are
// processed together: their Br query rows each form one set of R = G * Br rows, so every key/value tile is read
// once per group. For each visible key tile (Bc keys) the kernel computes the scores of all R rows, updates the
// online softmax state and accumulates P V. Nothing of size Nq x Nk is ever allocated.
//
// Decode (few rows, long keys) adds a key split to the work item: each split leaves a partial (O, m, l) and
// `finalize` merges the splits in split order. Keys and values arrive as `KeyValueSegment`s (a tensor, or a cache's
// ring runs plus the step's new tokens), read in place; key tiles never cross a segment boundary.
//
// Layout - rows in lanes: every per-tile matrix is stored transposed, with the R query rows along the 16-lane
// vectors. Q^T [Dk, Rp] is packed once per work item (scaled by scale * log2(e) / 2, so scores come out in "half
// base 2", see `logitScale`);
// S^T = K Q^T [Bc, Rp] is computed by broadcasting key elements against Q^T vectors, and O^T [Dv, Rp] += V^T P^T
// by broadcasting value elements against P^T vectors. K and V are read in place (no per-tile packing), and the
// softmax statistics m and l are vectors of 16 rows, so the online softmax needs no horizontal reductions or
// lane shuffles.
//
// Legend: B batch, Hq/Hkv query/key-value heads, G = Hq / Hkv, Nq/Nk lengths, Dk/Dv head dimensions,
// Br query positions per block (per head), Bc keys per tile, R = G * Br rows per item, Rp = R rounded up to 16,
// m running row maximum (half base 2), l running denominator, S scores, P = exp2(2 (S - m)) weights, O unnormalized
// output.
//
// Numerics: masked scores become -inf *after* they are computed (so NaN in a masked key is discarded); the row
// maximum used for exponentials is replaced by 0 while a row has seen no key, so exp2(-inf - -inf) never happens;
// a value row holding NaN or infinity reaches exactly the rows that see its key (even with a weight that underflowed
// to 0, as in the Float64 reference) and never a row for which the key is masked or scored -inf.
//
// Matrices are stripe-major (`stripeIndex`): 16-row stripes, each a contiguous [columns, 16] block.

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

    package init(queryBlock: Int, keyBlock: Int, layout: RowLayout = .stripes, keysPerSplit: Int? = nil) {
        self.queryBlock = queryBlock
        self.keyBlock = keyBlock
        self.layout = layout
        self.keysPerSplit = keysPerSplit
    }

    /// The default tiles: R = G * Br close to 64 rows (four 16-row stripes) and 64-key tiles: one Q^T stripe
    /// (Dk x 16 floats) and one P^T stripe (4 KiB) stay in L1 while K or V streams past. Measured with
    /// `attention-bench --query-block/--key-block` at N = 2048, d = 64 and 128: (64, 64) was as fast as any of
    /// (32|64|128) x (32|48|64|96|128) within the machine's noise, and smaller key tiles lost to per-tile overhead.
    package static func automatic(groupSize: Int) -> BlockwiseTiling {
        BlockwiseTiling(queryBlock: Swift.max(1, 64 / groupSize), keyBlock: 64)
    }

    /// Rp: the rows of one work item (G * Br) rounded up to whole 16-row stripes.
    package func paddedRows(groupSize: Int) -> Int { (groupSize * queryBlock + 15) & ~15 }

    /// The number of key splits for `keyLength` keys.
    package func splitCount(keyLength: Int) -> Int {
        guard let keysPerSplit, keyLength > 0 else { return 1 }
        return (keyLength + keysPerSplit - 1) / keysPerSplit
    }
}

/// How a work item keeps its R = G * Br query rows.
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
/// the step. The kernel reads them in place.
package struct KeyValueSegment {
    /// Key row `start` of head (batch 0, key/value head 0); rows are `keyDimension` floats apart.
    package var keys: UnsafePointer<Float>
    /// Value row `start` of head 0; rows are `valueDimension` floats apart.
    package var values: UnsafePointer<Float>
    /// Floats from a key row to the same row of the next head (head index = batch * Hkv + kvHead).
    package var keyHeadStride: Int
    /// Floats from a value row to the same row of the next head.
    package var valueHeadStride: Int
    /// The logical position of the segment's first key.
    package var start: Int
    /// Keys in the segment.
    package var count: Int

    package init(
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keyHeadStride: Int, valueHeadStride: Int,
        start: Int, count: Int
    ) {
        self.keys = keys
        self.values = values
        self.keyHeadStride = keyHeadStride
        self.valueHeadStride = valueHeadStride
        self.start = start
        self.count = count
    }
}

/// Calls `body` with the single segment of a [B, Hkv, Nk, D] key tensor and its value tensor (none when Nk = 0 or
/// a tensor is empty).
package func withKeyValueSegments<R>(
    keys: Tensor, values: Tensor, _ body: ([KeyValueSegment]) throws -> R
) rethrows -> R {
    try keys.withUnsafeBufferPointer { k in
        try values.withUnsafeBufferPointer { v in
            guard let kBase = k.baseAddress, let vBase = v.baseAddress, keys.rank == 4, keys.shape[2] > 0 else {
                return try body([])
            }
            let nk = keys.shape[2]
            return try body([
                KeyValueSegment(
                    keys: kBase, values: vBase, keyHeadStride: nk * keys.shape[3],
                    valueHeadStride: nk * values.shape[3], start: 0, count: nk)
            ])
        }
    }
}

/// Floats of per-worker scratch: Q^T [Dk, Rp], two ALiBi rows [Rp], four rows of mask span bounds [Rp], the
/// quarantine copy of a V tile [Bc, Dv], for
/// `.perWorkerTile` the S^T tile [Bc, Rp], and with one split the softmax state (`stateFloats`).
package func tiledScratchFloats(_ problem: AttentionProblem, _ tiling: BlockwiseTiling, _ storage: ScoreStorage) -> Int
{
    let rp = tiling.paddedRows(groupSize: problem.groupSize)
    let (dk, dv, bc) = (problem.keyDimension, problem.valueDimension, tiling.keyBlock)
    let tile = storage == .perWorkerTile ? bc * rp : 0
    let state = tiling.splitCount(keyLength: problem.keyLength) == 1 ? stateFloats(problem, tiling) : 0
    return rp * (dk + 6) + bc * dv + tile + state
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

/// Logits enter the kernel as s * log2(e) / 2 ("half base 2") and every exponential is 2^(2 * (s - m)) = e^(s - m).
/// Folding all of log2(e) into the logits would overflow above 2.36e38; folding half keeps every finite Float logit
/// finite, and the doubling is applied to differences s - m <= 0, where overflow can only mean -infinity, a weight of
/// exactly 0. Halving and doubling are exact, so this costs one multiply per score and no accuracy.
private let logitScale: Float = 0.721_347_52
private let exponentScale: Float = 2
private let ln2: Float = 0.693_147_18

/// Runs the tiled kernel over every work item. The blockwise kernel calls it with `.perWorkerTile`; the naive
/// kernel with one tile covering everything and `.materialized` (after checking its memory budget); the decode
/// kernel with the `.rows` layout and key splits. `segments` hold the keys and values (see `KeyValueSegment`),
/// sorted by `start` and covering 0..<keyLength. The output goes into `reused` (taken, leaving nil) when it holds
/// exactly the output's element count, else into a new array; every element is overwritten either way.
package func tiledAttention(
    _ problem: AttentionProblem, queries: Tensor, segments: [KeyValueSegment], tiling: BlockwiseTiling,
    scoreStorage: ScoreStorage, reusing reused: inout [Float]?
) -> AttentionResult {
    let (nq, dv) = (problem.queryLength, problem.valueDimension)
    let queryBlocks = (nq + tiling.queryBlock - 1) / tiling.queryBlock
    let units = problem.batch * problem.keyValueHeads * queryBlocks
    let splits = tiling.splitCount(keyLength: problem.keyLength)
    let items = units * splits
    let workers = Parallel.workerCount(items: items, threads: problem.threads)
    let scratchFloats = tiledScratchFloats(problem, tiling, scoreStorage)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, workers * scratchFloats))
    defer { scratch.deallocate() }
    let scoreFloats = scoreStorage == .materialized ? (materializedScoreFloats(problem, tiling) ?? 0) : 0
    let scores = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, scoreFloats))
    defer { scores.deallocate() }
    let stateSize = stateFloats(problem, tiling)
    let partialFloats = splits > 1 ? items * stateSize : 0
    let partials = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, partialFloats))
    defer { partials.deallocate() }
    let tileFloats = tiling.keyBlock * tiling.paddedRows(groupSize: problem.groupSize)

    let outputCount = problem.batch * problem.queryHeads * nq
    var output: [Float]
    if let storage = reused.take(), storage.count == outputCount * dv {
        output = storage
    } else {
        output = zeroedScalars(count: outputCount * dv)
    }
    var logSumExp = [Float](repeating: 0, count: outputCount)
    let biasScalars = problem.options.bias?.scalars ?? []
    queries.withUnsafeBufferPointer { q in
        biasScalars.withUnsafeBufferPointer { bias in
            output.withUnsafeMutableBufferPointer { o in
                logSumExp.withUnsafeMutableBufferPointer { lse in
                    let context = UncheckedSendable(
                        BlockContext(
                            problem: problem, tiling: tiling, queries: q.baseAddress, segments: segments,
                            bias: bias.baseAddress, output: o.baseAddress, logSumExp: lse.baseAddress))
                    Parallel.forEach(items: items, threads: problem.threads) { worker, item in
                        let (unit, split) = item.quotientAndRemainder(dividingBy: splits)
                        // Last query blocks first: under a causal mask they have the most work, and starting
                        // with them balances the dynamic schedule.
                        let block = queryBlocks - 1 - unit % queryBlocks
                        let (b, kvHead) = (unit / queryBlocks).quotientAndRemainder(dividingBy: problem.keyValueHeads)
                        let workerScratch = scratch + worker * scratchFloats
                        // Worker scratch ends with [S^T tile][state], the state only with one split (split states
                        // live in `partials`); see `tiledScratchFloats`.
                        let stateInScratch = splits == 1 ? stateSize : 0
                        let tile =
                            scoreStorage == .materialized
                            ? scores + item * tileFloats
                            : workerScratch + (scratchFloats - stateInScratch - tileFloats)
                        let state =
                            splits == 1 ? workerScratch + (scratchFloats - stateSize) : partials + item * stateSize
                        context.value.run(
                            batch: b, keyValueHead: kvHead, queryBlock: block, split: split, scratch: workerScratch,
                            scoreTile: tile, state: state)
                        if splits == 1 {
                            context.value.finalize(
                                batch: b, keyValueHead: kvHead, queryBlock: block, states: state, count: 1,
                                stride: stateSize)
                        }
                    }
                    if splits > 1 {
                        // The merge of the splits, in split order: deterministic for any thread count.
                        Parallel.forEach(items: units, threads: problem.threads) { _, unit in
                            let block = queryBlocks - 1 - unit % queryBlocks
                            let (b, kvHead) = (unit / queryBlocks).quotientAndRemainder(
                                dividingBy: problem.keyValueHeads)
                            context.value.finalize(
                                batch: b, keyValueHead: kvHead, queryBlock: block,
                                states: partials + unit * splits * stateSize, count: splits, stride: stateSize)
                        }
                    }
                }
            }
        }
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: problem.outputShape, scalars: output),
        logSumExp: Tensor(uncheckedShape: [problem.batch, problem.queryHeads, nq], scalars: logSumExp),
        workspaceBytes: (workers * scratchFloats + scoreFloats + partialFloats) * MemoryLayout<Float>.size)
}

/// Everything one work item needs; pointers may be nil only when their tensor is empty.
private struct BlockContext {
    let problem: AttentionProblem
    let tiling: BlockwiseTiling
    let queries: UnsafePointer<Float>?
    let segments: [KeyValueSegment]
    let bias: UnsafePointer<Float>?
    let output: UnsafeMutablePointer<Float>?
    let logSumExp: UnsafeMutablePointer<Float>?

    /// Where row r of the O accumulator starts and how far apart its columns are (16 in a stripe, 1 in a row).
    @inline(__always) func outputRow(_ r: Int) -> (start: Int, step: Int) {
        tiling.layout == .stripes
            ? (stripeRowStart(r, columns: problem.valueDimension), 16) : (r &* problem.valueDimension, 1)
    }

    /// One work item: query block `queryBlock` of every query head that reads `keyValueHead`, over the keys of
    /// split `split`. Leaves the unnormalized O, the running maximum m (half base 2) and the denominator l in `state`.
    func run(
        batch b: Int, keyValueHead kvHead: Int, queryBlock: Int, split: Int, scratch: UnsafeMutablePointer<Float>,
        scoreTile sT: UnsafeMutablePointer<Float>, state: UnsafeMutablePointer<Float>
    ) {
        let p = problem
        let (nq, nk, dk, dv, g) = (p.queryLength, p.keyLength, p.keyDimension, p.valueDimension, p.groupSize)
        let (br, bc) = (tiling.queryBlock, tiling.keyBlock)
        let rp = tiling.paddedRows(groupSize: g)
        let i0 = queryBlock * br
        let rows = Swift.min(br, nq - i0)
        let o = state
        let m = o + dv * rp
        let l = m + rp
        /// m = -inf, l = 0, O = 0; a learned sink logit starts a row at m = sink, l = exp2(sink - m) = 1, in the
        /// first split only.
        func startRows() {
            m.update(repeating: -.infinity, count: rp)
            l.update(repeating: 0, count: rp)
            o.update(repeating: 0, count: dv * rp)
            if let sinks = p.options.sinkLogits, split == 0 {
                for head in 0..<g {
                    for row in 0..<rows {
                        m[head * br + row] = sinks[kvHead * g + head] * logitScale
                        l[head * br + row] = 1
                    }
                }
            }
        }
        startRows()
        guard rows > 0, let queries else { return }

        let qT = scratch
        let alibiSlopes = qT + dk * rp
        let alibiDiagonals = alibiSlopes + rp
        let spanBounds = UnsafeMutableRawPointer(alibiDiagonals + rp)
        let cleanValues = alibiDiagonals + 5 * rp

        // Q^T (or, for the rows layout, Q as `fewRowsQueryIndex` lays it out), scaled so that scores come out in half
        // base 2 (unless softcap needs them in natural units first).
        let softcap = p.options.softcap
        let qScale = softcap == nil ? p.scale * logitScale : p.scale
        qT.update(repeating: 0, count: dk * rp)
        for head in 0..<g {
            let source = queries + ((b * p.queryHeads + kvHead * g + head) * nq + i0) * dk
            for row in 0..<rows {
                let r = head * br + row
                let sourceRow = source + row * dk
                switch tiling.layout {
                case .stripes:
                    let target = qT + stripeRowStart(r, columns: dk)
                    for c in 0..<dk { target[c &* 16] = sourceRow[c] * qScale }
                case .rows:
                    for c in 0..<dk { qT[fewRowsQueryIndex(r, c, rowCount: g * br, depth: dk)] = sourceRow[c] * qScale }
                }
            }
        }
        // ALiBi per row (slope in half base 2, diagonal key position), so the penalty is applied 16 rows at a time.
        if let slopes = p.options.alibiSlopes {
            alibiSlopes.update(repeating: 0, count: rp)
            alibiDiagonals.update(repeating: 0, count: rp)
            for head in 0..<g {
                for row in 0..<rows {
                    alibiSlopes[head * br + row] = slopes[kvHead * g + head] * logitScale
                    alibiDiagonals[head * br + row] = Float(i0 + row + nk - nq)
                }
            }
        }

        let spans = GroupSpans(problem: p, keyValueHead: kvHead, queries: i0..<(i0 + rows))
        var keyRange = spans.keyHull
        if let keysPerSplit = tiling.keysPerSplit {
            keyRange = keyRange.clamped(to: (split * keysPerSplit)..<Swift.min(nk, (split + 1) * keysPerSplit))
        }
        if keyRange.isEmpty { return }
        let vectorMask = spans.writeBounds(spanBounds, rowCount: rp, queryBlock: br, rows: rows, keyLength: nk)
        let hasScoreOptions = softcap != nil || p.options.alibiSlopes != nil || p.options.bias != nil
        let head = b * p.keyValueHeads + kvHead
        /// The tiles of every segment in this item's key range (`scanValues`: check each value tile for NaN and
        /// infinity first).
        func runTiles(_ scanValues: Bool) {
            for segment in segments {
                let part = keyRange.clamped(to: segment.start..<(segment.start + segment.count))
                if part.isEmpty { continue }
                let keyBase = segment.keys + head * segment.keyHeadStride
                let valueBase = segment.values + head * segment.valueHeadStride
                // Tiles are aligned to the segment start, clipped to the keys this item needs.
                var tileStart = segment.start + (part.lowerBound - segment.start) / bc * bc
                while tileStart < part.upperBound {
                    let tile = Swift.max(tileStart, part.lowerBound)..<Swift.min(tileStart + bc, part.upperBound)
                    tileStart += bc
                    let coverage = spans.coverage(keys: tile)
                    if coverage == .empty { continue }
                    let row0 = tile.lowerBound - segment.start
                    // The next tile of this segment is prefetched while this one computes: decode reads each key and
                    // value once and is bound by memory; prefill at long N reads tiles that have left L2.
                    let nextCount = Swift.min(tileStart + bc, part.upperBound) - tileStart
                    let nextTile =
                        nextCount > 0
                        ? TilePrefetch(
                            keys: keyBase + (tileStart - segment.start) * dk,
                            values: valueBase + (tileStart - segment.start) * dv, keyCount: nextCount,
                            keyDimension: dk, valueDimension: dv) : nil
                    switch tiling.layout {
                    case .stripes:
                        computeScores(
                            qT: qT, rowCount: rp, keys: keyBase + row0 * dk, keyCount: tile.count, depth: dk,
                            scores: sT, prefetch: nextTile)
                    case .rows:
                        computeScoresFewRows(
                            queries: qT, rowCount: g * br, keys: keyBase + row0 * dk, keyCount: tile.count, depth: dk,
                            scores: sT, prefetch: nextTile)
                    }
                    if hasScoreOptions {
                        applyScoreOptions(
                            sT, rowCount: rp, batch: b, keyValueHead: kvHead, i0: i0, rows: rows, tile: tile,
                            alibiSlopes: alibiSlopes, alibiDiagonals: alibiDiagonals)
                    }
                    if coverage == .partial {
                        if vectorMask {
                            applyMaskBounds(sT, bounds: spanBounds, rowCount: rp, tile: tile)
                        } else {
                            applyMask(sT, spans: spans, i0: i0, rows: rows, tile: tile)
                        }
                    }
                    var tileValues = valueBase + row0 * dv
                    let valuesFinite = !scanValues || allFinite(tileValues, count: tile.count * dv)
                    updateSoftmax(sT, keyCount: tile.count, m: m, l: l, output: o, markMasked: !valuesFinite)
                    if !valuesFinite {
                        tileValues = quarantineNonFiniteValues(
                            tileValues, keyCount: tile.count, weights: sT, output: o, clean: cleanValues)
                    }
                    switch tiling.layout {
                    case .stripes:
                        accumulateValues(
                            weights: sT, rowCount: rp, keyCount: tile.count, values: tileValues, valueDimension: dv,
                            oT: o)
                    case .rows:
                        accumulateValuesFewRows(
                            weights: sT, rowCount: g * br, keyCount: tile.count, values: tileValues,
                            valueDimension: dv, output: o, prefetch: nextTile)
                    }
                }
            }
        }
        // Values holding NaN or infinity need the per-tile quarantine in `runTiles`. Rather than scan every value
        // tile first (a second pass over V: 6-9% of the decode kernel's perf samples on cached data), the item runs
        // optimistically: a non-finite value reaches every row's O (w * inf and 0 * NaN are not finite, and O never
        // recovers), so an O that ends finite saw none, and one that does not is recomputed with the scan. (Scores
        // or sums that overflow also cost the recomputation, which then finds clean values: the same result.)
        var scanValues = false
        while true {
            runTiles(scanValues)
            if scanValues || streamingSum(o, count: dv * rp).isFinite { break }
            scanValues = true
            startRows()
        }
    }

    /// Merges the `count` partial states at `states`, `stride` floats apart (one per key split, in split order),
    /// and writes the output rows and log-sum-exp of the work item: with M = max m_s and w_s = 2^(2 (m_s - M)),
    /// O = sum w_s O_s / sum w_s l_s and LSE = 2 M ln 2 + ln(sum w_s l_s). With one state, w = 1 and this is O / l.
    func finalize(
        batch b: Int, keyValueHead kvHead: Int, queryBlock: Int, states: UnsafeMutablePointer<Float>, count: Int,
        stride: Int
    ) {
        let p = problem
        let (nq, dv, g, br) = (p.queryLength, p.valueDimension, p.groupSize, tiling.queryBlock)
        let rp = tiling.paddedRows(groupSize: g)
        let i0 = queryBlock * br
        let rows = Swift.min(br, nq - i0)
        guard rows > 0, let output, let logSumExp else { return }
        for head in 0..<g {
            let rowBase = (b * p.queryHeads + kvHead * g + head) * nq + i0
            for row in 0..<rows {
                let r = head * br + row
                var maximum = -Float.infinity
                for s in 0..<count { maximum = Swift.max(maximum, states[s * stride + dv * rp + r]) }
                var denominator: Float = 0
                let target = output + (rowBase + row) * dv
                let (start, step) = outputRow(r)
                for s in 0..<count {
                    let state = states + s * stride
                    let (ms, ls) = (state[dv * rp + r], state[dv * rp + rp + r])
                    // A split that saw no key has m = -inf, l = 0 and O = 0, so it adds zeros; comparing before
                    // subtracting keeps -inf - -inf out, and a NaN row (NaN query) stays NaN through l.
                    let weight: Float = ms == maximum ? 1 : _exp2((ms - maximum) * exponentScale)
                    denominator += ls * weight
                    let source = state + start
                    if s == 0 {
                        for c in 0..<dv { target[c] = source[c &* step] * weight }
                    } else {
                        for c in 0..<dv { target[c] += source[c &* step] * weight }
                    }
                }
                // denominator == 0: the row saw no key (and has no sink): zeros, not 0/0.
                let inverse: Float = denominator == 0 ? 0 : 1 / denominator
                for c in 0..<dv { target[c] *= inverse }
                logSumExp[rowBase + row] =
                    denominator == 0 ? -.infinity : maximum * (exponentScale * ln2) + _log(denominator)
            }
        }
    }

    /// Softcap, ALiBi and bias on one tile of scores (stripe-major, row r = head * Br + row). Scores leave in half
    /// base 2.
    /// Softcap and ALiBi run 16 rows at a time (padding rows included; their results are never read); the bias is
    /// gathered row by row from its [Nq, Nk] planes.
    private func applyScoreOptions(
        _ sT: UnsafeMutablePointer<Float>, rowCount rp: Int, batch b: Int, keyValueHead kvHead: Int, i0: Int,
        rows: Int, tile: Range<Int>, alibiSlopes: UnsafePointer<Float>, alibiDiagonals: UnsafePointer<Float>
    ) {
        let p = problem
        let (g, br, nq, nk, columns) = (p.groupSize, tiling.queryBlock, p.queryLength, p.keyLength, tile.count)
        if let softcap = p.options.softcap {
            let cap = SIMD16<Float>(repeating: softcap)
            let outer = SIMD16<Float>(repeating: softcap * logitScale)
            for index in stride(from: 0, to: rp * columns, by: 16) {
                store16(outer * vectorTanh(load16(sT, index) / cap), sT, index)
            }
        }
        if p.options.alibiSlopes != nil {
            var rv = 0
            while rv < rp {
                let slope = load16(alibiSlopes, rv)
                let diagonal = load16(alibiDiagonals, rv)
                let stripe = sT + rv * columns
                for (kk, j) in tile.enumerated() {
                    let distance = diagonal - Float(j)
                    let penalty = slope * distance.replacing(with: -distance, where: distance .< 0)
                    store16(load16(stripe, kk * 16) - penalty, stripe, kk * 16)
                }
                rv += 16
            }
        }
        if let bias = p.options.bias, let base = self.bias {
            let bb = bias.shape[0] == 1 ? 0 : b
            for head in 0..<g {
                let bh = bias.shape[1] == 1 ? 0 : kvHead * g + head
                let plane = base + (bb * bias.shape[1] + bh) * nq * nk
                for row in 0..<rows {
                    let biasRow = plane + (i0 + row) * nk
                    for (kk, j) in tile.enumerated() {
                        sT[stripeIndex(head * br + row, kk, columns: columns)] += biasRow[j] * logitScale
                    }
                }
            }
        }
    }

    /// Sets masked scores of a partial tile to -inf, head by head (a head's mask depends on positions only).
    /// Walks each row's visible spans clipped to the tile, so a structured mask costs one store per masked score;
    /// a `custom` predicate is consulted only inside the spans.
    private func applyMask(
        _ sT: UnsafeMutablePointer<Float>, spans: GroupSpans, i0: Int, rows: Int, tile: Range<Int>
    ) {
        let p = problem
        let (br, columns) = (tiling.queryBlock, tile.count)
        for head in 0..<p.groupSize {
            let (rowSpans, mask) = spans.forHead(head)
            if rowSpans.coverage(keys: tile) == .full { continue }
            func hide(_ row: Int, _ keys: Range<Int>) {
                for j in keys { sT[stripeIndex(head * br + row, j - tile.lowerBound, columns: columns)] = -.infinity }
            }
            for row in 0..<rows {
                var next = tile.lowerBound
                for span in rowSpans.spans[row] where span.overlaps(tile) {
                    let visible = span.clamped(to: tile)
                    hide(row, next..<visible.lowerBound)
                    if rowSpans.hasPredicate {
                        for j in visible
                        where !mask.allows(query: i0 + row, key: j, queryLength: p.queryLength, keyLength: p.keyLength)
                        {
                            hide(row, j..<(j + 1))
                        }
                    }
                    next = visible.upperBound
                }
                hide(row, next..<tile.upperBound)
            }
        }
    }

    /// Online softmax over one tile for every 16-row stripe: m' = max(m, max_j S), P = exp2(S - m'),
    /// l' = l * 2^(m - m') + sum P, O *= 2^(m - m'). P overwrites S.
    @inline(__always)
    private func updateSoftmax(
        _ sT: UnsafeMutablePointer<Float>, keyCount: Int, m: UnsafeMutablePointer<Float>,
        l: UnsafeMutablePointer<Float>, output o: UnsafeMutablePointer<Float>, markMasked: Bool
    ) {
        let dv = problem.valueDimension
        let rp = tiling.paddedRows(groupSize: problem.groupSize)
        let negativeInfinity = SIMD16<Float>(repeating: -.infinity)
        var rv = 0
        while rv < rp {
            let stripe = sT + rv * keyCount
            var tileMax = negativeInfinity
            for kk in 0..<keyCount { tileMax = vectorMax(tileMax, load16(stripe, kk * 16)) }
            let oldMax = load16(m, rv)
            let newMax = vectorMax(oldMax, tileMax)
            // A row that has seen no key keeps m = -inf; exponentiate against 0 instead so that no -inf - -inf
            // occurs.
            let shift = newMax.replacing(with: 0, where: newMax .== negativeInfinity)
            let alpha = vectorExp2OfNonPositive((oldMax - shift) * exponentScale)
            var sum = SIMD16<Float>()
            if markMasked {
                // The tile's values hold NaN or infinity. Masked keys (and keys whose score is -inf) get weight
                // -0.0: zero in every sum, but marked, so that the quarantine can tell them from visible keys whose
                // weight merely underflowed.
                for kk in 0..<keyCount {
                    let score = load16(stripe, kk * 16)
                    let weight = vectorExp2OfNonPositive((score - shift) * exponentScale).replacing(
                        with: -0.0, where: score .== negativeInfinity)
                    store16(weight, stripe, kk * 16)
                    sum += weight
                }
            } else {
                for kk in 0..<keyCount {
                    let weight = vectorExp2OfNonPositive((load16(stripe, kk * 16) - shift) * exponentScale)
                    store16(weight, stripe, kk * 16)
                    sum += weight
                }
            }
            store16(multiplyAdd(load16(l, rv), alpha, sum), l, rv)
            store16(newMax, m, rv)
            // Skip the rescale when no row's maximum moved (the common case once a row has seen its largest score).
            if horizontalMin(alpha) != 1 {
                switch tiling.layout {
                case .stripes:
                    let outputStripe = o + rv * dv
                    for c in 0..<dv { store16(load16(outputStripe, c * 16) * alpha, outputStripe, c * 16) }
                case .rows:
                    for r in 0..<(problem.groupSize * tiling.queryBlock) where alpha[r] != 1 {
                        let row = o + r * dv
                        for c in 0..<dv { row[c] *= alpha[r] }
                    }
                }
            }
            rv += 16
        }
    }

    /// Value rows with NaN or infinity. A key that is masked for a row (or has a -inf score there) must not bring
    /// 0 * NaN into that row, while a key the row sees must propagate its NaN even if its weight underflowed to 0, as
    /// the reference does. The bad rows are zeroed in a copy (`clean`, which the fast kernel then uses) and added
    /// here to every row whose weight is not the -0.0 "masked" marker. Returns the values pointer the fast kernel
    /// should use.
    private func quarantineNonFiniteValues(
        _ values: UnsafePointer<Float>, keyCount: Int, weights pT: UnsafePointer<Float>,
        output o: UnsafeMutablePointer<Float>, clean: UnsafeMutablePointer<Float>
    ) -> UnsafePointer<Float> {
        let dv = problem.valueDimension
        let rowCount =
            tiling.layout == .stripes
            ? tiling.paddedRows(groupSize: problem.groupSize) : problem.groupSize * tiling.queryBlock
        var poisoned: [Int] = []
        for kk in 0..<keyCount {
            let row = values + kk * dv
            var bad = false
            for c in 0..<dv where !row[c].isFinite { bad = true }
            if bad { poisoned.append(kk) }
        }
        if poisoned.isEmpty { return values }
        clean.update(from: values, count: keyCount * dv)
        for kk in poisoned {
            (clean + kk * dv).update(repeating: 0, count: dv)
            for r in 0..<rowCount {
                let weight = pT[stripeIndex(r, kk, columns: keyCount)]
                if weight == 0 && weight.sign == .minus { continue }
                let (start, step) = outputRow(r)
                for c in 0..<dv { o[start + c * step] += values[kk * dv + c] * weight }
            }
        }
        return UnsafePointer(clean)
    }
}

/// The visible key spans of one work item's rows: shared by the group's heads, or one per head when the call has
/// per-head masks (`AttentionOptions.headMasks`, each intersected with the call's mask).
private struct GroupSpans {
    let perHead: [MaskRowSpans]
    let masks: [AttentionMask]
    let groupSize: Int
    /// The smallest key range holding every visible key of every head's rows.
    let keyHull: Range<Int>

    init(problem p: AttentionProblem, keyValueHead kvHead: Int, queries: Range<Int>) {
        groupSize = p.groupSize
        if let headMasks = p.options.headMasks {
            masks = (0..<p.groupSize).map { head in
                let own = headMasks[kvHead * p.groupSize + head]
                if case .none = p.mask { return own }
                return .intersection(p.mask, own)
            }
        } else {
            masks = [p.mask]
        }
        perHead = masks.map {
            MaskRowSpans(mask: $0, queries: queries, queryLength: p.queryLength, keyLength: p.keyLength)
        }
        let hulls = perHead.map(\.keyHull).filter { !$0.isEmpty }
        if let lower = hulls.map(\.lowerBound).min(), let upper = hulls.map(\.upperBound).max() {
            keyHull = lower..<upper
        } else {
            keyHull = 0..<0
        }
    }

    /// Writes each row's visible keys as at most two inclusive ranges [lo1, hi1], [lo2, hi2] (Int32, four arrays of
    /// `rowCount` at `bounds`, row r = head * queryBlock + row; empty ranges and padding rows get lo > hi), for
    /// `applyMaskBounds`. Returns false, writing nothing useful, when a head has a predicate, a row has more than two
    /// spans, or key positions do not fit Int32: then the caller masks span by span.
    func writeBounds(
        _ bounds: UnsafeMutableRawPointer, rowCount rp: Int, queryBlock br: Int, rows: Int, keyLength: Int
    ) -> Bool {
        if keyLength >= Int(Int32.max) || perHead.contains(where: { $0.hasPredicate }) { return false }
        let lanes = bounds.bindMemory(to: Int32.self, capacity: 4 * rp)
        for i in 0..<rp {
            (lanes[i], lanes[rp + i], lanes[2 * rp + i], lanes[3 * rp + i]) = (.max, .min, .max, .min)
        }
        for head in 0..<groupSize {
            let (rowSpans, _) = forHead(head)
            for row in 0..<rows {
                let spans = rowSpans.spans[row]
                if spans.count > 2 { return false }
                let r = head * br + row
                for (index, span) in spans.enumerated() {
                    lanes[2 * index * rp + r] = Int32(span.lowerBound)
                    lanes[(2 * index + 1) * rp + r] = Int32(span.upperBound - 1)
                }
            }
        }
        return true
    }

    /// The spans and mask of head `head` of the group.
    func forHead(_ head: Int) -> (MaskRowSpans, AttentionMask) {
        perHead.count == 1 ? (perHead[0], masks[0]) : (perHead[head], masks[head])
    }

    /// The coverage of a key tile for all heads: empty when empty for each, full when full for each.
    func coverage(keys: Range<Int>) -> TileCoverage {
        if perHead.count == 1 { return perHead[0].coverage(keys: keys) }
        var (anyVisible, allFull) = (false, true)
        for spans in perHead {
            let coverage = spans.coverage(keys: keys)
            anyVisible = anyVisible || coverage != .empty
            allFull = allFull && coverage == .full
        }
        return allFull ? .full : anyVisible ? .partial : .empty
    }
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

/// Sets the scores of keys outside each row's (at most two) visible ranges to -inf, 16 rows at a time: two compares
/// per range and a blend per key, instead of a scalar store per masked score. `bounds` as written by
/// `GroupSpans.writeBounds`.
@inline(__always)
private func applyMaskBounds(
    _ sT: UnsafeMutablePointer<Float>, bounds: UnsafeMutableRawPointer, rowCount rp: Int, tile: Range<Int>
) {
    let lanes = UnsafeRawPointer(bounds)
    let negativeInfinity = SIMD16<Float>(repeating: -.infinity)
    func load(_ array: Int, _ rv: Int) -> SIMD16<Int32> {
        lanes.loadUnaligned(fromByteOffset: (array * rp + rv) * 4, as: SIMD16<Int32>.self)
    }
    var rv = 0
    while rv < rp {
        let (lo1, hi1, lo2, hi2) = (load(0, rv), load(1, rv), load(2, rv), load(3, rv))
        let stripe = sT + rv * tile.count
        for kk in 0..<tile.count {
            let j = SIMD16<Int32>(repeating: Int32(tile.lowerBound + kk))
            let visible = ((j .>= lo1) .& (j .<= hi1)) .| ((j .>= lo2) .& (j .<= hi2))
            store16(load16(stripe, kk * 16).replacing(with: negativeInfinity, where: .!visible), stripe, kk * 16)
        }
        rv += 16
    }
}

/// Whether `count` floats are all finite: their sum is NaN or infinite whenever some value is. (A sum of finite
/// values that overflows also reports "not finite"; the quarantine path it then takes is exact, only slower.)
@inline(__always)
private func allFinite(_ values: UnsafePointer<Float>, count: Int) -> Bool {
    streamingSum(values, count: count).isFinite
}
