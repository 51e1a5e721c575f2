// The blockwise kernel's two register-blocked micro-kernels, both "rows in lanes" (see BlockwiseAttention.swift):
//
//   computeScores:     S^T[k, r] = sum_c K[k, c] * Q^T[c, r]
//   accumulateValues:  O^T[c, r] += sum_k V[k, c] * P^T[k, r]
//
// Each step broadcasts scalars from K (or V, contiguous in their rows) against 16-row vectors of Q^T (or P^T).
// The register blocking is chosen for the build target (`MicroKernelShape.target`), because the accumulators
// must cover FMA latency x FMA pipes within the register file:
//
//   narrow (AVX2, SSE2, arm64 NEON): 6 keys (value columns) x 16 rows per step, 6 SIMD16 accumulators. On AVX2 a
//     SIMD16 is two ymm registers: 12 accumulator chains hide the 4-cycle latency at 2 FMAs per cycle, and 15 of
//     the 16 registers are live, so nothing spills (a 16-accumulator kernel spilled on every step there).
//   wide (AVX-512): 8 keys (value columns) x 32 rows (two stripes) per step, 16 zmm accumulators of 32 registers:
//     >= 8 chains are needed on a core with two 512-bit FMA pipes (Intel Xeon: `fma_peak` gives 127.5 GFLOP/s
//     with 6 accumulators, 168 with 8), and each broadcast now feeds two multiply-adds, so a step needs 10 loads
//     for 16 FMAs instead of 7 for 6. Zen 4 (one 512-bit FMA per cycle) needs only 4 chains and loses nothing.
//
// The shape never changes a result: every score is the same chain of multiply-adds over c in order, every output
// the same chain over k, so both shapes give identical bits (tested). Leftovers run 4, then 1, at a time; a
// 16-row stripe without a partner and value columns past the last group of 8 run the narrow kernels. Matrices are
// stripe-major (see `stripeIndex`): one 16-row stripe is a contiguous [columns, 16] block, and Rp is a multiple
// of 16, so rows never need a tail.
//
// The score kernel's key steps also prefetch the next tile (key rows during the first stripe, value rows during the
// second; both during the first pair of stripes for the wide shape, which does twice the work per step), for long
// sequences whose K and V no longer stay in L2 between query blocks. Causal, d = 64, N = 16384,
// one thread, alternating with the kernel before (2026-12-01): 98.5 / 94.3, 92.0 / 89.9 and 90.6 / 75.4 GFLOP/s;
// hinting key and value rows together in the first stripe took 2-thread GQA 32/8 at N = 2048 down 7%, split over
// two stripes it is even.

import AttentionPlatform

/// The register blocking of the prefill micro-kernels (see the top of this file).
package enum MicroKernelShape: Sendable, Hashable {
    /// 6 keys (or value columns) x 16 rows: 6 SIMD16 accumulators, for 16 vector registers.
    case narrow
    /// 8 keys (or value columns) x 32 rows: 16 SIMD16 accumulators, for 32 512-bit registers.
    case wide

    /// The shape for the build target: wide when it has AVX-512 (a constant the compiler folds).
    package static var target: MicroKernelShape {
        swift_attention_target_has_avx512() != 0 ? .wide : .narrow
    }

    /// Independent SIMD16 accumulator chains per step.
    package var accumulators: Int { self == .wide ? 16 : 6 }

    /// A short description for build reports, e.g. "6 keys x 16 rows (6 accumulators)".
    package var summary: String {
        self == .wide
            ? "8 keys x 32 rows (16 SIMD16 accumulators, for 32 registers)"
            : "6 keys x 16 rows (6 SIMD16 accumulators, for 16 registers)"
    }
}

