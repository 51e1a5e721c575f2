// The decode micro-kernels: the blockwise kernel's `.rows` layout, for work items with few query rows
// (R = G * Br <= 16, e.g. one new token of the G query heads sharing a key/value head).
//
//   computeScoresFewRows:    S^T[k, r] = Q[r, :] . K[k, :]            4 rows x 1 key per step
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
    for kk in 0..<keyCount {
        let key = keys + kk * dk
        let out = scores + kk * 16
        var r = 0
        while r + 4 <= rowCount {
            dotProducts4(q + r * dk, key: key, depth: dk, out: out + r)
            r += 4
        }
        while r < rowCount {
            out[r] = dotProduct(q + r * dk, key, count: dk)
            r += 1
        }
    }
}

/// out[0..<4] = the dot products of four consecutive query rows with one key.
@inline(__always)
private func dotProducts4(
    _ q: UnsafePointer<Float>, key: UnsafePointer<Float>, depth dk: Int, out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    let q0 = q, q1 = q + dk, q2 = q + 2 * dk, q3 = q + 3 * dk
    var c = 0
    while c + 16 <= dk {
        let k = load16(key, c)
        a0 = multiplyAdd(load16(q0, c), k, a0)
        a1 = multiplyAdd(load16(q1, c), k, a1)
        a2 = multiplyAdd(load16(q2, c), k, a2)
        a3 = multiplyAdd(load16(q3, c), k, a3)
        c += 16
    }
    var (t0, t1, t2, t3): (Float, Float, Float, Float) = (0, 0, 0, 0)
    while c < dk {
        let k = key[c]
        t0 += q0[c] * k
        t1 += q1[c] * k
        t2 += q2[c] * k
        t3 += q3[c] * k
        c += 1
    }
    out[0] = horizontalSum(a0) + t0
    out[1] = horizontalSum(a1) + t1
    out[2] = horizontalSum(a2) + t2
    out[3] = horizontalSum(a3) + t3
}

/// O [rowCount, Dv] (row-major at `output`) += V[tile]^T-weighted sums: row r adds sum_k P^T[k, r] * V[k, :].
@inline(__always)
func accumulateValuesFewRows(
    weights pT: UnsafePointer<Float>, rowCount: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueDimension dv: Int, output o: UnsafeMutablePointer<Float>
) {
    var r = 0
    while r + 4 <= rowCount {
        var c = 0
        while c + 16 <= dv {
            valueRows4(pT + r, keyCount: keyCount, values: values + c, valueStride: dv, out: o + r * dv + c)
            c += 16
        }
        valueColumnsTail(pT, rows: r..<(r + 4), keyCount: keyCount, values: values, columns: c..<dv, output: o)
        r += 4
    }
    while r < rowCount {
        var c = 0
        while c + 32 <= dv {
            valueRow1x32(pT + r, keyCount: keyCount, values: values + c, valueStride: dv, out: o + r * dv + c)
            c += 32
        }
        valueColumnsTail(pT, rows: r..<(r + 1), keyCount: keyCount, values: values, columns: c..<dv, output: o)
        r += 1
    }
}

/// Four rows x 16 value columns: out[i * dv ..< i * dv + 16] += sum_k pT[k * 16 + i] * V[k, 0..<16].
@inline(__always)
private func valueRows4(
    _ pT: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
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
        p += 16
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
    _ pT: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, 16)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let pk = SIMD16<Float>(repeating: p[0])
        a0 = multiplyAdd(pk, load16(v, 0), a0)
        a1 = multiplyAdd(pk, load16(v, 16), a1)
        p += 16
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
}

/// The columns that the vector kernels leave (Dv not a multiple of 16 or 32), one scalar at a time.
@inline(__always)
private func valueColumnsTail(
    _ pT: UnsafePointer<Float>, rows: Range<Int>, keyCount: Int, values: UnsafePointer<Float>, columns: Range<Int>,
    output o: UnsafeMutablePointer<Float>
) {
    if columns.isEmpty { return }
    let dv = columns.upperBound
    for r in rows {
        for c in columns {
            var sum = o[r * dv + c]
            for kk in 0..<keyCount { sum += pT[kk * 16 + r] * values[kk * dv + c] }
            o[r * dv + c] = sum
        }
    }
}
