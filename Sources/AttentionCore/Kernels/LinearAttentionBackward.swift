// LinearAttentionBackward: the gradients of `linearAttention` (non-causal and causal, with decay, normalized or
// not) with respect to its queries, keys and values, in O(N) memory: no Nq x Nk matrix, only the running states.
//
// With a_i = phi(q_i), c_j = phi(k_j), weights w_ij (1, or lambda^(i - j) for j <= i when causal) and
//   num_i = sum_j w_ij (a_i . c_j) v_j,   den_i = sum_j w_ij (a_i . c_j),   o_i = num_i / den_i (or num_i),
// the loss gradient dO gives g_i = dL/dnum_i = dO_i / den_i and t_i = dL/dden_i = -(dO_i . o_i) / den_i (g_i = dO_i
// and t_i = 0 without normalization; both 0 for a row whose denominator is 0, which outputs zeros). Then, with
// e_ij = w_ij (g_i . v_j + t_i) the gradient of the pair's score a_i . c_j,
//   da_i = sum_j e_ij c_j = S_i g_i + z_i t_i          S_i = sum_j w_ij c_j v_j^T, z_i = sum_j w_ij c_j
//   dc_j = sum_i e_ij a_i = R_j v_j + r_j              R_j = sum_i w_ij a_i g_i^T, r_j = sum_i w_ij a_i t_i
//   dv_j = sum_i w_ij (a_i . c_j) g_i = R_j^T c_j
// so one forward pass over the tokens keeps (S, z) as the forward does (S_i = lambda S_(i-1) + c_i v_i^T when
// causal) and one backward pass keeps (R, r) (R_j = lambda R_(j+1) + a_j g_j^T); then dq = J_phi(q)^T da and
// dk = J_phi(k)^T dc. This is the recurrent form, token by token; the forward's chunkwise matrix form is not
// mirrored (the passes cost O(N d_phi Dv) multiply-adds each, like the forward, at a lower rate).
//
// Ownership: one work item per (batch entry, key/value head) owns dK and dV of that head and dQ of its query
// heads, taken in order: bitwise identical for every thread count. A custom feature map has no derivative here and
// is refused by name; the decay is a constant (no gradient is returned for it).

/// The gradients of one `linearAttention` call (see `linearAttentionGradients`).
public struct LinearAttentionGradients: Sendable {
    /// dL/dQ, the queries' shape.
    public var queries: Tensor
    /// dL/dK, the keys' shape: summed over the query heads that read each key/value head.
    public var keys: Tensor
    /// dL/dV, the values' shape, summed likewise.
    public var values: Tensor
}

