// The blockwise kernel's two register-blocked micro-kernels, both "rows in lanes" (see BlockwiseAttention.swift):
//
//   computeScores:     S^T[k, r] = sum_c K[k, c] * Q^T[c, r]
//   accumulateValues:  O^T[c, r] += sum_k V[k, c] * P^T[k, r]
//
// Each step broadcasts scalars from K (or V, contiguous in their rows) against 16-row vectors of Q^T (or P^T).
// The register blocking is chosen for the build target (`MicroKernelShape.target`), because the accumulators
// must cover FMA latency x FMA pipes within the register file:
//
//   narrow (AVX2, SSE2, arm64 NEON, AMD Zen 4): 6 keys (value columns) x 16 rows per step, 6 SIMD16
//     accumulators. On AVX2 a SIMD16 is two ymm registers: 12 accumulator chains hide the 4-cycle latency at 2 FMAs
//     per cycle, and 15 of the 16 registers are live, so nothing spills (a 16-accumulator kernel spilled on every
//     step there).
//   wide (AVX-512 on Intel and AMD Zen 5): 4 keys (value columns) x 64 rows (four stripes) per step, 16 zmm
//     accumulators of 32 registers: >= 8 chains are needed on a core with two 512-bit FMA pipes (Intel Xeon:
//     `fma_peak` gives 127.5 GFLOP/s with 6 accumulators, 168 with 8), and each step needs only 4 broadcasts and 4
//     vector loads for 16 multiply-adds. llvm-mca 14 (-mcpu=icelake-server, two 512-bit FMA ports) on the compiled
//     loops: 8.1 cycles per 16 multiply-adds for both wide kernels (99% of the ports), against 8.1 per 12 (74%)
//     for the narrow ones built for the same target; an 8 x 32 blocking modelled at 82% (scores) and 88% (values).
//     Zen 5 has two 512-bit FMA pipes too: there the wide kernels ran 1.2-1.3x the narrow ones (2026-12-04, see
//     `swift_attention_target_prefers_wide_blocking`). AMD Zen 4 keeps the narrow shape even with AVX-512: one
//     512-bit FMA per cycle needs only 4 chains, the narrow kernels fold each broadcast into its multiply-add
//     (llvm-mca 19, -mcpu=znver4: 100% of the FMA rate) while the wide ones pay a separate floating-point uop per
//     broadcast (82%), and the narrow kernels ran the blockwise kernel at 82-86% of the FMA peak on a Zen 4 core
//     (N = 4096, d = 64 and 128, 2026-12-01).
//
// The shape never changes a result: every score is the same chain of multiply-adds over c in order, every output
// the same chain over k, so both shapes give identical bits (tested). Leftover keys run 4, then 1, at a time; the
// stripes past the last group of four, and value columns past the last group of 4, run the narrow kernels. The
// default tiles always give Rp = 64 (see `BlockwiseTiling.automatic`). Matrices are
// stripe-major (see `stripeIndex`): one 16-row stripe is a contiguous [columns, 16] block, and Rp is a multiple
// of 16, so rows never need a tail.
//
// The score kernel's key steps also prefetch the next tile (key rows during the first stripe, value rows during the
// second; both during the first four stripes for the wide shape, which does four times the work per step), for long
// sequences whose K and V no longer stay in L2 between query blocks. Causal, d = 64, N = 16384,
// one thread, alternating with the kernel before (2026-12-01): 98.5 / 94.3, 92.0 / 89.9 and 90.6 / 75.4 GFLOP/s;
// hinting key and value rows together in the first stripe took 2-thread GQA 32/8 at N = 2048 down 7%, split over
// two stripes it is even.

import AttentionPlatform

/// The register blocking of the prefill micro-kernels (see the top of this file).
package enum MicroKernelShape: Sendable, Hashable {
    /// 6 keys (or value columns) x 16 rows: 6 SIMD16 accumulators, for 16 vector registers.
    case narrow
    /// 4 keys (or value columns) x 64 rows: 16 SIMD16 accumulators, for 32 512-bit registers.
    case wide

    /// The shape for the build target: wide for AVX-512 targets other than AMD Zen 4 (a constant the
    /// compiler folds; see `swift_attention_target_prefers_wide_blocking` for the measurements).
    package static var target: MicroKernelShape {
        swift_attention_target_prefers_wide_blocking() != 0 ? .wide : .narrow
    }

    /// Independent SIMD16 accumulator chains per step.
    package var accumulators: Int { self == .wide ? 16 : 6 }

    /// A short description for build reports, e.g. "6 keys x 16 rows (6 accumulators)".
    package var summary: String {
        self == .wide
            ? "4 keys x 64 rows (16 SIMD16 accumulators, for 32 registers)"
            : "6 keys x 16 rows (6 SIMD16 accumulators, for 16 registers)"
    }
}

