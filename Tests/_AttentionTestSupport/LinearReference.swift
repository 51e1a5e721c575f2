// The linear-attention reference: the quadratic formula, one query row at a time.
//
//   o_i = sum_{visible j} w_ij (phi(q_i) . phi(k_j)) v_j  [+ w_i0 phi(q_i) S0]
//   d_i = sum_{visible j} w_ij (phi(q_i) . phi(k_j))      [+ w_i0 phi(q_i) . z0]
//   w_ij = lambda^(i - j) and visible j <= i (causal), or w = 1 and every j (non-causal); w_i0 = lambda^(i + 1)
//   (causal) or 1 for the initial state; normalized: o_i / d_i, or 0 when d_i = 0.
//
// Generic over the scalar like `referenceAttention`: Double for the reference, Float for the plain loop whose error
// sets the tolerance. The feature maps are evaluated in the scalar type too (custom maps run in Float).

import AttentionCore

/// The features of one row in `Scalar`.
public func referenceFeatures<Scalar: ReferenceScalar>(
    _: Scalar.Type, _ map: FeatureMap, _ row: [Float]
) -> [Scalar] {
    let x = row.map { Scalar($0) }
    switch map {
    case .identity: return x
    case .eluPlusOne: return x.map { $0 > 0 ? $0 + 1 : Scalar.exponential($0) }
    case .relu: return x.map { Swift.max($0, 0) }
    case .taylor2:
        let half = (Scalar(1) / 2).squareRoot()
        return [1] + x + x.flatMap { a in x.map { b in a * b * half } }
    case .custom(let outputDimension, let function):
        var output = [Float](repeating: 0, count: outputDimension)
        row.withUnsafeBufferPointer { input in output.withUnsafeMutableBufferPointer { function(input, $0) } }
        return output.map { Scalar($0) }
    }
}

/// Linear attention by the quadratic formula. Returns the output [B, Hq, Nq, Dv] row-major.
public func referenceLinearAttention<Scalar: ReferenceScalar>(
    _: Scalar.Type, queries: Tensor, keys: Tensor, values: Tensor, options: LinearAttentionOptions,
    initialState: LinearAttentionState? = nil
) -> [Scalar] {
    let (b, hq, nq, dk) = (queries.shape[0], queries.shape[1], queries.shape[2], queries.shape[3])
    let (hkv, nk, dv) = (keys.shape[1], keys.shape[2], values.shape[3])
    func row(_ t: Tensor, _ index: Int, _ width: Int) -> [Float] {
        Array(t.scalars[(index * width)..<((index + 1) * width)])
    }
    var output: [Scalar] = []
    output.reserveCapacity(b * hq * nq * dv)
    for batch in 0..<b {
        for head in 0..<hq {
            let kvHead = head / (hq / hkv)
            let lambda = Scalar(options.decay?[head] ?? 1)
            var powers = [Scalar](repeating: 1, count: Swift.max(nq, nk) + 2)
            for k in powers.indices.dropFirst() { powers[k] = powers[k - 1] * lambda }
            let phiK = (0..<nk).map {
                referenceFeatures(Scalar.self, options.featureMap, row(keys, (batch * hkv + kvHead) * nk + $0, dk))
            }
            for i in 0..<nq {
                let phiQ = referenceFeatures(
                    Scalar.self, options.featureMap, row(queries, (batch * hq + head) * nq + i, dk))
                var numerator = [Scalar](repeating: 0, count: dv)
                var denominator: Scalar = 0
                if let state = initialState {
                    let w = options.mask == .causal ? powers[i + 1] : 1
                    let dPhi = phiQ.count
                    let base = (batch * hq + head) * dPhi
                    for a in 0..<dPhi {
                        denominator += w * phiQ[a] * Scalar(state.keySum.scalars[base + a])
                        for c in 0..<dv {
                            numerator[c] += w * phiQ[a] * Scalar(state.keyValueSum.scalars[(base + a) * dv + c])
                        }
                    }
                }
                for j in 0..<nk where options.mask != .causal || j <= i {
                    let w = options.mask == .causal ? powers[i - j] : 1
                    var score: Scalar = 0
                    for a in 0..<phiQ.count { score += phiQ[a] * phiK[j][a] }
                    let v = row(values, (batch * hkv + kvHead) * nk + j, dv)
                    denominator += w * score
                    for c in 0..<dv { numerator[c] += w * score * Scalar(v[c]) }
                }
                if options.normalize {
                    output += numerator.map { denominator == 0 ? 0 : $0 / denominator }
                } else {
                    output += numerator
                }
            }
        }
    }
    return output
}

/// The tolerance check of a linear-attention output against the Float64 reference (2x the plain Float32 loop's
/// error + 8 ulp, as for softmax attention).
public func checkLinearOutput(
    _ output: Tensor, queries: Tensor, keys: Tensor, values: Tensor, options: LinearAttentionOptions,
    initialState: LinearAttentionState? = nil
) -> ToleranceCheck {
    toleranceCheck(
        kernel: output.scalars,
        reference: referenceLinearAttention(
            Double.self, queries: queries, keys: keys, values: values, options: options, initialState: initialState),
        plain: referenceLinearAttention(
            Float.self, queries: queries, keys: keys, values: values, options: options, initialState: initialState))
}
