// One work item of the blockwise kernel: query block `queryBlock` of the G query heads that read one key/value
// head, over the key tiles of one key split. It packs Q once, then for each tile of the tile walk runs the named
// steps
//
//   scores (S^T = K Q^T)  ->  score options (softcap, ALiBi, bias)  ->  mask (partial tiles only)
//     ->  online softmax update (m, l, rescale O, P = exp2(S - m))  ->  accumulate (O += V^T P^T)
//
// and leaves the unnormalized O with m and l in its state for `finalize`. How the rows are held (16-row stripes
// or a few row-major rows) is one strategy value, `TileRowLayout`, chosen once per call by the driver.
//
// Legend as in BlockwiseAttention.swift: R = G * Br rows, Rp = R rounded up to 16, m running maximum (half base
// 2), l running denominator, S scores, P weights, O unnormalized output.

/// How a work item holds its rows and which micro-kernels compute them: everything that differs between the
/// prefill (`StripeRows`) and decode (`FewRows`) layouts. Scores and weights are a 16-lane stripe-major S^T in
/// both, so masking and the online softmax are shared.
protocol TileRowLayout {
    /// Writes `source[c] * scale` for every column c of row r (r = head * Br + row) where the layout keeps Q[r, c]
    /// in the packed query scratch (and to the row-major copy, if the layout keeps one).
    func packQueryRow(
        _ source: UnsafePointer<Float>, row r: Int, scale: Float, into packed: UnsafeMutablePointer<Float>)
    /// S^T [tile, 16 * stripes] = K[tile] Q^T, prefetching the next tile.
    func scores(queries: UnsafePointer<Float>, tile: KeyTile, into sT: UnsafeMutablePointer<Float>)
    /// O += V[tile]^T P^T for every row; value rows are `valueStride` floats apart.
    func accumulate(
        weights pT: UnsafePointer<Float>, tile: KeyTile, values: UnsafePointer<Float>, valueStride: Int,
        into o: UnsafeMutablePointer<Float>)
    /// Whether `accumulateStored` reads value rows stored as `codec` stores them (no decoded value tile).
    func readsStoredValues(_ codec: RowCodec) -> Bool
    /// O += V[tile]^T P^T for every row, V as stored (`tile.storedValues`, in a format `readsStoredValues` takes).
    func accumulateStored(weights pT: UnsafePointer<Float>, tile: KeyTile, into o: UnsafeMutablePointer<Float>)
    /// Multiplies the O rows of stripe `rv` (rows rv ..< rv + 16) by `alpha`, lane by lane.
    func rescale(_ o: UnsafeMutablePointer<Float>, stripe rv: Int, by alpha: SIMD16<Float>)
    /// Where row r of O starts and how far apart its columns are.
    func outputRow(_ r: Int) -> (start: Int, step: Int)
    /// The rows the micro-kernels compute (padding rows included): weights of other rows are never read.
    var computedRows: Int { get }
    /// Whether key and value rows must be consecutive (strided Float32 rows are then gathered by the tile walk).
    static var gathersStridedRows: Bool { get }
    /// Where a row-major copy of the packed Q starts in the query scratch (row r, column c at offset + r * Dk + c),
    /// for micro-kernels that score stored key rows (8-bit, F16, BF16) as they are stored (`KeyTile.storedKeys`);
    /// nil when the layout has none.
    var rowMajorQueries: Int? { get }
}

/// Rows in lanes (`RowLayout.stripes`): Q^T [Dk, Rp] and O^T [Dv, Rp] stripe-major, the prefill micro-kernels.
struct StripeRows: TileRowLayout {
    let paddedRows: Int
    let keyDimension: Int
    let valueDimension: Int
    let shape: MicroKernelShape

    init(_ problem: AttentionProblem, _ tiling: BlockwiseTiling) {
        shape = tiling.shape
        paddedRows = tiling.paddedRows(groupSize: problem.groupSize)
        keyDimension = problem.keyDimension
        valueDimension = problem.valueDimension
    }

    var computedRows: Int { paddedRows }
    static var gathersStridedRows: Bool { false }
    var rowMajorQueries: Int? { nil }