/// S^T [keyCount, Rp] = K[tile] Q^T for every row. One 16-row stripe of Q^T (Dk x 16 floats) at a time (four
/// for the wide shape), so that it stays in L1 while every key of the tile streams past it. With `next`, the key
/// steps also prefetch the next tile's rows of the same keys: key rows during the first stripe, value rows during
/// the second (both during the first four stripes for the wide shape; the rest at the end, if the next tile is
/// longer).
@inline(__always)
func computeScores(
    qT: UnsafePointer<Float>, rowCount rp: Int, keys: UnsafePointer<Float>, keyCount: Int, depth dk: Int,
    keyStride ks: Int? = nil, scores: UnsafeMutablePointer<Float>, prefetch next: TilePrefetch? = nil,
    shape: MicroKernelShape = .target
) {
    let ks = ks ?? dk
    var rb = 0
    if shape == .wide {
        while rb + 64 <= rp {
            let ahead = rb == 0 ? next : nil
            let q = qT + rb * dk
            let out = scores + rb * keyCount
            var kk = 0
            while kk + 4 <= keyCount {
                ahead?.prefetchKeyRows(kk..<(kk + 4))
                ahead?.prefetchValueRows(kk..<(kk + 4))
                scoreKernel4x64(
                    q, keys: keys + kk * ks, depth: dk, keyStride: ks, keyCount: keyCount, out: out + kk * 16)
                kk += 4
            }
            ahead?.prefetchKeyRows(kk..<keyCount)
            ahead?.prefetchValueRows(kk..<keyCount)
            for stripe in 0..<4 {
                scoreColumns(
                    q + stripe * 16 * dk, keys: keys, keys: kk..<keyCount, depth: dk, keyStride: ks,
                    out: out + stripe * 16 * keyCount)
            }
            ahead?.prefetchKeyRows(from: keyCount)
            ahead?.prefetchValueRows(from: keyCount)
            rb += 64
        }
    }
    while rb < rp {
        let q = qT + rb * dk
        let out = scores + rb * keyCount
        // The first stripe's steps hint key rows, the second's (or the first's, with one stripe) value rows; a
        // stripe left after the wide shape's groups of four hints nothing (the first group did).
        let keysAhead = rb == 0 ? next : nil
        let valuesAhead = rb == (rp > 16 ? 16 : 0) ? next : nil
        var kk = 0
        while kk + 6 <= keyCount {
            keysAhead?.prefetchKeyRows(kk..<(kk + 6))
            valuesAhead?.prefetchValueRows(kk..<(kk + 6))
            scoreKernel6(q, keys: keys + kk * ks, depth: dk, keyStride: ks, out: out + kk * 16)
            kk += 6
        }
        keysAhead?.prefetchKeyRows(kk..<keyCount)
        valuesAhead?.prefetchValueRows(kk..<keyCount)
        scoreColumns(q, keys: keys, keys: kk..<keyCount, depth: dk, keyStride: ks, out: out)
        keysAhead?.prefetchKeyRows(from: keyCount)
        valuesAhead?.prefetchValueRows(from: keyCount)
        rb += 16
    }
}

/// The scores of keys `range` (fewer than a main step) for one stripe: 4, then 1 at a time.
@inline(__always)
private func scoreColumns(
    _ q: UnsafePointer<Float>, keys: UnsafePointer<Float>, keys range: Range<Int>, depth dk: Int, keyStride ks: Int,
    out: UnsafeMutablePointer<Float>
) {
    var kk = range.lowerBound
    if kk + 4 <= range.upperBound {
        scoreKernel4(q, keys: keys + kk * ks, depth: dk, keyStride: ks, out: out + kk * 16)
        kk += 4
    }
    while kk < range.upperBound {
        scoreKernel1(q, key: keys + kk * ks, depth: dk, out: out + kk * 16)
        kk += 1
    }
}

