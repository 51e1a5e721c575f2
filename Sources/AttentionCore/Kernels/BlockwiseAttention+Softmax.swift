// The blockwise kernel's per-tile steps after the scores: score options (softcap, ALiBi, bias), masking of
// partial tiles, the online softmax update, and the quarantine of value rows holding NaN or infinity; plus the
// visible-key spans of a work item's rows (`GroupSpans`) that masking and the tile walk's coverage read.
//
// Numerics: masked scores become -inf *after* they are computed (so NaN in a masked key is discarded); the row
// maximum used for exponentials is replaced by 0 while a row has seen no key, so exp2(-inf - -inf) never happens;
// a value row holding NaN or infinity reaches exactly the rows that see its key (even with a weight that underflowed
// to 0, as in the Float64 reference) and never a row for which the key is masked or scored -inf.
//
// Legend as in BlockwiseAttention.swift: S^T scores stripe-major [Bc, Rp], m running maximum (half base 2), l
// denominator, P = exp2(2 (S - m)) weights, O unnormalized output.

extension WorkItemContext {
    /// Softcap, ALiBi and bias on one tile of scores (stripe-major, row r = head * Br + row). Scores leave in half
    /// base 2.
    /// Softcap and ALiBi run 16 rows at a time (padding rows included; their results are never read); the bias is
    /// gathered row by row from its [Nq, Nk] (or [1, Nk]) planes.
    func applyScoreOptions(
        _ sT: UnsafeMutablePointer<Float>, batch b: Int, keyValueHead kvHead: Int, i0: Int, rows: Int,
        tile: Range<Int>, _ tables: Scratch
    ) {
        let p = problem
        let rp = tiling.paddedRows(groupSize: p.groupSize)
        let (alibiSlopes, alibiDiagonals) = (tables.alibiSlopes, tables.alibiDiagonals)
        let (g, br, nk, columns) = (p.groupSize, tiling.queryBlock, p.keyLength, tile.count)
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
            // Broadcast over size-1 batch, head and query axes. A -inf entry removes its key outright: the score
            // becomes -inf whatever it was, so a NaN or infinite key behind it never reaches the row (NaN + -inf
            // would be NaN).
            let (bb, planeRows) = (bias.shape[0] == 1 ? 0 : b, bias.shape[2])
            for head in 0..<g {
                let bh = bias.shape[1] == 1 ? 0 : kvHead * g + head
                let plane = base + (bb * bias.shape[1] + bh) * planeRows * nk
                for row in 0..<rows {
                    let biasRow = plane + (planeRows == 1 ? 0 : i0 + row) * nk
                    for (kk, j) in tile.enumerated() {
                        let index = stripeIndex(head * br + row, kk, columns: columns)
                        let added = biasRow[j]
                        sT[index] = added == -.infinity ? -.infinity : sT[index] + added * logitScale
                    }
                }
            }
        }
    }

    /// Sets masked scores of a partial tile to -inf, head by head (a head's mask depends on positions only).
    /// Walks each row's visible spans clipped to the tile, so a structured mask costs one store per masked score;
    /// a `custom` predicate is consulted only inside the spans.
    func applyMask(
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
    func updateSoftmax(_ sT: UnsafeMutablePointer<Float>, keyCount: Int, _ s: State, markMasked: Bool) {
        let (m, l) = (s.m, s.l)
        let rp = tiling.paddedRows(groupSize: problem.groupSize)
        if rp == 16 && layout.computedRows <= 4 && !markMasked {
            return updateSoftmaxFourRows(sT, keyCount: keyCount, s)
        }
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
            if horizontalMin(alpha) != 1 { layout.rescale(s.o, stripe: rv, by: alpha) }
            rv += 16
        }
    }

    /// `updateSoftmax` for a work item of at most four rows (one decode token of a group of up to four query heads):
    /// only lanes 0..<4 of each key's 16-lane S^T row are read, four keys to a vector, so the exponentials cost a
    /// quarter of the full stripe's. The weights are the same numbers; l sums each row's weights in four interleaved
    /// partial sums (keys j mod 4), then adds them. Lanes 4..<16 of m and l keep their start values, and their
    /// weights are not written (the few-rows kernels never read them).
    @inline(__always)
    private func updateSoftmaxFourRows(_ sT: UnsafeMutablePointer<Float>, keyCount: Int, _ s: State) {
        let keys4 = keyCount / 4 * 4
        let negativeInfinity = SIMD16<Float>(repeating: -.infinity)
        var tileMax = negativeInfinity
        var kk = 0
        while kk < keys4 {
            tileMax = vectorMax(tileMax, fourKeys(sT + kk * 16))
            kk += 4
        }
        var max4 = quarterMax(tileMax)
        while kk < keyCount {
            let score = load4(sT + kk * 16)
            max4 = max4.replacing(with: score, where: max4 .< score)
            kk += 1
        }
        let oldMax = load4(s.m)
        let newMax = oldMax.replacing(with: max4, where: oldMax .< max4)
        // A row that has seen no key keeps m = -inf; exponentiate against 0 instead (as in `updateSoftmax`).
        let shift4 = newMax.replacing(with: 0, where: newMax .== -.infinity)
        let shift = SIMD16(
            lowHalf: SIMD8(lowHalf: shift4, highHalf: shift4), highHalf: SIMD8(lowHalf: shift4, highHalf: shift4))
        let alpha = vectorExp2OfNonPositive(
            SIMD16(lowHalf: SIMD8(lowHalf: (oldMax - shift4) * exponentScale, highHalf: .zero), highHalf: .zero))
        var sum = SIMD16<Float>()
        kk = 0
        while kk < keys4 {
            let stripe = sT + kk * 16
            let weights = vectorExp2OfNonPositive((fourKeys(stripe) - shift) * exponentScale)
            for j in 0..<4 { store4(quarter(weights, j), stripe + 16 * j) }
            sum += weights
            kk += 4
        }
        var sum4 = (quarter(sum, 0) + quarter(sum, 1)) + (quarter(sum, 2) + quarter(sum, 3))
        while kk < keyCount {
            let score = SIMD16(lowHalf: SIMD8(lowHalf: load4(sT + kk * 16), highHalf: .zero), highHalf: .zero)
            let weight = quarter(vectorExp2OfNonPositive((score - shift) * exponentScale), 0)
            store4(weight, sT + kk * 16)
            sum4 += weight
            kk += 1
        }
        let sums = SIMD16(lowHalf: SIMD8(lowHalf: sum4, highHalf: .zero), highHalf: .zero)
        store16(multiplyAdd(load16(s.l, 0), alpha, sums), s.l, 0)
        store4(newMax, s.m)
        // Lanes 4..<16 of `alpha` are 2^0 = 1: only the item's rows can need a rescale.
        if horizontalMin(alpha) != 1 { layout.rescale(s.o, stripe: 0, by: alpha) }
    }

    /// Value rows with NaN or infinity. A key that is masked for a row (or has a -inf score there) must not bring
    /// 0 * NaN into that row, while a key the row sees must propagate its NaN even if its weight underflowed to 0, as
    /// the reference does. The bad rows are zeroed in a copy (`clean`, which the fast kernel then uses) and added
    /// here to every row whose weight is not the -0.0 "masked" marker. Returns the values pointer the fast kernel
    /// should use.
    func quarantineNonFiniteValues(
        _ values: UnsafePointer<Float>, keyCount: Int, rowStride: Int, weights pT: UnsafePointer<Float>,
        output o: UnsafeMutablePointer<Float>, clean: UnsafeMutablePointer<Float>
    ) -> (values: UnsafePointer<Float>, rowStride: Int) {
        let dv = problem.valueDimension
        let rowCount = layout.computedRows
        var poisoned: [Int] = []
        for kk in 0..<keyCount {
            let row = values + kk * rowStride
            var bad = false
            for c in 0..<dv where !row[c].isFinite { bad = true }
            if bad { poisoned.append(kk) }
        }
        if poisoned.isEmpty { return (values, rowStride) }
        for kk in 0..<keyCount { (clean + kk * dv).update(from: values + kk * rowStride, count: dv) }
        for kk in poisoned {
            (clean + kk * dv).update(repeating: 0, count: dv)
            for r in 0..<rowCount {
                let weight = pT[stripeIndex(r, kk, columns: keyCount)]
                if weight == 0 && weight.sign == .minus { continue }
                let (start, step) = layout.outputRow(r)
                for c in 0..<dv { o[start + c * step] += values[kk * rowStride + c] * weight }
            }
        }
        return (UnsafePointer(clean), dv)
    }
}

