// Blockwise attention: the FlashAttention-2 forward pass (Dao, 2023) on the CPU. Every softmax variant of this
// package (MHA/GQA/MQA, every mask, softcap, ALiBi, bias, learned sinks) runs through this one kernel.
//
// Work item = (batch b, key/value head, query block). The G query heads that share the key/value head are
// processed together: their Br query rows each form one set of R = G * Br rows, so every key/value tile is read
// once per group. For each visible key tile (Bc keys) the kernel computes the scores of all R rows, updates the
// online softmax state and accumulates P V. Nothing of size Nq x Nk is ever allocated.
//
// Layout - rows in lanes: every per-tile matrix is stored transposed, with the R query rows along the 16-lane
// vectors. Q^T [Dk, Rp] is packed once per work item (scaled by scale * log2(e), so scores come out in base 2);
// S^T = K Q^T [Bc, Rp] is computed by broadcasting key elements against Q^T vectors, and O^T [Dv, Rp] += V^T P^T
// by broadcasting value elements against P^T vectors. K and V are read in place (no per-tile packing), and the
// softmax statistics m and l are vectors of 16 rows, so the online softmax needs no horizontal reductions or
// lane shuffles.
//
// Legend: B batch, Hq/Hkv query/key-value heads, G = Hq / Hkv, Nq/Nk lengths, Dk/Dv head dimensions,
// Br query positions per block (per head), Bc keys per tile, R = G * Br rows per item, Rp = R rounded up to 16,
// m running row maximum (base 2), l running denominator, S scores, P = exp2(S - m) weights, O unnormalized output.
//
// Numerics: masked scores become -inf *after* they are computed (so NaN in a masked key is discarded); the row
// maximum used for exponentials is replaced by 0 while a row has seen no key, so exp2(-inf - -inf) never happens;
// a value row holding NaN or infinity reaches exactly the rows that see its key (even with a weight that underflowed
// to 0, as in the Float64 reference) and never a row for which the key is masked or scored -inf.
//
// Matrices are stripe-major (`stripeIndex`): 16-row stripes, each a contiguous [columns, 16] block.

/// The blockwise kernel's tile sizes for one call.
package struct BlockwiseTiling: Sendable, Hashable {
    /// Query positions per block, per head (Br).
    package var queryBlock: Int
    /// Keys per tile (Bc).
    package var keyBlock: Int

    /// The default tiles: R = G * Br close to 64 rows (four 16-row stripes) and 64-key tiles: one Q^T stripe
    /// (Dk x 16 floats) and one P^T stripe (4 KiB) stay in L1 while K or V streams past. Measured with
    /// `attention-bench --query-block/--key-block` at N = 2048, d = 64 and 128: (64, 64) was as fast as any of
    /// (32|64|128) x (32|48|64|96|128) within the machine's noise, and smaller key tiles lost to per-tile overhead.
    package static func automatic(groupSize: Int) -> BlockwiseTiling {
        BlockwiseTiling(queryBlock: Swift.max(1, 64 / groupSize), keyBlock: 64)
    }

    /// Rp: the rows of one work item (G * Br) rounded up to whole 16-row stripes.
    package func paddedRows(groupSize: Int) -> Int { (groupSize * queryBlock + 15) & ~15 }
}

/// Where the kernel keeps each tile's scores.
package enum ScoreStorage {
    /// One S^T tile per worker, reused for every tile: the blockwise kernel.
    case perWorkerTile
    /// Every work item's S^T in one tensor of `B * Hkv * Bc * Rp` floats, kept whole: the naive kernel, which runs
    /// this same code with a single tile (Br = Nq, Bc = Nk) so that it materializes the entire score matrix.
    case materialized
}