/// O^T [Dv, Rp] += V[tile]^T P^T for every row, one 16-row stripe of P^T (keyCount x 16 floats) at a time (four
/// for the wide shape).
@inline(__always)
func accumulateValues(
    weights pT: UnsafePointer<Float>, rowCount rp: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueDimension dv: Int, valueStride vs: Int? = nil, oT: UnsafeMutablePointer<Float>,
    shape: MicroKernelShape = .target
) {
    let vs = vs ?? dv
    var rb = 0
    if shape == .wide {
        while rb + 64 <= rp {
            let p = pT + rb * keyCount
            let out = oT + rb * dv
            var c = 0
            while c + 4 <= dv {
                valueKernel4x64(
                    p, keyCount: keyCount, values: values + c, valueDimension: dv, valueStride: vs, out: out + c * 16)
                c += 4
            }
            for stripe in 0..<4 {
                valueColumns(
                    p + stripe * 16 * keyCount, keyCount: keyCount, values: values, valueStride: vs,
                    columns: c..<dv, out: out + stripe * 16 * dv)
            }
            rb += 64
        }
    }
    while rb < rp {
        valueColumns(
            pT + rb * keyCount, keyCount: keyCount, values: values, valueStride: vs, columns: 0..<dv,
            out: oT + rb * dv)
        rb += 16
    }
}

/// Value columns `columns` of one stripe (value rows `vs` floats apart, Dv = `columns.upperBound`): groups of 6 while
/// what is left after them can still be taken 4 at a time (128 = 20 x 6 + 2 x 4; a one-column kernel has too few
/// accumulators to hide the FMA latency), then 4, then 1.
@inline(__always)
private func valueColumns(
    _ p: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueStride vs: Int,
    columns: Range<Int>, out: UnsafeMutablePointer<Float>
) {
    let dv = columns.upperBound
    var c = columns.lowerBound
    while c + 6 <= dv && (dv - c == 6 || dv - c - 6 >= 4) {
        valueKernel6(p, keyCount: keyCount, values: values + c, valueStride: vs, out: out + c * 16)
        c += 6
    }
    while c + 4 <= dv {
        valueKernel4(p, keyCount: keyCount, values: values + c, valueStride: vs, out: out + c * 16)
        c += 4
    }
    while c < dv {
        valueKernel1(p, keyCount: keyCount, values: values + c, valueStride: vs, out: out + c * 16)
        c += 1
    }
}

