// The blockwise kernel's two register-blocked micro-kernels, both "rows in lanes" (see BlockwiseAttention.swift):
//
//   computeScores:     S^T[k, r] = sum_c K[k, c] * Q^T[c, r]       4 keys x 16 rows per step: 4 accumulators
//   accumulateValues:  O^T[c, r] += sum_k V[k, c] * P^T[k, r]      4 value columns x 16 rows: 4 accumulators
//
// Each step broadcasts 4 scalars from K or V (contiguous in their rows) against one 16-row vector: 4 vector
// multiply-adds for 1 vector load and 4 broadcasts. Sized for AVX2 (16 ymm registers, where a SIMD16<Float> is two
// of them): 8 ymm accumulators hide the 4-cycle FMA latency at 2 FMAs per cycle, and about 11 registers are live,
// so nothing spills. (A 16-accumulator AVX-512-shaped kernel spilled on every step when built for AVX2.) Rp, the row
// stride, is a multiple of 16, so rows never need a tail; keys and value columns that do not fill a group of 4 run
// one at a time.

/// S^T [keyCount, Rp] = K[tile] Q^T for every row. One 16-row stripe of Q^T (Dk x 16 floats) at a time, so that
/// it stays in L1 while every key of the tile streams past it.
@inline(__always)
func computeScores(
    qT: UnsafePointer<Float>, rowStride rp: Int, keys: UnsafePointer<Float>, keyCount: Int, depth dk: Int,
    scores: UnsafeMutablePointer<Float>
) {
    var rb = 0
    while rb < rp {
        let q = qT + rb
        let out = scores + rb
        var kk = 0
        while kk + 6 <= keyCount {
            scoreKernel6(q, rowStride: rp, keys: keys + kk * dk, depth: dk, out: out + kk * rp)
            kk += 6
        }
        if kk + 4 <= keyCount {
            scoreKernel4(q, rowStride: rp, keys: keys + kk * dk, depth: dk, out: out + kk * rp)
            kk += 4
        }
        while kk < keyCount {
            scoreKernel1(q, rowStride: rp, key: keys + kk * dk, depth: dk, out: out + kk * rp)
            kk += 1
        }
        rb += 16
    }
}

/// O^T [Dv, Rp] += V[tile]^T P^T for every row, one 16-row stripe of P^T (keyCount x 16 floats) at a time.
@inline(__always)
func accumulateValues(
    weights pT: UnsafePointer<Float>, rowStride rp: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueDimension dv: Int, oT: UnsafeMutablePointer<Float>
) {
    var rb = 0
    while rb < rp {
        let p = pT + rb
        let out = oT + rb
        var c = 0
        while c + 6 <= dv {
            valueKernel6(p, rowStride: rp, keyCount: keyCount, values: values + c, valueStride: dv, out: out + c * rp)
            c += 6
        }
        if c + 4 <= dv {
            valueKernel4(p, rowStride: rp, keyCount: keyCount, values: values + c, valueStride: dv, out: out + c * rp)
            c += 4
        }
        while c < dv {
            valueKernel1(p, rowStride: rp, keyCount: keyCount, values: values + c, valueStride: dv, out: out + c * rp)
            c += 1
        }
        rb += 16
    }
}

@inline(__always)
private func scoreKernel4(
    _ qT: UnsafePointer<Float>, rowStride rp: Int, keys: UnsafePointer<Float>, depth dk: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    let k0 = keys, k1 = keys + dk, k2 = keys + 2 * dk, k3 = keys + 3 * dk
    var q = qT
    for c in 0..<dk {
        let qc = load16(q, 0)
        a0 = multiplyAdd(SIMD16<Float>(repeating: k0[c]), qc, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: k1[c]), qc, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: k2[c]), qc, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: k3[c]), qc, a3)
        q += rp
    }
    store16(a0, out, 0)
    store16(a1, out, rp)
    store16(a2, out, 2 * rp)
    store16(a3, out, 3 * rp)
}

@inline(__always)
private func scoreKernel1(
    _ qT: UnsafePointer<Float>, rowStride rp: Int, key: UnsafePointer<Float>, depth dk: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>()
    var q = qT
    for c in 0..<dk {
        a0 = multiplyAdd(SIMD16<Float>(repeating: key[c]), load16(q, 0), a0)
        q += rp
    }
    store16(a0, out, 0)
}

@inline(__always)
private func valueKernel4(
    _ pT: UnsafePointer<Float>, rowStride rp: Int, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, rp), a2 = load16(out, 2 * rp), a3 = load16(out, 3 * rp)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let pk = load16(p, 0)
        a0 = multiplyAdd(SIMD16<Float>(repeating: v[0]), pk, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: v[1]), pk, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: v[2]), pk, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: v[3]), pk, a3)
        p += rp
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, rp)
    store16(a2, out, 2 * rp)
    store16(a3, out, 3 * rp)
}

@inline(__always)
private func valueKernel1(
    _ pT: UnsafePointer<Float>, rowStride rp: Int, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        a0 = multiplyAdd(SIMD16<Float>(repeating: v[0]), load16(p, 0), a0)
        p += rp
        v += dv
    }
    store16(a0, out, 0)
}

@inline(__always)
private func scoreKernel6(
    _ qT: UnsafePointer<Float>, rowStride rp: Int, keys: UnsafePointer<Float>, depth dk: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>()
    var a3 = SIMD16<Float>(), a4 = SIMD16<Float>(), a5 = SIMD16<Float>()
    let k0 = keys, k1 = keys + dk, k2 = keys + 2 * dk, k3 = keys + 3 * dk, k4 = keys + 4 * dk, k5 = keys + 5 * dk
    var q = qT
    for c in 0..<dk {
        let qc = load16(q, 0)
        a0 = multiplyAdd(SIMD16<Float>(repeating: k0[c]), qc, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: k1[c]), qc, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: k2[c]), qc, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: k3[c]), qc, a3)
        a4 = multiplyAdd(SIMD16<Float>(repeating: k4[c]), qc, a4)
        a5 = multiplyAdd(SIMD16<Float>(repeating: k5[c]), qc, a5)
        q += rp
    }
    store16(a0, out, 0)
    store16(a1, out, rp)
    store16(a2, out, 2 * rp)
    store16(a3, out, 3 * rp)
    store16(a4, out, 4 * rp)
    store16(a5, out, 5 * rp)
}

@inline(__always)
private func valueKernel6(
    _ pT: UnsafePointer<Float>, rowStride rp: Int, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, rp), a2 = load16(out, 2 * rp)
    var a3 = load16(out, 3 * rp), a4 = load16(out, 4 * rp), a5 = load16(out, 5 * rp)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let pk = load16(p, 0)
        a0 = multiplyAdd(SIMD16<Float>(repeating: v[0]), pk, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: v[1]), pk, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: v[2]), pk, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: v[3]), pk, a3)
        a4 = multiplyAdd(SIMD16<Float>(repeating: v[4]), pk, a4)
        a5 = multiplyAdd(SIMD16<Float>(repeating: v[5]), pk, a5)
        p += rp
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, rp)
    store16(a2, out, 2 * rp)
    store16(a3, out, 3 * rp)
    store16(a4, out, 4 * rp)
    store16(a5, out, 5 * rp)
}