/// Floats of per-worker scratch: Q^T [Dk, Rp], O^T [Dv, Rp], m, l and two ALiBi rows [Rp], the quarantine copy of
/// a V tile [Bc, Dv], and (for `.perWorkerTile`) S^T [Bc, Rp].
package func tiledScratchFloats(_ problem: AttentionProblem, _ tiling: BlockwiseTiling, _ storage: ScoreStorage) -> Int
{
    let rp = tiling.paddedRows(groupSize: problem.groupSize)
    let (dk, dv, bc) = (problem.keyDimension, problem.valueDimension, tiling.keyBlock)
    let tile = storage == .perWorkerTile ? bc * rp : 0
    return rp * (dk + dv + 4) + bc * dv + tile
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

private let log2e: Float = 1.442_695_04
private let ln2: Float = 0.693_147_18

/// Runs the tiled kernel over every work item. The blockwise kernel calls it with `.perWorkerTile`; the naive
/// kernel with one tile covering everything and `.materialized` (after checking its memory budget).
package func tiledAttention(
    _ problem: AttentionProblem, queries: Tensor, keys: Tensor, values: Tensor, tiling: BlockwiseTiling,
    scoreStorage: ScoreStorage
) -> AttentionResult {
    let (nq, dv) = (problem.queryLength, problem.valueDimension)
    let queryBlocks = (nq + tiling.queryBlock - 1) / tiling.queryBlock
    let items = problem.batch * problem.keyValueHeads * queryBlocks
    let workers = Parallel.workerCount(items: items, threads: problem.threads)
    let scratchFloats = tiledScratchFloats(problem, tiling, scoreStorage)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, workers * scratchFloats))
    defer { scratch.deallocate() }
    let scoreFloats = scoreStorage == .materialized ? (materializedScoreFloats(problem, tiling) ?? 0) : 0
    let scores = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, scoreFloats))
    defer { scores.deallocate() }
    let tileFloats = tiling.keyBlock * tiling.paddedRows(groupSize: problem.groupSize)

    let outputCount = problem.batch * problem.queryHeads * nq
    var output = [Float](repeating: 0, count: outputCount * dv)
    var logSumExp = [Float](repeating: 0, count: outputCount)
    let biasScalars = problem.options.bias?.scalars ?? []
    queries.withUnsafeBufferPointer { q in
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                biasScalars.withUnsafeBufferPointer { bias in
                    output.withUnsafeMutableBufferPointer { o in
                        logSumExp.withUnsafeMutableBufferPointer { lse in
                            let context = UncheckedSendable(
                                BlockContext(
                                    problem: problem, tiling: tiling, queries: q.baseAddress, keys: k.baseAddress,
                                    values: v.baseAddress, bias: bias.baseAddress, output: o.baseAddress,
                                    logSumExp: lse.baseAddress))
                            Parallel.forEach(items: items, threads: problem.threads) { worker, item in
                                // Last query blocks first: under a causal mask they have the most work, and
                                // starting with them balances the dynamic schedule.
                                let block = queryBlocks - 1 - item % queryBlocks
                                let (b, kvHead) = (item / queryBlocks).quotientAndRemainder(
                                    dividingBy: problem.keyValueHeads)
                                let workerScratch = scratch + worker * scratchFloats
                                let tile =
                                    scoreStorage == .materialized
                                    ? scores + item * tileFloats : workerScratch + (scratchFloats - tileFloats)
                                context.value.run(
                                    batch: b, keyValueHead: kvHead, queryBlock: block, scratch: workerScratch,
                                    scoreTile: tile)
                            }
                        }
                    }
                }
            }
        }
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: problem.outputShape, scalars: output),
        logSumExp: Tensor(uncheckedShape: [problem.batch, problem.queryHeads, nq], scalars: logSumExp),
        workspaceBytes: (workers * scratchFloats + scoreFloats) * MemoryLayout<Float>.size)
}

/// Everything one work item needs; pointers may be nil only when their tensor is empty.
private struct BlockContext {
    let problem: AttentionProblem
    let tiling: BlockwiseTiling
    let queries: UnsafePointer<Float>?
    let keys: UnsafePointer<Float>?
    let values: UnsafePointer<Float>?
    let bias: UnsafePointer<Float>?
    let output: UnsafeMutablePointer<Float>?
    let logSumExp: UnsafeMutablePointer<Float>?