/// S^T [keyCount, Rp] = K[tile] Q^T for every row. One 16-row stripe of Q^T (Dk x 16 floats) at a time (two
/// for the wide shape), so that it stays in L1 while every key of the tile streams past it. With `next`, the key
/// steps also prefetch the next tile's rows of the same keys: key rows during the first stripe, value rows during
/// the second (both during the first pair for the wide shape; the rest at the end, if the next tile is longer).
@inline(__always)
func computeScores(
    qT: UnsafePointer<Float>, rowCount rp: Int, keys: UnsafePointer<Float>, keyCount: Int, depth dk: Int,
    scores: UnsafeMutablePointer<Float>, prefetch next: TilePrefetch? = nil, shape: MicroKernelShape = .target
) {
    var rb = 0
    if shape == .wide {
        while rb + 32 <= rp {
            let ahead = rb == 0 ? next : nil
            let (q0, q1) = (qT + rb * dk, qT + (rb + 16) * dk)
            let (out0, out1) = (scores + rb * keyCount, scores + (rb + 16) * keyCount)
            var kk = 0
            while kk + 8 <= keyCount {
                ahead?.prefetchKeyRows(kk..<(kk + 8))
                ahead?.prefetchValueRows(kk..<(kk + 8))
                scoreKernel8x32(q0, q1, keys: keys + kk * dk, depth: dk, out0: out0 + kk * 16, out1: out1 + kk * 16)
                kk += 8
            }
            if kk < keyCount {
                ahead?.prefetchKeyRows(kk..<keyCount)
                ahead?.prefetchValueRows(kk..<keyCount)
                scoreColumns(q0, keys: keys, keys: kk..<keyCount, depth: dk, out: out0)
                scoreColumns(q1, keys: keys, keys: kk..<keyCount, depth: dk, out: out1)
            }
            ahead?.prefetchKeyRows(from: keyCount)
            ahead?.prefetchValueRows(from: keyCount)
            rb += 32
        }
    }
    while rb < rp {
        let q = qT + rb * dk
        let out = scores + rb * keyCount
        // The first stripe's steps hint key rows, the second's (or the first's, with one stripe) value rows; a
        // stripe left after the wide shape's pairs hints nothing (the pairs did).
        let keysAhead = rb == 0 ? next : nil
        let valuesAhead = rb == (rp > 16 ? 16 : 0) ? next : nil
        var kk = 0
        while kk + 6 <= keyCount {
            keysAhead?.prefetchKeyRows(kk..<(kk + 6))
            valuesAhead?.prefetchValueRows(kk..<(kk + 6))
            scoreKernel6(q, keys: keys + kk * dk, depth: dk, out: out + kk * 16)
            kk += 6
        }
        keysAhead?.prefetchKeyRows(kk..<keyCount)
        valuesAhead?.prefetchValueRows(kk..<keyCount)
        scoreColumns(q, keys: keys, keys: kk..<keyCount, depth: dk, out: out)
        keysAhead?.prefetchKeyRows(from: keyCount)
        valuesAhead?.prefetchValueRows(from: keyCount)
        rb += 16
    }
}

/// The scores of keys `range` (fewer than a main step) for one stripe: 4, then 1 at a time.
@inline(__always)
private func scoreColumns(
    _ q: UnsafePointer<Float>, keys: UnsafePointer<Float>, keys range: Range<Int>, depth dk: Int,
    out: UnsafeMutablePointer<Float>
) {
    var kk = range.lowerBound
    if kk + 4 <= range.upperBound {
        scoreKernel4(q, keys: keys + kk * dk, depth: dk, out: out + kk * 16)
        kk += 4
    }
    while kk < range.upperBound {
        scoreKernel1(q, key: keys + kk * dk, depth: dk, out: out + kk * 16)
        kk += 1
    }
}

/// O^T [Dv, Rp] += V[tile]^T P^T for every row, one 16-row stripe of P^T (keyCount x 16 floats) at a time (two
/// for the wide shape).
@inline(__always)
func accumulateValues(
    weights pT: UnsafePointer<Float>, rowCount rp: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueDimension dv: Int, oT: UnsafeMutablePointer<Float>, shape: MicroKernelShape = .target
) {
    var rb = 0
    if shape == .wide {
        while rb + 32 <= rp {
            let (p0, p1) = (pT + rb * keyCount, pT + (rb + 16) * keyCount)
            let (out0, out1) = (oT + rb * dv, oT + (rb + 16) * dv)
            var c = 0
            while c + 8 <= dv {
                valueKernel8x32(
                    p0, p1, keyCount: keyCount, values: values + c, valueStride: dv, out0: out0 + c * 16,
                    out1: out1 + c * 16)
                c += 8
            }
            valueColumns(p0, keyCount: keyCount, values: values, columns: c..<dv, out: out0)
            valueColumns(p1, keyCount: keyCount, values: values, columns: c..<dv, out: out1)
            rb += 32
        }
    }
    while rb < rp {
        valueColumns(pT + rb * keyCount, keyCount: keyCount, values: values, columns: 0..<dv, out: oT + rb * dv)
        rb += 16
    }
}

