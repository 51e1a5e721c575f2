// The decode micro-kernels: the blockwise kernel's `.rows` layout, for work items with few query rows
// (R = G * Br <= 16, e.g. one new token of the G query heads sharing a key/value head).
//
//   computeScoresFewRows:    S^T[k, r] = Q[r, :] . K[k, :]            4 rows x 1 key, or 1 row x 4 keys, per step
//   accumulateValuesFewRows: O[r, :] += sum_k P^T[k, r] * V[k, :]     4 rows x 16 value columns per step
//
// The prefill kernels put query rows in the 16 vector lanes; with R = 4 rows three quarters of every multiply-add
// would be padding. These kernels vectorize along the head dimension instead, so their work is proportional to R
// and each key and value row is read from memory once per work item, however many rows share it. Scores and
// weights keep the 16-lane stripe layout (lane r = row r), so masking and the online softmax are the same code for
// both layouts. With AVX2's 16 registers: four SIMD16 accumulators (8 ymm) plus the key or value vector.

/// S^T [keyCount, 16] for query rows 0..<rowCount (row-major [rowCount, Dk] at `queries`); lanes rowCount..<16 are
/// set to 0.
@inline(__always)
func computeScoresFewRows(
    queries q: UnsafePointer<Float>, rowCount: Int, keys: UnsafePointer<Float>, keyCount: Int, depth dk: Int,
    scores: UnsafeMutablePointer<Float>
) {
    scores.update(repeating: 0, count: keyCount * 16)
    let fullRows = rowCount / 4 * 4
    if fullRows > 0 {
        for kk in 0..<keyCount {
            let key = keys + kk * dk
            var r = 0
            while r < fullRows {
                let sums = dotProducts(
                    q + r * dk, q + (r + 1) * dk, q + (r + 2) * dk, q + (r + 3) * dk, key, key, key, key, depth: dk)
                for i in 0..<4 { scores[kk * 16 + r + i] = sums[i] }
                r += 4
            }
        }
    }
    // Rows left over (all of them when R < 4): one row against four keys at a time.
    for r in fullRows..<rowCount {
        let row = q + r * dk
        var kk = 0
        while kk + 4 <= keyCount {
            let key = keys + kk * dk
            let sums = dotProducts(row, row, row, row, key, key + dk, key + 2 * dk, key + 3 * dk, depth: dk)
            for i in 0..<4 { scores[(kk + i) * 16 + r] = sums[i] }
            kk += 4
        }
        while kk < keyCount {
            scores[kk * 16 + r] = dotProduct(row, keys + kk * dk, count: dk)
            kk += 1
        }
    }
}

/// Four dot products x_i . y_i of `depth` floats: four query rows against one key (the y_i equal, so the key is
/// loaded once per chunk), or one query row against four keys.
@inline(__always)
private func dotProducts(
    _ x0: UnsafePointer<Float>, _ x1: UnsafePointer<Float>, _ x2: UnsafePointer<Float>, _ x3: UnsafePointer<Float>,
    _ y0: UnsafePointer<Float>, _ y1: UnsafePointer<Float>, _ y2: UnsafePointer<Float>, _ y3: UnsafePointer<Float>,
    depth dk: Int
) -> SIMD4<Float> {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var c = 0
    while c + 16 <= dk {
        a0 = multiplyAdd(load16(x0, c), load16(y0, c), a0)
        a1 = multiplyAdd(load16(x1, c), load16(y1, c), a1)
        a2 = multiplyAdd(load16(x2, c), load16(y2, c), a2)
        a3 = multiplyAdd(load16(x3, c), load16(y3, c), a3)
        c += 16
    }
    var tail = SIMD4<Float>()
    while c < dk {
        tail += SIMD4(x0[c] * y0[c], x1[c] * y1[c], x2[c] * y2[c], x3[c] * y3[c])
        c += 1
    }
    return horizontalSums(a0, a1, a2, a3) + tail
}