    /// One work item: query block `queryBlock` of every query head that reads `keyValueHead`.
    func run(
        batch b: Int, keyValueHead kvHead: Int, queryBlock: Int, scratch: UnsafeMutablePointer<Float>,
        scoreTile sT: UnsafeMutablePointer<Float>
    ) {
        let p = problem
        let (nq, nk, dk, dv, g) = (p.queryLength, p.keyLength, p.keyDimension, p.valueDimension, p.groupSize)
        let (br, bc) = (tiling.queryBlock, tiling.keyBlock)
        let rp = tiling.paddedRows(groupSize: g)
        let i0 = queryBlock * br
        let rows = Swift.min(br, nq - i0)
        guard rows > 0, let queries, let output, let logSumExp else { return }

        let qT = scratch
        let oT = qT + dk * rp
        let m = oT + dv * rp
        let l = m + rp
        let alibiSlopes = l + rp
        let alibiDiagonals = alibiSlopes + rp
        let cleanValues = alibiDiagonals + rp

        // Q^T, scaled so that scores come out in base 2 (unless softcap needs them in natural units first).
        let softcap = p.options.softcap
        let qScale = softcap == nil ? p.scale * log2e : p.scale
        qT.update(repeating: 0, count: dk * rp)
        for head in 0..<g {
            let source = queries + ((b * p.queryHeads + kvHead * g + head) * nq + i0) * dk
            for row in 0..<rows {
                let r = head * br + row
                for c in 0..<dk { qT[stripeIndex(r, c, columns: dk)] = source[row * dk + c] * qScale }
            }
        }
        // Softmax state: a learned sink logit starts a row at m = sink, l = exp2(sink - m) = 1.
        m.update(repeating: -.infinity, count: rp)
        l.update(repeating: 0, count: rp)
        if let sinks = p.options.sinkLogits {
            for head in 0..<g {
                for row in 0..<rows {
                    m[head * br + row] = sinks[kvHead * g + head] * log2e
                    l[head * br + row] = 1
                }
            }
        }
        oT.update(repeating: 0, count: dv * rp)
        // ALiBi per row (slope in base 2, diagonal key position), so the penalty is applied 16 rows at a time.
        if let slopes = p.options.alibiSlopes {
            alibiSlopes.update(repeating: 0, count: rp)
            alibiDiagonals.update(repeating: 0, count: rp)
            for head in 0..<g {
                for row in 0..<rows {
                    alibiSlopes[head * br + row] = slopes[kvHead * g + head] * log2e
                    alibiDiagonals[head * br + row] = Float(i0 + row + nk - nq)
                }
            }
        }

        let spans = MaskRowSpans(mask: p.mask, queries: i0..<(i0 + rows), queryLength: nq, keyLength: nk)
        if let keys, let values, !spans.keyHull.isEmpty {
            let keyBase = keys + (b * p.keyValueHeads + kvHead) * nk * dk
            let valueBase = values + (b * p.keyValueHeads + kvHead) * nk * dv
            let hasScoreOptions = softcap != nil || p.options.alibiSlopes != nil || p.options.bias != nil
            var tileStart = spans.keyHull.lowerBound / bc * bc
            while tileStart < spans.keyHull.upperBound {
                let tile = tileStart..<Swift.min(tileStart + bc, nk)
                tileStart += bc
                let coverage = spans.coverage(keys: tile)
                if coverage == .empty { continue }
                computeScores(
                    qT: qT, rowCount: rp, keys: keyBase + tile.lowerBound * dk, keyCount: tile.count, depth: dk,
                    scores: sT)
                if hasScoreOptions {
                    applyScoreOptions(
                        sT, rowCount: rp, batch: b, keyValueHead: kvHead, i0: i0, rows: rows, tile: tile,
                        alibiSlopes: alibiSlopes, alibiDiagonals: alibiDiagonals)
                }
                if coverage == .partial {
                    applyMask(sT, spans: spans, i0: i0, rows: rows, tile: tile)
                }
                var tileValues = valueBase + tile.lowerBound * dv
                let valuesFinite = allFinite(tileValues, count: tile.count * dv)
                updateSoftmax(
                    sT, rowCount: rp, keyCount: tile.count, m: m, l: l, oT: oT, valueDimension: dv,
                    markMasked: !valuesFinite)
                if !valuesFinite {
                    tileValues = quarantineNonFiniteValues(
                        tileValues, keyCount: tile.count, valueDimension: dv, weights: sT, rowCount: rp, oT: oT,
                        clean: cleanValues)
                }
                accumulateValues(
                    weights: sT, rowCount: rp, keyCount: tile.count, values: tileValues, valueDimension: dv, oT: oT)
            }
        }

        // O = O^T / l, transposed back; LSE = ln(2^m * l) = m * ln2 + ln l.
        for head in 0..<g {
            let rowBase = (b * p.queryHeads + kvHead * g + head) * nq + i0
            for row in 0..<rows {
                let r = head * br + row
                let denominator = l[r]
                // l == 0: the row saw no key (and has no sink): zeros, not 0/0.
                let inverse: Float = denominator == 0 ? 0 : 1 / denominator
                let target = output + (rowBase + row) * dv
                for c in 0..<dv { target[c] = oT[stripeIndex(r, c, columns: dv)] * inverse }
                logSumExp[rowBase + row] = denominator == 0 ? -.infinity : m[r] * ln2 + _log(denominator)
            }
        }
    }