    /// Element by element: the stripes hold Q transposed (`stripeIndex`), so a row's columns land 16 floats apart.
    @inline(__always) func packQueryRow(
        _ source: UnsafePointer<Float>, row r: Int, scale: Float, into packed: UnsafeMutablePointer<Float>
    ) {
        for c in 0..<keyDimension { packed[stripeIndex(r, c, columns: keyDimension)] = source[c] * scale }
    }

    @inline(__always) func scores(queries: UnsafePointer<Float>, tile: KeyTile, into sT: UnsafeMutablePointer<Float>) {
        computeScores(
            qT: queries, rowCount: paddedRows, keys: tile.keyRows, keyCount: tile.keys.count, depth: keyDimension,
            keyStride: tile.keyStride, scores: sT, prefetch: tile.next, shape: shape)
    }

    @inline(__always) func accumulate(
        weights pT: UnsafePointer<Float>, tile: KeyTile, values: UnsafePointer<Float>, valueStride: Int,
        into o: UnsafeMutablePointer<Float>
    ) {
        accumulateValues(
            weights: pT, rowCount: paddedRows, keyCount: tile.keys.count, values: values,
            valueDimension: valueDimension, valueStride: valueStride, oT: o, shape: shape)
    }

    func readsStoredValues(_ codec: RowCodec) -> Bool { false }

    func accumulateStored(weights pT: UnsafePointer<Float>, tile: KeyTile, into o: UnsafeMutablePointer<Float>) {
        preconditionFailure("the prefill layout reads decoded value tiles")
    }

    @inline(__always) func rescale(_ o: UnsafeMutablePointer<Float>, stripe rv: Int, by alpha: SIMD16<Float>) {
        let outputStripe = o + rv * valueDimension
        for c in 0..<valueDimension { store16(load16(outputStripe, c * 16) * alpha, outputStripe, c * 16) }
    }

    @inline(__always) func outputRow(_ r: Int) -> (start: Int, step: Int) {
        (stripeRowStart(r, columns: valueDimension), 16)
    }
}

/// A few row-major rows (`RowLayout.rows`, R <= 16): Q laid out by `fewRowsQueryIndex`, O [R, Dv], the decode
/// micro-kernels.
struct FewRows: TileRowLayout {
    let rowCount: Int
    let keyDimension: Int
    let valueDimension: Int

    init(_ problem: AttentionProblem, _ tiling: BlockwiseTiling) {
        rowCount = problem.groupSize * tiling.queryBlock
        keyDimension = problem.keyDimension
        valueDimension = problem.valueDimension
    }

    var computedRows: Int { rowCount }
    static var gathersStridedRows: Bool { true }
    /// Four rows (one decode token of four query heads sharing a key/value head) on targets without AVX-512 score
    /// stored keys as they are stored (`scoresFromStoredRows`), from a row-major copy of Q after the interleaved
    /// one (the query scratch holds 16 rows' worth).
    var rowMajorQueries: Int? { fewRowsCompactKernelsPay && rowCount == 4 ? rowCount * keyDimension : nil }

    /// Four columns at a time: in a group of four rows, columns 4 t ..< 4 t + 4 of row r are consecutive at
    /// 16 t + 4 (r % 4) past the group's start (`fewRowsQueryIndex`); rows after the groups and the row-major copy
    /// are plain rows. (Element by element, with the index computed per float, packing took 3.5% of a decode call
    /// over 1024 cached keys of one key/value head, Zen 3.)
    @inline(__always) func packQueryRow(
        _ source: UnsafePointer<Float>, row r: Int, scale: Float, into packed: UnsafeMutablePointer<Float>
    ) {
        let dk = keyDimension
        let start = packed + fewRowsQueryIndex(r, 0, rowCount: rowCount, depth: dk)
        var c = 0
        if r < rowCount / 4 * 4 {
            while c + 4 <= dk {
                store4(load4(source + c) * scale, start + 4 * c)
                c += 4
            }
            for c in c..<dk { packed[fewRowsQueryIndex(r, c, rowCount: rowCount, depth: dk)] = source[c] * scale }
        } else {
            scaledCopy(source, scale: scale, count: dk, into: start)
        }
        if let copy = rowMajorQueries { scaledCopy(source, scale: scale, count: dk, into: packed + copy + r * dk) }
    }