@inline(__always)
private func scoreKernel4(
    _ qT: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int, keyStride ks: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    let k0 = keys, k1 = keys + ks, k2 = keys + 2 * ks, k3 = keys + 3 * ks
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
    _ qT: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int, keyStride ks: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>()
    var a3 = SIMD16<Float>(), a4 = SIMD16<Float>(), a5 = SIMD16<Float>()
    let k0 = keys, k1 = keys + ks, k2 = keys + 2 * ks, k3 = keys + 3 * ks, k4 = keys + 4 * ks, k5 = keys + 5 * ks
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

/// The wide shape's score step: 4 keys against four 16-row stripes of Q^T (64 rows), 16 accumulators; each
/// broadcast key element feeds four multiply-adds. Stripe s of Q^T starts 16 * Dk floats after stripe s - 1, and
/// its scores 16 * keyCount floats after those of stripe s - 1.
@inline(__always)
private func scoreKernel4x64(
    _ qT: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int, keyStride ks: Int, keyCount: Int,
    out: UnsafeMutablePointer<Float>
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var b0 = SIMD16<Float>(), b1 = SIMD16<Float>(), b2 = SIMD16<Float>(), b3 = SIMD16<Float>()
    var c0 = SIMD16<Float>(), c1 = SIMD16<Float>(), c2 = SIMD16<Float>(), c3 = SIMD16<Float>()
    var d0 = SIMD16<Float>(), d1 = SIMD16<Float>(), d2 = SIMD16<Float>(), d3 = SIMD16<Float>()
    let k0 = keys, k1 = keys + ks, k2 = keys + 2 * ks, k3 = keys + 3 * ks
    let stripe = 16 * dk
    var q = qT
    for c in 0..<dk {
        let (x0, x1, x2, x3) = (load16(q, 0), load16(q, stripe), load16(q, 2 * stripe), load16(q, 3 * stripe))
        var k = SIMD16<Float>(repeating: k0[c])
        a0 = multiplyAdd(k, x0, a0)
        b0 = multiplyAdd(k, x1, b0)
        c0 = multiplyAdd(k, x2, c0)
        d0 = multiplyAdd(k, x3, d0)
        k = SIMD16<Float>(repeating: k1[c])
        a1 = multiplyAdd(k, x0, a1)
        b1 = multiplyAdd(k, x1, b1)
        c1 = multiplyAdd(k, x2, c1)
        d1 = multiplyAdd(k, x3, d1)
        k = SIMD16<Float>(repeating: k2[c])
        a2 = multiplyAdd(k, x0, a2)
        b2 = multiplyAdd(k, x1, b2)
        c2 = multiplyAdd(k, x2, c2)
        d2 = multiplyAdd(k, x3, d2)
        k = SIMD16<Float>(repeating: k3[c])
        a3 = multiplyAdd(k, x0, a3)
        b3 = multiplyAdd(k, x1, b3)
        c3 = multiplyAdd(k, x2, c3)
        d3 = multiplyAdd(k, x3, d3)
        q += 16
    }
    let outStripe = 16 * keyCount
    storeRows4((a0, a1, a2, a3), out, 16)
    storeRows4((b0, b1, b2, b3), out + outStripe, 16)
    storeRows4((c0, c1, c2, c3), out + 2 * outStripe, 16)
    storeRows4((d0, d1, d2, d3), out + 3 * outStripe, 16)
}

/// The wide shape's value step: 4 value columns for four 16-row stripes of P^T (64 rows), 16 accumulators; each
/// broadcast value feeds four multiply-adds. Stripe s of P^T starts 16 * keyCount floats after stripe s - 1, and
/// its O^T 16 * Dv floats after that of stripe s - 1; value rows are `valueStride` floats apart.
@inline(__always)
private func valueKernel4x64(
    _ pT: UnsafePointer<Float>, keyCount: Int, values: UnsafePointer<Float>, valueDimension dv: Int,
    valueStride vs: Int, out: UnsafeMutablePointer<Float>
) {
    let outStripe = 16 * dv
    var (a0, a1, a2, a3) = loadRows4(out, 16)
    var (b0, b1, b2, b3) = loadRows4(out + outStripe, 16)
    var (c0, c1, c2, c3) = loadRows4(out + 2 * outStripe, 16)
    var (d0, d1, d2, d3) = loadRows4(out + 3 * outStripe, 16)
    let stripe = 16 * keyCount
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let (x0, x1, x2, x3) = (load16(p, 0), load16(p, stripe), load16(p, 2 * stripe), load16(p, 3 * stripe))
        var w = SIMD16<Float>(repeating: v[0])
        a0 = multiplyAdd(w, x0, a0)
        b0 = multiplyAdd(w, x1, b0)
        c0 = multiplyAdd(w, x2, c0)
        d0 = multiplyAdd(w, x3, d0)
        w = SIMD16<Float>(repeating: v[1])
        a1 = multiplyAdd(w, x0, a1)
        b1 = multiplyAdd(w, x1, b1)
        c1 = multiplyAdd(w, x2, c1)
        d1 = multiplyAdd(w, x3, d1)
        w = SIMD16<Float>(repeating: v[2])
        a2 = multiplyAdd(w, x0, a2)
        b2 = multiplyAdd(w, x1, b2)
        c2 = multiplyAdd(w, x2, c2)
        d2 = multiplyAdd(w, x3, d2)
        w = SIMD16<Float>(repeating: v[3])
        a3 = multiplyAdd(w, x0, a3)
        b3 = multiplyAdd(w, x1, b3)
        c3 = multiplyAdd(w, x2, c3)
        d3 = multiplyAdd(w, x3, d3)
        p += 16
        v += vs
    }
    storeRows4((a0, a1, a2, a3), out, 16)
    storeRows4((b0, b1, b2, b3), out + outStripe, 16)
    storeRows4((c0, c1, c2, c3), out + 2 * outStripe, 16)
    storeRows4((d0, d1, d2, d3), out + 3 * outStripe, 16)
}