    /// Softcap, ALiBi and bias on one tile of scores (stripe-major, row r = head * Br + row). Scores leave in base 2.
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
            let outer = SIMD16<Float>(repeating: softcap * log2e)
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
                        sT[stripeIndex(head * br + row, kk, columns: columns)] += biasRow[j] * log2e
                    }
                }
            }
        }
    }

    /// Sets masked scores of a partial tile to -inf, for every head of the group (masks depend on positions only).
    /// Walks each row's visible spans clipped to the tile, so a structured mask costs one store per masked score;
    /// a `custom` predicate is consulted only inside the spans.
    private func applyMask(
        _ sT: UnsafeMutablePointer<Float>, spans: MaskRowSpans, i0: Int, rows: Int, tile: Range<Int>
    ) {
        let p = problem
        let (g, br, columns) = (p.groupSize, tiling.queryBlock, tile.count)
        func hide(_ row: Int, _ keys: Range<Int>) {
            for head in 0..<g {
                for j in keys { sT[stripeIndex(head * br + row, j - tile.lowerBound, columns: columns)] = -.infinity }
            }
        }
        for row in 0..<rows {
            var next = tile.lowerBound
            for span in spans.spans[row] where span.overlaps(tile) {
                let visible = span.clamped(to: tile)
                hide(row, next..<visible.lowerBound)
                if spans.hasPredicate {
                    for j in visible
                    where !p.mask.allows(query: i0 + row, key: j, queryLength: p.queryLength, keyLength: p.keyLength) {
                        hide(row, j..<(j + 1))
                    }
                }
                next = visible.upperBound
            }
            hide(row, next..<tile.upperBound)
        }
    }
}

/// Index of (row r, column x) in a stripe-major matrix with `columns` columns: rows are grouped in stripes of 16,
/// and each stripe is stored as `columns` consecutive 16-float vectors. A micro-kernel walking one stripe reads
/// contiguous memory; with plain row-major [columns, Rp] storage its 64-byte loads were Rp * 4 bytes apart and
/// fell into a quarter of L1's sets.
@inline(__always) func stripeIndex(_ r: Int, _ x: Int, columns: Int) -> Int {
    (r >> 4) * columns * 16 + x * 16 + (r & 15)
}