    @inline(__always) func scores(queries: UnsafePointer<Float>, tile: KeyTile, into sT: UnsafeMutablePointer<Float>) {
        if let stored = tile.storedKeys, let offset = rowMajorQueries, let format = stored.codec.directRows {
            return scoresFromStoredRows(
                queries: queries + offset, rows: stored.source, rowStride: stored.rowStride, format: format,
                keyCount: tile.keys.count, depth: keyDimension, scores: sT, prefetch: tile.next)
        }
        computeScoresFewRows(
            queries: queries, rowCount: rowCount, keys: tile.keyRows, keyCount: tile.keys.count,
            depth: keyDimension, scores: sT, prefetch: tile.next, compact: fewRowsCompactKernelsPay)
    }

    @inline(__always) func accumulate(
        weights pT: UnsafePointer<Float>, tile: KeyTile, values: UnsafePointer<Float>, valueStride: Int,
        into o: UnsafeMutablePointer<Float>
    ) {
        // Rows are consecutive here (`gathersStridedRows`).
        accumulateValuesFewRows(
            weights: pT, rowCount: rowCount, keyCount: tile.keys.count, values: values,
            valueDimension: valueDimension, output: o, prefetch: tile.next, compact: fewRowsCompactKernelsPay)
    }

    /// Where the scores read stored keys (four rows, the compact kernels' targets), the values are read as stored
    /// too, in the same formats, when Dv is a multiple of 16 (`accumulateStoredValues`).
    @inline(__always) func readsStoredValues(_ codec: RowCodec) -> Bool {
        rowMajorQueries != nil && valueDimension % 16 == 0 && codec.directRows != nil
    }

    @inline(__always) func accumulateStored(
        weights pT: UnsafePointer<Float>, tile: KeyTile, into o: UnsafeMutablePointer<Float>
    ) {
        guard let stored = tile.storedValues, let format = stored.codec.directRows else {
            preconditionFailure("a tile without stored values in a direct format")
        }
        accumulateStoredValues(
            weights: pT, keyCount: tile.keys.count, rows: stored.source, rowStride: stored.rowStride, format: format,
            valueDimension: valueDimension, output: o, prefetch: tile.next)
    }

    @inline(__always) func rescale(_ o: UnsafeMutablePointer<Float>, stripe rv: Int, by alpha: SIMD16<Float>) {
        for r in rv..<Swift.min(rv + 16, rowCount) where alpha[r - rv] != 1 {
            let row = o + r * valueDimension
            for c in 0..<valueDimension { row[c] *= alpha[r - rv] }
        }
    }

    @inline(__always) func outputRow(_ r: Int) -> (start: Int, step: Int) { (r &* valueDimension, 1) }
}

/// Everything one work item needs; pointers may be nil only when their tensor is empty.
struct WorkItemContext<Layout: TileRowLayout> {
    let problem: AttentionProblem
    let tiling: BlockwiseTiling
    let layout: Layout
    let queries: UnsafePointer<Float>?
    let segments: [KeyValueSegment]
    /// Whether any segment is stored in a format the tile walk decodes (see `tiledScratchFloats`).
    let decodesTiles: Bool
    let bias: UnsafePointer<Float>?
    let output: UnsafeMutablePointer<Float>?
    let logSumExp: UnsafeMutablePointer<Float>?

    /// The softmax state of one work item inside its `state` memory: O (in the layout's order), then m and l.
    struct State {
        let o: UnsafeMutablePointer<Float>
        let m: UnsafeMutablePointer<Float>
        let l: UnsafeMutablePointer<Float>
    }

    /// The per-row tables a work item builds once (pointers into its scratch).
    struct Scratch {
        /// Q packed by the layout, scaled so scores come out in half base 2 (unless softcap needs natural units).
        let queries: UnsafeMutablePointer<Float>
        /// ALiBi slope (half base 2) and diagonal key position per row.
        let alibiSlopes: UnsafeMutablePointer<Float>
        let alibiDiagonals: UnsafeMutablePointer<Float>
        /// Each row's visible keys as at most two ranges (see `GroupSpans.writeBounds`).
        let spanBounds: UnsafeMutableRawPointer
        /// A copy of a value tile with its non-finite rows zeroed (the quarantine).
        let cleanValues: UnsafeMutablePointer<Float>
        /// The decoded K and V tiles of stored (non-Float32) segments, when any segment is stored.
        let decodedTile: UnsafeMutablePointer<Float>?
    }