/// Value columns `columns` of one stripe (the value row stride is `columns.upperBound` = Dv): groups of 6 while
/// what is left after them can still be taken 4 at a time (128 = 20 x 6 + 2 x 4; a one-column kernel has too few
/// accumulators to hide the FMA latency), then 4, then 1.
@inline(__always)
private func valueColumns(
    _ p: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, columns: Range<Int>,
    out: UnsafeMutablePointer<Float>
) {
    let dv = columns.upperBound
    var c = columns.lowerBound
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

/// The wide shape's score step: 8 keys against two 16-row stripes of Q^T, 16 accumulators; each broadcast key
/// element feeds two multiply-adds.
@inline(__always)
private func scoreKernel8x32(
    _ q0: UnsafePointer<Float>, _ q1: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int,
    out0: UnsafeMutablePointer<Float>, out1: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var a4 = SIMD16<Float>(), a5 = SIMD16<Float>(), a6 = SIMD16<Float>(), a7 = SIMD16<Float>()
    var b0 = SIMD16<Float>(), b1 = SIMD16<Float>(), b2 = SIMD16<Float>(), b3 = SIMD16<Float>()
    var b4 = SIMD16<Float>(), b5 = SIMD16<Float>(), b6 = SIMD16<Float>(), b7 = SIMD16<Float>()
    let k0 = keys, k1 = keys + dk, k2 = keys + 2 * dk, k3 = keys + 3 * dk
    let k4 = keys + 4 * dk, k5 = keys + 5 * dk, k6 = keys + 6 * dk, k7 = keys + 7 * dk
    var (x, y) = (q0, q1)
    for c in 0..<dk {
        let (qa, qb) = (load16(x, 0), load16(y, 0))
        var k = SIMD16<Float>(repeating: k0[c])
        a0 = multiplyAdd(k, qa, a0)
        b0 = multiplyAdd(k, qb, b0)
        k = SIMD16<Float>(repeating: k1[c])
        a1 = multiplyAdd(k, qa, a1)
        b1 = multiplyAdd(k, qb, b1)
        k = SIMD16<Float>(repeating: k2[c])
        a2 = multiplyAdd(k, qa, a2)
        b2 = multiplyAdd(k, qb, b2)
        k = SIMD16<Float>(repeating: k3[c])
        a3 = multiplyAdd(k, qa, a3)
        b3 = multiplyAdd(k, qb, b3)
        k = SIMD16<Float>(repeating: k4[c])
        a4 = multiplyAdd(k, qa, a4)
        b4 = multiplyAdd(k, qb, b4)
        k = SIMD16<Float>(repeating: k5[c])
        a5 = multiplyAdd(k, qa, a5)
        b5 = multiplyAdd(k, qb, b5)
        k = SIMD16<Float>(repeating: k6[c])
        a6 = multiplyAdd(k, qa, a6)
        b6 = multiplyAdd(k, qb, b6)
        k = SIMD16<Float>(repeating: k7[c])
        a7 = multiplyAdd(k, qa, a7)
        b7 = multiplyAdd(k, qb, b7)
        x += 16
        y += 16
    }
    store8Vectors((a0, a1, a2, a3, a4, a5, a6, a7), out0)
    store8Vectors((b0, b1, b2, b3, b4, b5, b6, b7), out1)
}

/// The wide shape's value step: 8 value columns for two 16-row stripes of P^T, 16 accumulators; each broadcast
/// value feeds two multiply-adds.
@inline(__always)
private func valueKernel8x32(
    _ p0: UnsafePointer<Float>, _ p1: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>,
    valueStride dv: Int, out0: UnsafeMutablePointer<Float>, out1: UnsafeMutablePointer<Float>
) {
    var (a0, a1, a2, a3, a4, a5, a6, a7) = load8Vectors(out0)
    var (b0, b1, b2, b3, b4, b5, b6, b7) = load8Vectors(out1)
    var (x, y) = (p0, p1)
    var v = values
    for _ in 0..<keyCount {
        let (pa, pb) = (load16(x, 0), load16(y, 0))
        var w = SIMD16<Float>(repeating: v[0])
        a0 = multiplyAdd(w, pa, a0)
        b0 = multiplyAdd(w, pb, b0)
        w = SIMD16<Float>(repeating: v[1])
        a1 = multiplyAdd(w, pa, a1)
        b1 = multiplyAdd(w, pb, b1)
        w = SIMD16<Float>(repeating: v[2])
        a2 = multiplyAdd(w, pa, a2)
        b2 = multiplyAdd(w, pb, b2)
        w = SIMD16<Float>(repeating: v[3])
        a3 = multiplyAdd(w, pa, a3)
        b3 = multiplyAdd(w, pb, b3)
        w = SIMD16<Float>(repeating: v[4])
        a4 = multiplyAdd(w, pa, a4)
        b4 = multiplyAdd(w, pb, b4)
        w = SIMD16<Float>(repeating: v[5])
        a5 = multiplyAdd(w, pa, a5)
        b5 = multiplyAdd(w, pb, b5)
        w = SIMD16<Float>(repeating: v[6])
        a6 = multiplyAdd(w, pa, a6)
        b6 = multiplyAdd(w, pb, b6)
        w = SIMD16<Float>(repeating: v[7])
        a7 = multiplyAdd(w, pa, a7)
        b7 = multiplyAdd(w, pb, b7)
        x += 16
        y += 16
        v += dv
    }
    store8Vectors((a0, a1, a2, a3, a4, a5, a6, a7), out0)
    store8Vectors((b0, b1, b2, b3, b4, b5, b6, b7), out1)
}

private typealias Vectors8 = (
    SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>,
    SIMD16<Float>
)

/// Eight consecutive 16-float vectors at `p`.
@inline(__always)
private func load8Vectors(_ p: UnsafePointer<Float>) -> Vectors8 {
    (
        load16(p, 0), load16(p, 16), load16(p, 32), load16(p, 48), load16(p, 64), load16(p, 80), load16(p, 96),
        load16(p, 112)
    )
}

/// Stores eight vectors consecutively at `p`.
@inline(__always)
private func store8Vectors(_ v: Vectors8, _ p: UnsafeMutablePointer<Float>) {
    store16(v.0, p, 0)
    store16(v.1, p, 16)
    store16(v.2, p, 32)
    store16(v.3, p, 48)
    store16(v.4, p, 64)
    store16(v.5, p, 80)
    store16(v.6, p, 96)
    store16(v.7, p, 112)
}