/// The gradients of linear attention with respect to its queries, keys and values, given the loss gradient with
/// respect to its output, for the call ``linearAttention(queries:keys:values:options:)`` from the zero state.
///
/// ```swift
/// let options = LinearAttentionOptions(featureMap: .eluPlusOne, causal: true)
/// let output = try linearAttention(queries: q, keys: k, values: v, options: options)
/// let grads = try linearAttentionGradients(
///     queries: q, keys: k, values: v, outputGradient: lossGradient(output), options: options)
/// ```
///
/// - Parameters: those of the forward call, and `outputGradient` [batch, queryHeads, Nq, Dv].
/// - Returns: the gradients (see the file's legend for the formulas). Bitwise identical for every thread count.
/// - Throws: what `linearAttention` throws for the inputs and options, `.invalidValue` naming `options.featureMap`
///   for a custom map, and a shape mismatch naming `outputGradient`.
/// - Complexity: O(B * Hq * (Nq + Nk) * d_phi * Dv) time; O(d_phi * Dv + (Nq + Nk) * (d_phi + Dv)) scratch per
///   worker.
public func linearAttentionGradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor,
    options: LinearAttentionOptions = LinearAttentionOptions()
) throws -> LinearAttentionGradients {
    let (shapes, dPhi) = try validateLinearAttention(queries: queries, keys: keys, values: values, options: options)
    if case .custom = options.featureMap {
        throw AttentionError.invalidValue(
            argument: "options.featureMap",
            expected: ".identity, .eluPlusOne, .relu or .taylor2 (maps with a known derivative)",
            actual: ".custom")
    }
    let outputShape = [shapes.batch, shapes.queryHeads, shapes.queryLength, shapes.valueDimension]
    guard outputGradient.shape == outputShape else {
        throw AttentionError.shapeMismatch(
            argument: "outputGradient", expected: "\(outputShape)", actual: outputGradient.shape,
            reason: "the gradient of the loss with respect to the output has the output's shape")
    }
    let pass = LinearBackwardPass(shapes: shapes, options: options, featureDimension: dPhi)
    var dQ = [Float](repeating: 0, count: queries.scalars.count)
    var dK = [Float](repeating: 0, count: keys.scalars.count)
    var dV = [Float](repeating: 0, count: values.scalars.count)
    let items = shapes.batch * shapes.keyValueHeads
    let workers = Parallel.workerCount(items: items, threads: shapes.threads)
    var scratch = [Float](repeating: 0, count: Swift.max(1, workers * pass.scratchFloats))
    queries.withUnsafeBufferPointer { q in
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                outputGradient.withUnsafeBufferPointer { dO in
                    dQ.withUnsafeMutableBufferPointer { dq in
                        dK.withUnsafeMutableBufferPointer { dk in
                            dV.withUnsafeMutableBufferPointer { dv in
                                scratch.withUnsafeMutableBufferPointer { work in
                                    guard let q = q.baseAddress, let k = k.baseAddress, let v = v.baseAddress,
                                        let dO = dO.baseAddress
                                    else { return }
                                    // Disjoint writes: item i writes its key/value head's dK and dV rows, its query
                                    // heads' dQ rows and its worker's scratch.
                                    let shared = UncheckedSendable(
                                        (
                                            q, k, v, dO, dq.baseAddress!, dk.baseAddress!, dv.baseAddress!,
                                            work.baseAddress!
                                        ))
                                    Parallel.forEach(items: items, threads: shapes.threads) { worker, item in
                                        let (q, k, v, dO, dq, dk, dv, work) = shared.value
                                        pass.run(
                                            item: item, q: q, k: k, v: v, dO: dO, dQ: dq, dK: dk, dV: dv,
                                            scratch: work + worker * pass.scratchFloats)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    return LinearAttentionGradients(
        queries: Tensor(uncheckedShape: queries.shape, scalars: dQ),
        keys: Tensor(uncheckedShape: keys.shape, scalars: dK),
        values: Tensor(uncheckedShape: values.shape, scalars: dV))
}

/// One backward call's sizes and options (see the file's legend).
private struct LinearBackwardPass {
    let shapes: AttentionProblem
    let options: LinearAttentionOptions
    let featureDimension: Int

    /// Floats of a padded state row: Dv values, then z (or t), zeros up to a multiple of 16.
    var rowWidth: Int { (shapes.valueDimension + 1 + 15) / 16 * 16 }

    /// Per worker: phi of the item's keys [Nk, d_phi], their gradient [Nk, d_phi], the values as padded rows
    /// (v_j, 1) [Nk, W], phi of one head's queries and its gradient [Nq, d_phi] each, (g_i, t_i) [Nq, W], the state
    /// [d_phi, W] (S and z, then R and r), and one row of max(Dk, W) for the chain rule and dv_j.
    var scratchFloats: Int {
        let (nq, nk, dk) = (shapes.queryLength, shapes.keyLength, shapes.keyDimension)
        let (p, w) = (featureDimension, rowWidth)
        return 2 * nk * p + nk * w + 2 * nq * p + nq * w + p * w + Swift.max(dk, w)
    }

    func run(
        item: Int, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        dO: UnsafePointer<Float>, dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>,
        dV: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        let s = shapes
        let (nq, nk, dk, dv, p) = (s.queryLength, s.keyLength, s.keyDimension, s.valueDimension, featureDimension)
        let (b, g) = (item / s.keyValueHeads, item % s.keyValueHeads)
        let w = rowWidth
        let c = scratch  // [nk, p]
        let dc = c + nk * p  // [nk, p], summed over the group's heads
        let values = dc + nk * p  // [nk, w]: (v_j, 1, 0...)
        let a = values + nk * w  // [nq, p]
        let da = a + nq * p  // [nq, p]
        let gt = da + nq * p  // [nq, w]: (g_i, t_i, 0...)
        let state = gt + nq * w  // [p, w]
        let row = state + p * w  // [max(dk, w)]
        let kvBase = (b * s.keyValueHeads + g) * nk
        for j in 0..<nk {
            options.featureMap.apply(k + (kvBase + j) * dk, count: dk, into: c + j * p)
            let target = values + j * w
            target.update(repeating: 0, count: w)
            target.update(from: v + (kvBase + j) * dv, count: dv)
            target[dv] = 1
        }
        dc.update(repeating: 0, count: nk * p)
        gt.update(repeating: 0, count: nq * w)
        for h in (g * s.groupSize)..<((g + 1) * s.groupSize) {
            let qBase = (b * s.queryHeads + h) * nq
            let lambda = options.decay?[h] ?? 1
            for i in 0..<nq { options.featureMap.apply(q + (qBase + i) * dk, count: dk, into: a + i * p) }
            // Pass 1: (S, z) over the keys (all of them first when not causal), then each query's g, t and da.
            state.update(repeating: 0, count: p * w)
            if !options.isCausal {
                for j in 0..<nk { addOuter(c + j * p, values + j * w, into: state, rows: p, width: w) }
            }
            for i in 0..<nq {
                if options.isCausal {
                    scaleRows(state, count: p * w, by: lambda)
                    addOuter(c + i * p, values + i * w, into: state, rows: p, width: w)
                }
                let target = gt + i * w
                let gradient = dO + (qBase + i) * dv
                if options.normalize {
                    // (num, den) = a^T (S, z), then g = dO / den and t = -(dO . o) / den.
                    combineRows(state, weights: a + i * p, rows: p, width: w, into: target)
                    let den = target[dv]
                    if den == 0 {
                        target.update(repeating: 0, count: w)
                    } else {
                        var dot: Float = 0
                        for e in 0..<dv { dot += gradient[e] * (target[e] / den) }
                        for e in 0..<dv { target[e] = gradient[e] / den }
                        target[dv] = -dot / den
                    }
                } else {
                    target.update(from: gradient, count: dv)
                    target[dv] = 0
                }
                // da_i = S g + z t: each state row dotted with (g, t).
                dotRows(state, with: target, rows: p, width: w, into: da + i * p, adding: false)
            }
            // Pass 2: (R, r) over the queries (all of them first when not causal), then each key's dc and dv.
            state.update(repeating: 0, count: p * w)
            if !options.isCausal {
                for i in 0..<nq { addOuter(a + i * p, gt + i * w, into: state, rows: p, width: w) }
            }
            for j in stride(from: nk - 1, through: 0, by: -1) {
                if options.isCausal {
                    scaleRows(state, count: p * w, by: lambda)
                    addOuter(a + j * p, gt + j * w, into: state, rows: p, width: w)
                }
                // dc_j += R v_j + r (the padded value row ends in 1); dv_j += R^T c_j.
                dotRows(state, with: values + j * w, rows: p, width: w, into: dc + j * p, adding: true)
                combineRows(
                    state, weights: c + j * p, rows: p, width: w, into: row, adding: dv, to: dV + (kvBase + j) * dv)
            }
            for i in 0..<nq {
                chainRule(q + (qBase + i) * dk, gradient: da + i * p, into: row)
                (dQ + (qBase + i) * dk).update(from: row, count: dk)
            }
        }
        for j in 0..<nk {
            chainRule(k + (kvBase + j) * dk, gradient: dc + j * p, into: row)
            (dK + (kvBase + j) * dk).update(from: row, count: dk)
        }
    }

    /// x^T dphi for phi at the row `x`: J_phi(x)^T applied to the feature gradient, into `out` [Dk].
    func chainRule(_ x: UnsafePointer<Float>, gradient: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let d = shapes.keyDimension
        switch options.featureMap {
        case .identity:
            for m in 0..<d { out[m] = gradient[m] }
        case .relu:
            for m in 0..<d { out[m] = x[m] > 0 ? gradient[m] : 0 }
        case .eluPlusOne:
            // The forward's e^x for x <= 0 (flushed to 0 where it would be subnormal), its derivative as well.
            var c = 0
            while c < d {
                var lanes = SIMD16<Float>()
                for lane in 0..<Swift.min(16, d - c) { lanes[lane] = x[c + lane] }
                let slope = vectorExp(lanes)
                for lane in 0..<Swift.min(16, d - c) {
                    out[c + lane] = x[c + lane] > 0 ? gradient[c + lane] : gradient[c + lane] * slope[lane]
                }
                c += 16
            }
        case .taylor2:
            // phi = [1, x, vec(x x^T) / sqrt 2]: dx_m = dphi[1 + m] + sum_n (dphi[1 + d + m d + n] +
            // dphi[1 + d + n d + m]) x_n / sqrt 2.
            let half = Float(0.5).squareRoot()
            for m in 0..<d {
                var sum: Float = 0
                for n in 0..<d { sum += (gradient[1 + d + m * d + n] + gradient[1 + d + n * d + m]) * x[n] }
                out[m] = gradient[1 + m] + sum * half
            }
        case .custom:
            preconditionFailure("refused by linearAttentionGradients")
        }
    }
}

/// state[f, 0..<width] += x[f] * y[0..<width] for f < rows (width a multiple of 16).
private func addOuter(
    _ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, into state: UnsafeMutablePointer<Float>, rows: Int,
    width: Int
) {
    for f in 0..<rows where x[f] != 0 {
        let xf = SIMD16<Float>(repeating: x[f])
        let target = state + f * width
        for e in stride(from: 0, to: width, by: 16) {
            store16(multiplyAdd(xf, load16(y, e), load16(UnsafePointer(target), e)), target, e)
        }
    }
}

/// out[0..<width] = sum over f < rows of weights[f] * state[f, 0..<width]; with `adding`, the first `adding` values
/// are then added to `to` instead.
private func combineRows(
    _ state: UnsafePointer<Float>, weights: UnsafePointer<Float>, rows: Int, width: Int,
    into out: UnsafeMutablePointer<Float>, adding count: Int = 0, to target: UnsafeMutablePointer<Float>? = nil
) {
    // Up to 64 columns at a time in registers, each a chain over the rows in order.
    typealias V = SIMD16<Float>
    var e = 0
    while e < width {
        let vectors = Swift.min(4, (width - e) / 16)
        var (a0, a1, a2, a3) = (V(), V(), V(), V())
        for f in 0..<rows {
            let x = V(repeating: weights[f])
            let source = state + f * width + e
            a0 = multiplyAdd(x, load16(source, 0), a0)
            if vectors > 1 { a1 = multiplyAdd(x, load16(source, 16), a1) }
            if vectors > 2 { a2 = multiplyAdd(x, load16(source, 32), a2) }
            if vectors > 3 { a3 = multiplyAdd(x, load16(source, 48), a3) }
        }
        store16(a0, out, e)
        if vectors > 1 { store16(a1, out, e + 16) }
        if vectors > 2 { store16(a2, out, e + 32) }
        if vectors > 3 { store16(a3, out, e + 48) }
        e += 16 * vectors
    }
    if let target { for e in 0..<count { target[e] += out[e] } }
}

/// out[f] (+)= state[f, 0..<width] . y[0..<width] for f < rows.
private func dotRows(
    _ state: UnsafePointer<Float>, with y: UnsafePointer<Float>, rows: Int, width: Int,
    into out: UnsafeMutablePointer<Float>, adding: Bool
) {
    // Four rows at a time (four independent chains), each summed across its lanes by halves.
    typealias V = SIMD16<Float>
    @inline(__always) func total(_ v: V) -> Float {
        let eight = v.lowHalf + v.highHalf
        let four = eight.lowHalf + eight.highHalf
        let two = four.lowHalf + four.highHalf
        return two[0] + two[1]
    }
    var f = 0
    while f < rows {
        let count = Swift.min(4, rows - f)
        var (s0, s1, s2, s3) = (V(), V(), V(), V())
        let source = state + f * width
        for e in stride(from: 0, to: width, by: 16) {
            let ye = load16(y, e)
            s0 = multiplyAdd(load16(source, e), ye, s0)
            if count > 1 { s1 = multiplyAdd(load16(source + width, e), ye, s1) }
            if count > 2 { s2 = multiplyAdd(load16(source + 2 * width, e), ye, s2) }
            if count > 3 { s3 = multiplyAdd(load16(source + 3 * width, e), ye, s3) }
        }
        let sums = SIMD4<Float>(total(s0), total(s1), total(s2), total(s3))
        for r in 0..<count { out[f + r] = adding ? out[f + r] + sums[r] : sums[r] }
        f += count
    }
}

private func scaleRows(_ state: UnsafeMutablePointer<Float>, count: Int, by lambda: Float) {
    if lambda == 1 { return }
    let l = SIMD16<Float>(repeating: lambda)
    for e in stride(from: 0, to: count, by: 16) { store16(load16(UnsafePointer(state), e) * l, state, e) }
}