    /// One work item: query block `queryBlock` of every query head that reads `keyValueHead`, over the keys of
    /// split `split`. Leaves the unnormalized O, the running maximum m (half base 2) and the denominator l in `state`.
    /// `staged`: the item's group's rows staged by its worker (`RowStaging`), read instead of `segments`.
    func run(
        batch b: Int, keyValueHead kvHead: Int, queryBlock: Int, split: Int, scratch: UnsafeMutablePointer<Float>,
        scoreTile sT: UnsafeMutablePointer<Float>, state: UnsafeMutablePointer<Float>,
        segments staged: [KeyValueSegment]? = nil
    ) {
        let p = problem
        let (nq, nk, dk, dv, g) = (p.queryLength, p.keyLength, p.keyDimension, p.valueDimension, p.groupSize)
        let br = tiling.queryBlock
        let rp = tiling.paddedRows(groupSize: g)
        let i0 = queryBlock * br
        let rows = Swift.min(br, nq - i0)
        let s = State(o: state, m: state + dv * rp, l: state + dv * rp + rp)
        guard rows > 0, let queries else { return startRows(s, keyValueHead: kvHead, rows: rows, split: split) }

        let tables = Scratch(
            queries: scratch, alibiSlopes: scratch + dk * rp, alibiDiagonals: scratch + dk * rp + rp,
            spanBounds: UnsafeMutableRawPointer(scratch + dk * rp + 2 * rp), cleanValues: scratch + dk * rp + 6 * rp,
            decodedTile: decodesTiles ? scratch + dk * rp + 6 * rp + tiling.keyBlock * dv : nil)
        let spans = GroupSpans(problem: p, batch: b, keyValueHead: kvHead, queries: i0..<(i0 + rows))
        let walk = TileWalk(
            segments: staged ?? segments, batch: b, keyValueHead: kvHead, visibleKeys: spans.keyHull, split: split,
            keysPerSplit: tiling.keysPerSplit, keyLength: nk, keyBlock: tiling.keyBlock, keyDimension: dk,
            valueDimension: dv, decoded: tables.decodedTile, gathersStridedRows: Layout.gathersStridedRows,
            fusesStoredKeys: layout.rowMajorQueries != nil)
        // An item that sees no key (masked away, or padding) costs no packing. With one split, `finalize` reads O
        // only where a sink logit makes l nonzero; split states are all merged, so theirs must be zeros.
        if walk.keyRange.isEmpty {
            let readsOutput = tiling.splitCount(keyLength: nk) > 1 || (p.options.sinkLogits != nil && split == 0)
            return startRows(s, keyValueHead: kvHead, rows: rows, split: split, clearingOutput: readsOutput)
        }
        startRows(s, keyValueHead: kvHead, rows: rows, split: split)
        packQueries(queries, into: tables.queries, batch: b, keyValueHead: kvHead, i0: i0, rows: rows)
        writeAlibiRows(tables, keyValueHead: kvHead, i0: i0, rows: rows)
        let vectorMask = spans.writeBounds(tables.spanBounds, rowCount: rp, queryBlock: br, rows: rows, keyLength: nk)
        let hasScoreOptions = p.options.softcap != nil || p.options.alibiSlopes != nil || p.options.bias != nil

        /// Every tile of the walk (`scanValues`: check each value tile for NaN and infinity first).
        func runTiles(_ scanValues: Bool) {
            walk.forEach(coverage: { spans.coverage(keys: $0) }) { tile in
                layout.scores(queries: tables.queries, tile: tile, into: sT)
                if hasScoreOptions {
                    applyScoreOptions(sT, batch: b, keyValueHead: kvHead, i0: i0, rows: rows, tile: tile.keys, tables)
                }
                if tile.coverage == .partial {
                    if vectorMask {
                        applyMaskBounds(sT, bounds: tables.spanBounds, rowCount: rp, tile: tile.keys)
                    } else {
                        applyMask(sT, spans: spans, i0: i0, rows: rows, tile: tile.keys)
                    }
                }
                // Stored values the layout reads as stored (unless this run scans them for NaN and infinity,
                // which needs them decoded).
                if !scanValues, let stored = tile.storedValues, layout.readsStoredValues(stored.codec) {
                    updateSoftmax(sT, keyCount: tile.keys.count, s, markMasked: false)
                    return layout.accumulateStored(weights: sT, tile: tile, into: s.o)
                }
                var values = tile.values()
                var valueStride = tile.valueStride
                let valuesFinite =
                    !scanValues || allFinite(values, rows: tile.keys.count, columns: dv, rowStride: valueStride)
                updateSoftmax(sT, keyCount: tile.keys.count, s, markMasked: !valuesFinite)
                if !valuesFinite {
                    (values, valueStride) = quarantineNonFiniteValues(
                        values, keyCount: tile.keys.count, rowStride: valueStride, weights: sT, output: s.o,
                        clean: tables.cleanValues)
                }
                layout.accumulate(weights: sT, tile: tile, values: values, valueStride: valueStride, into: s.o)
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
            if scanValues || streamingSum(s.o, count: dv * rp).isFinite { break }
            scanValues = true
            startRows(s, keyValueHead: kvHead, rows: rows, split: split)
        }
    }

    /// m = -inf, l = 0, O = 0 (O left as it is without `clearingOutput`, for a state whose O is never read); a
    /// learned sink logit starts a row at m = sink, l = exp2(sink - m) = 1, in the first split only.
    private func startRows(
        _ s: State, keyValueHead kvHead: Int, rows: Int, split: Int, clearingOutput: Bool = true
    ) {
        let (g, br, dv) = (problem.groupSize, tiling.queryBlock, problem.valueDimension)
        let rp = tiling.paddedRows(groupSize: g)
        s.m.update(repeating: -.infinity, count: rp)
        s.l.update(repeating: 0, count: rp)
        if clearingOutput { s.o.update(repeating: 0, count: dv * rp) }
        if let sinks = problem.options.sinkLogits, split == 0 {
            for head in 0..<g {
                for row in 0..<rows {
                    s.m[head * br + row] = sinks[kvHead * g + head] * logitScale
                    s.l[head * br + row] = 1
                }
            }
        }
    }

    /// Q of the item's rows in the layout's order, scaled so that scores come out in half base 2 (unless softcap
    /// needs them in natural units first); padding is zero.
    private func packQueries(
        _ queries: UnsafePointer<Float>, into packed: UnsafeMutablePointer<Float>, batch b: Int,
        keyValueHead kvHead: Int, i0: Int, rows: Int
    ) {
        let p = problem
        let (g, br, dk) = (p.groupSize, tiling.queryBlock, p.keyDimension)
        let qScale = p.options.softcap == nil ? p.scale * logitScale : p.scale
        packed.update(repeating: 0, count: dk * tiling.paddedRows(groupSize: g))
        let strides = p.queryStrides
        // Rows `H * d` floats apart ([B, N, H, d], packed batches) are not followed by the hardware prefetcher, and
        // this scalar loop would wait out a miss at the start of every row: hint the rows `ahead` in advance.
        let ahead = strides.token == dk ? 0 : Swift.min(4, rows)
        for head in 0..<g {
            let source = queries + strides.offset(batch: b, head: kvHead * g + head, token: i0)
            for row in 0..<ahead { prefetchToL2(source + row * strides.token, count: dk) }
            for row in 0..<rows {
                if ahead > 0 && row + ahead < rows { prefetchToL2(source + (row + ahead) * strides.token, count: dk) }
                layout.packQueryRow(source + row * strides.token, row: head * br + row, scale: qScale, into: packed)
            }
        }
    }

    /// ALiBi per row (slope in half base 2, diagonal key position), so the penalty is applied 16 rows at a time.
    private func writeAlibiRows(_ tables: Scratch, keyValueHead kvHead: Int, i0: Int, rows: Int) {
        guard let slopes = problem.options.alibiSlopes else { return }
        let p = problem
        let (g, br) = (p.groupSize, tiling.queryBlock)
        let rp = tiling.paddedRows(groupSize: g)
        tables.alibiSlopes.update(repeating: 0, count: rp)
        tables.alibiDiagonals.update(repeating: 0, count: rp)
        for head in 0..<g {
            for row in 0..<rows {
                tables.alibiSlopes[head * br + row] = slopes[kvHead * g + head] * logitScale
                tables.alibiDiagonals[head * br + row] = Float(i0 + row + p.keyLength - p.queryLength)
            }
        }
    }
}