/// Online softmax over one tile for every 16-row stripe: m' = max(m, max_j S), P = exp2(S - m'),
/// l' = l * 2^(m - m') + sum P, O^T *= 2^(m - m'). P overwrites S.
@inline(__always)
private func updateSoftmax(
    _ sT: UnsafeMutablePointer<Float>, rowCount rp: Int, keyCount: Int, m: UnsafeMutablePointer<Float>,
    l: UnsafeMutablePointer<Float>, oT: UnsafeMutablePointer<Float>, valueDimension dv: Int, markMasked: Bool
) {
    let negativeInfinity = SIMD16<Float>(repeating: -.infinity)
    var rv = 0
    while rv < rp {
        let stripe = sT + rv * keyCount
        var tileMax = negativeInfinity
        for kk in 0..<keyCount { tileMax = vectorMax(tileMax, load16(stripe, kk * 16)) }
        let oldMax = load16(m, rv)
        let newMax = vectorMax(oldMax, tileMax)
        // A row that has seen no key keeps m = -inf; exponentiate against 0 instead so that no -inf - -inf occurs.
        let shift = newMax.replacing(with: 0, where: newMax .== negativeInfinity)
        let alpha = vectorExp2OfNonPositive(oldMax - shift)
        var sum = SIMD16<Float>()
        if markMasked {
            // The tile's values hold NaN or infinity. Masked keys (and keys whose score is -inf) get weight -0.0:
            // zero in every sum, but marked, so that the quarantine can tell them from visible keys whose weight
            // merely underflowed.
            for kk in 0..<keyCount {
                let score = load16(stripe, kk * 16)
                let weight = vectorExp2OfNonPositive(score - shift).replacing(
                    with: -0.0, where: score .== negativeInfinity)
                store16(weight, stripe, kk * 16)
                sum += weight
            }
        } else {
            for kk in 0..<keyCount {
                let weight = vectorExp2OfNonPositive(load16(stripe, kk * 16) - shift)
                store16(weight, stripe, kk * 16)
                sum += weight
            }
        }
        store16(multiplyAdd(load16(l, rv), alpha, sum), l, rv)
        store16(newMax, m, rv)
        // Skip the rescale when no row's maximum moved (the common case once a row has seen its largest score).
        if horizontalMin(alpha) != 1 {
            let outputStripe = oT + rv * dv
            for c in 0..<dv { store16(load16(outputStripe, c * 16) * alpha, outputStripe, c * 16) }
        }
        rv += 16
    }
}

/// Whether `count` floats are all finite: one vector pass summing x * 0, which is NaN exactly when some x is NaN or
/// infinite.
@inline(__always)
private func allFinite(_ values: UnsafePointer<Float>, count: Int) -> Bool {
    var probe = SIMD16<Float>()
    var i = 0
    while i + 16 <= count {
        probe += load16(values, i) * 0
        i += 16
    }
    var tail: Float = 0
    while i < count {
        tail += values[i] * 0
        i += 1
    }
    return horizontalSum(probe) + tail == 0
}

/// Value rows with NaN or infinity. A key that is masked for a row (or has a -inf score there) must not bring
/// 0 * NaN into that row, while a key the row sees must propagate its NaN even if its weight underflowed to 0, as the
/// reference does. The bad rows are zeroed in a copy (`clean`, which the fast kernel then uses) and added here to
/// every row whose weight is not the -0.0 "masked" marker. Returns the values pointer the fast kernel should use.
private func quarantineNonFiniteValues(
    _ values: UnsafePointer<Float>, keyCount: Int, valueDimension dv: Int, weights pT: UnsafePointer<Float>,
    rowCount rp: Int, oT: UnsafeMutablePointer<Float>, clean: UnsafeMutablePointer<Float>
) -> UnsafePointer<Float> {
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
        for r in 0..<rp {
            let weight = pT[stripeIndex(r, kk, columns: keyCount)]
            if weight == 0 && weight.sign == .minus { continue }
            for c in 0..<dv { oT[stripeIndex(r, c, columns: dv)] += values[kk * dv + c] * weight }
        }
    }
    return UnsafePointer(clean)
}