/// The visible key spans of one work item's rows: shared by the group's heads, or one per head when the call has
/// per-head masks (``AttentionOptions/headMasks``, each intersected with the call's mask).
struct GroupSpans {
    let perHead: [MaskRowSpans]
    let masks: [AttentionMask]
    let groupSize: Int
    /// The smallest key range holding every visible key of every head's rows.
    let keyHull: Range<Int>

    /// The spans of rows `queries` of batch entry `batch` (whose key and query padding, if any, apply to every
    /// head).
    init(problem p: AttentionProblem, batch: Int, keyValueHead kvHead: Int, queries: Range<Int>) {
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
            MaskRowSpans(
                mask: $0, queries: queries, queryLength: p.queryLength, keyLength: p.keyLength,
                keyRuns: p.keyRuns?[batch], queryRuns: p.queryRuns?[batch])
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

/// Sets the scores of keys outside each row's (at most two) visible ranges to -inf, 16 rows at a time: two compares
/// per range and a blend per key, instead of a scalar store per masked score. `bounds` as written by
/// `GroupSpans.writeBounds`.
@inline(__always)
func applyMaskBounds(
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

/// Whether `rows` rows of `columns` floats (`rowStride` apart) are all finite: their sum is NaN or infinite
/// whenever some value is. (A sum of finite values that overflows also reports "not finite"; the quarantine path
/// it then takes is exact, only slower.)
@inline(__always)
func allFinite(_ values: UnsafePointer<Float>, rows: Int, columns: Int, rowStride: Int) -> Bool {
    if rowStride == columns { return streamingSum(values, count: rows * columns).isFinite }
    for row in 0..<rows where !streamingSum(values + row * rowStride, count: columns).isFinite { return false }
    return true
}

/// Lanes 0..<4 of the 16-lane S^T rows of four consecutive keys at `keyRows` (16 floats apart): lanes 4 j ..< 4 j + 4
/// of the result are key j's.
@inline(__always)
private func fourKeys(_ keyRows: UnsafePointer<Float>) -> SIMD16<Float> {
    SIMD16(
        lowHalf: SIMD8(lowHalf: load4(keyRows), highHalf: load4(keyRows + 16)),
        highHalf: SIMD8(lowHalf: load4(keyRows + 32), highHalf: load4(keyRows + 48)))
}

/// The lane-wise maximum of the four quarters of `v` (NaN lanes ignored, as in `vectorMax`).
@inline(__always)
private func quarterMax(_ v: SIMD16<Float>) -> SIMD4<Float> {
    let h = v.lowHalf.replacing(with: v.highHalf, where: v.lowHalf .< v.highHalf)
    return h.lowHalf.replacing(with: h.highHalf, where: h.lowHalf .< h.highHalf)
}