/// The lane sums of four vectors, reduced together: halving all four at once takes about half the shuffles of four
/// separate reductions (one add per halving of 16 to 8 lanes, then two rows per 8-lane register).
@inline(__always)
private func horizontalSums(
    _ a0: SIMD16<Float>, _ a1: SIMD16<Float>, _ a2: SIMD16<Float>, _ a3: SIMD16<Float>
) -> SIMD4<Float> {
    let (x0, x1, x2, x3) = (
        a0.lowHalf + a0.highHalf, a1.lowHalf + a1.highHalf, a2.lowHalf + a2.highHalf,
        a3.lowHalf + a3.highHalf
    )
    // [4 partial sums of x0 | 4 of x1] and [x2 | x3].
    let p01 = SIMD8(lowHalf: x0.lowHalf, highHalf: x1.lowHalf) + SIMD8(lowHalf: x0.highHalf, highHalf: x1.highHalf)
    let p23 = SIMD8(lowHalf: x2.lowHalf, highHalf: x3.lowHalf) + SIMD8(lowHalf: x2.highHalf, highHalf: x3.highHalf)
    // Pairwise within each 128-bit half: [x0, x0, x2, x2 | x1, x1, x3, x3].
    let e =
        SIMD8(p01[0], p01[2], p23[0], p23[2], p01[4], p01[6], p23[4], p23[6])
        + SIMD8(p01[1], p01[3], p23[1], p23[3], p01[5], p01[7], p23[5], p23[7])
    return SIMD4(e[0], e[4], e[2], e[6]) + SIMD4(e[1], e[5], e[3], e[7])
}

/// O [rowCount, Dv] (row-major at `output`) += V[tile]^T-weighted sums: row r adds sum_k W[k, r] * V[k, :], with
/// W[k, r] at `weights[k * weightStride + r]` (16 for a score stripe; linear attention passes other layouts).
@inline(__always)
func accumulateValuesFewRows(
    weights pT: UnsafePointer<Float>, weightStride ws: Int = 16, rowCount: Int, keyCount: Int,
    values: UnsafePointer<Float>, valueDimension dv: Int, output o: UnsafeMutablePointer<Float>
) {
    var r = 0
    while r + 4 <= rowCount {
        var c = 0
        while c + 16 <= dv {
            valueRows4(
                pT + r, weightStride: ws, keyCount: keyCount, values: values + c, valueStride: dv, out: o + r * dv + c)
            c += 16
        }
        valueColumnsTail(
            pT, weightStride: ws, rows: r..<(r + 4), keyCount: keyCount, values: values, columns: c..<dv, output: o)
        r += 4
    }
    while r < rowCount {
        var c = 0
        while c + 32 <= dv {
            valueRow1x32(
                pT + r, weightStride: ws, keyCount: keyCount, values: values + c, valueStride: dv, out: o + r * dv + c)
            c += 32
        }
        valueColumnsTail(
            pT, weightStride: ws, rows: r..<(r + 1), keyCount: keyCount, values: values, columns: c..<dv, output: o)
        r += 1
    }
}

/// Four rows x 16 value columns: out[i * dv ..< i * dv + 16] += sum_k pT[k * ws + i] * V[k, 0..<16].
@inline(__always)
private func valueRows4(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueStride dv: Int, out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, dv), a2 = load16(out, 2 * dv), a3 = load16(out, 3 * dv)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let vk = load16(v, 0)
        a0 = multiplyAdd(SIMD16<Float>(repeating: p[0]), vk, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: p[1]), vk, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: p[2]), vk, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: p[3]), vk, a3)
        p += ws
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, dv)
    store16(a2, out, 2 * dv)
    store16(a3, out, 3 * dv)
}

/// One row x 32 value columns (two accumulators, so consecutive keys do not wait on each other).
@inline(__always)
private func valueRow1x32(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueStride dv: Int, out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, 16)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let pk = SIMD16<Float>(repeating: p[0])
        a0 = multiplyAdd(pk, load16(v, 0), a0)
        a1 = multiplyAdd(pk, load16(v, 16), a1)
        p += ws
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
}

/// The columns that the vector kernels leave (Dv not a multiple of 16 or 32), one scalar at a time.
@inline(__always)
private func valueColumnsTail(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, rows: Range<Int>, keyCount: Int, values: UnsafePointer<Float>,
    columns: Range<Int>, output o: UnsafeMutablePointer<Float>
) {
    if columns.isEmpty { return }
    let dv = columns.upperBound
    for r in rows {
        for c in columns {
            var sum = o[r * dv + c]
            for kk in 0..<keyCount { sum += pT[kk * ws + r] * values[kk * dv + c] }
            o[r * dv + c] = sum
        }
    }
}
