// The blockwise kernel's two register-blocked micro-kernels, both "rows in lanes" (see BlockwiseAttention.swift):
//
//   computeScores:     S^T[k, r] = sum_c K[k, c] * Q^T[c, r]       6 keys x 16 rows per step
//   accumulateValues:  O^T[c, r] += sum_k V[k, c] * P^T[k, r]      6 value columns x 16 rows per step
//
// The main kernels take 6 keys (or 6 value columns) at a time, broadcasting 6 scalars from K or V (contiguous in
// their rows) against one 16-row vector: 6 vector multiply-adds per vector load. Sized for AVX2 (16 ymm registers;
// a SIMD16<Float> is two of them): 12 ymm accumulators hide the 4-cycle FMA latency at 2 FMAs per cycle and 15
// registers are live, so nothing spills. (A 16-accumulator kernel shaped for AVX-512 spilled on every step when
// built for AVX2.) Built for AVX-512 each SIMD16 is one zmm register of 32, and the same kernels run the blockwise
// kernel at 82-86% of the FMA peak on one Zen 4 core (N = 4096, d = 64 and 128, 2026-12-01). Leftovers run 4, then
// 1, at a time. Matrices are stripe-major (see `stripeIndex`): one 16-row stripe is a contiguous [columns, 16]
// block, and Rp is a multiple of 16, so rows never need a tail.
//
// The score kernel's key steps also prefetch the next tile (key rows during the first stripe, value rows during the
// second), for long sequences whose K and V no longer stay in L2 between query blocks. Causal, d = 64, N = 16384,
// one thread, alternating with the kernel before (2026-12-01): 98.5 / 94.3, 92.0 / 89.9 and 90.6 / 75.4 GFLOP/s;
// hinting key and value rows together in the first stripe took 2-thread GQA 32/8 at N = 2048 down 7%, split over
// two stripes it is even. At N = 4096 (bench blockwise suite, three alternating runs on one and on two threads)
// the differences stayed within the machine's noise.

/// S^T [keyCount, Rp] = K[tile] Q^T for every row. One 16-row stripe of Q^T (Dk x 16 floats) at a time, so that
/// it stays in L1 while every key of the tile streams past it. With `next`, the key steps also prefetch the next
/// tile's rows of the same keys: key rows during the first stripe, value rows during the second (the rest at the
/// end, if the next tile is longer).
@inline(__always)
func computeScores(
    qT: UnsafePointer<Float>, rowCount rp: Int, keys: UnsafePointer<Float>, keyCount: Int, depth dk: Int,
    scores: UnsafeMutablePointer<Float>, prefetch next: TilePrefetch? = nil
) {
    var rb = 0
    while rb < rp {
        let q = qT + rb * dk
        let out = scores + rb * keyCount
        // The first stripe's steps hint key rows, the second's (or the first's, with one stripe) value rows.
        let keysAhead = rb == 0 ? next : nil
        let valuesAhead = rb == (rp > 16 ? 16 : 0) ? next : nil
        var kk = 0
        while kk + 6 <= keyCount {
            keysAhead?.prefetchKeyRows(kk..<(kk + 6))
            valuesAhead?.prefetchValueRows(kk..<(kk + 6))
            scoreKernel6(q, keys: keys + kk * dk, depth: dk, out: out + kk * 16)
            kk += 6
        }
        if kk + 4 <= keyCount {
            keysAhead?.prefetchKeyRows(kk..<(kk + 4))
            valuesAhead?.prefetchValueRows(kk..<(kk + 4))
            scoreKernel4(q, keys: keys + kk * dk, depth: dk, out: out + kk * 16)
            kk += 4
        }
        while kk < keyCount {
            keysAhead?.prefetchKeyRows(kk..<(kk + 1))
            valuesAhead?.prefetchValueRows(kk..<(kk + 1))
            scoreKernel1(q, key: keys + kk * dk, depth: dk, out: out + kk * 16)
            kk += 1
        }
        keysAhead?.prefetchKeyRows(from: keyCount)
        valuesAhead?.prefetchValueRows(from: keyCount)
        rb += 16
    }
}

/// O^T [Dv, Rp] += V[tile]^T P^T for every row, one 16-row stripe of P^T (keyCount x 16 floats) at a time.
@inline(__always)
func accumulateValues(
    weights pT: UnsafePointer<Float>, rowCount rp: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueDimension dv: Int, oT: UnsafeMutablePointer<Float>
) {
    var rb = 0
    while rb < rp {
        let p = pT + rb * keyCount
        let out = oT + rb * dv
        var c = 0
        // Groups of 6 while what is left after them can still be taken 4 at a time (128 = 20 x 6 + 2 x 4): a
        // one-column kernel has too few accumulators to hide the FMA latency.
        while c + 6 <= dv && (dv - c == 6 || dv - c - 6 >= 4) {
            valueKernel6(p, keyCount: keyCount, values: values + c, valueStride: dv, out: out + c * 16)
            c += 6
        }
        while c + 4 <= dv {
            valueKernel4(p, keyCount: keyCount, values: values + c, valueStride: dv, out: out + c * 16)
            c += 4
        }
        while c < dv {
            valueKernel1(p, keyCount: keyCount, values: values + c, valueStride: dv, out: out + c * 16)
            c += 1
        }
        rb += 16
    }
}

@inline(__always)
private func scoreKernel4(
    _ qT: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int,
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
        q += 16
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
    store16(a2, out, 32)
    store16(a3, out, 48)
}

@inline(__always)
private func scoreKernel1(
    _ qT: UnsafePointer<Float>, key: UnsafePointer<Float>, depth dk: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>()
    var q = qT
    for c in 0..<dk {
        a0 = multiplyAdd(SIMD16<Float>(repeating: key[c]), load16(q, 0), a0)
        q += 16
    }
    store16(a0, out, 0)
}

@inline(__always)
private func valueKernel4(
    _ pT: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, 16), a2 = load16(out, 32), a3 = load16(out, 48)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let pk = load16(p, 0)
        a0 = multiplyAdd(SIMD16<Float>(repeating: v[0]), pk, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: v[1]), pk, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: v[2]), pk, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: v[3]), pk, a3)
        p += 16
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
    store16(a2, out, 32)
    store16(a3, out, 48)
}

@inline(__always)
private func valueKernel1(
    _ pT: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0)
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        a0 = multiplyAdd(SIMD16<Float>(repeating: v[0]), load16(p, 0), a0)
        p += 16
        v += dv
    }
    store16(a0, out, 0)
}

@inline(__always)
private func scoreKernel6(
    _ qT: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int,
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
        q += 16
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
    store16(a2, out, 32)
    store16(a3, out, 48)
    store16(a4, out, 64)
    store16(a5, out, 80)
}

@inline(__always)
private func valueKernel6(
    _ pT: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueStride dv: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = load16(out, 0), a1 = load16(out, 16), a2 = load16(out, 32)
    var a3 = load16(out, 48), a4 = load16(out, 64), a5 = load16(out, 80)
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
        p += 16
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
    store16(a2, out, 32)
    store16(a3, out, 48)
    store16(a4, out, 64)
    store16(a5, out, 80)
}
