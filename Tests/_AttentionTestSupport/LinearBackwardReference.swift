// The reference for linear attention's gradients: the forward written as its textbook double sum over (query, key)
// pairs and its gradients from the product rule, pair by pair, in any precision (Float64 is the spec, Float32 the
// tolerance rule's plain comparator). It shares nothing with the kernel: the feature maps and their derivatives are
// written out here from their definitions, the weights are lambda^(i - j) by `pow`, and there are no states. It is
// itself checked against central finite differences of its own forward (LinearBackwardTests).
//
//   s_ij = phi(q_i) . phi(k_j),  num_i = sum_j w_ij s_ij v_j,  den_i = sum_j w_ij s_ij,  o_i = num_i / den_i
//   g_i = dO_i / den_i,  t_i = -(dO_i . o_i) / den_i   (g_i = dO_i, t_i = 0 unnormalized; 0 where den_i = 0)
//   dL/ds_ij = w_ij (g_i . v_j + t_i),  dv_j += w_ij s_ij g_i,  dphi(q_i) += dL/ds_ij phi(k_j), and alike for k_j.

import AttentionCore
import Foundation

/// Inputs of the linear reference: those of the softmax reference backward (its sink logits and bias unused).
public typealias LinearReferenceInputs<Scalar: ReferenceScalar> = BackwardReferenceInputs<Scalar>

/// phi(x) by its definition (FeatureMap's documentation), without the kernel's flush of tiny e^x.
public func textbookFeatures<Scalar: ReferenceScalar>(_ x: [Scalar], _ map: FeatureMap) -> [Scalar] {
    switch map {
    case .identity: return x
    case .relu: return x.map { Swift.max($0, 0) }
    case .eluPlusOne: return x.map { $0 > 0 ? $0 + 1 : Scalar.exponential($0) }
    case .taylor2:
        var out: [Scalar] = [1] + x
        for a in x { for b in x { out.append(a * b / Scalar(2).squareRoot()) } }
        return out
    case .custom: preconditionFailure("the reference has no derivative for a custom map")
    }
}

/// J_phi(x)^T applied to `gradient` (d_phi values): the chain rule through the map, from its definition.
public func textbookFeatureGradient<Scalar: ReferenceScalar>(
    _ x: [Scalar], _ gradient: [Scalar], _ map: FeatureMap
) -> [Scalar] {
    let d = x.count
    switch map {
    case .identity: return gradient
    case .relu: return (0..<d).map { x[$0] > 0 ? gradient[$0] : 0 }
    case .eluPlusOne: return (0..<d).map { x[$0] > 0 ? gradient[$0] : gradient[$0] * Scalar.exponential(x[$0]) }
    case .taylor2:
        // d(x_a x_b / sqrt 2) / dx_m = (delta_am x_b + x_a delta_bm) / sqrt 2.
        return (0..<d).map { m in
            var sum = gradient[1 + m]
            for n in 0..<d {
                sum += (gradient[1 + d + m * d + n] + gradient[1 + d + n * d + m]) * x[n] / Scalar(2).squareRoot()
            }
            return sum
        }
    case .custom: preconditionFailure("the reference has no derivative for a custom map")
    }
}

/// The reference forward output and the gradients (queries, keys, values), row-major in the inputs' shapes.
public func referenceLinearBackward<Scalar: ReferenceScalar>(
    _ x: LinearReferenceInputs<Scalar>, options: LinearAttentionOptions
) -> (queries: [Scalar], keys: [Scalar], values: [Scalar], output: [Scalar]) {
    let (nq, nk, dk, dv) = (x.queryLength, x.keyLength, x.keyDimension, x.valueDimension)
    let group = x.queryHeads / x.keyValueHeads
    var (dQ, dK, dV) = (
        [Scalar](repeating: 0, count: x.queries.count), [Scalar](repeating: 0, count: x.keys.count),
        [Scalar](repeating: 0, count: x.values.count)
    )
    var output = [Scalar](repeating: 0, count: x.outputGradient.count)
    func row(_ array: [Scalar], _ index: Int, _ width: Int) -> [Scalar] {
        Array(array[(index * width)..<((index + 1) * width)])
    }
    for b in 0..<x.batch {
        for h in 0..<x.queryHeads {
            let g = h / group
            let lambda = Scalar(options.decay?[h] ?? 1)
            let keyRows = (0..<nk).map { row(x.keys, (b * x.keyValueHeads + g) * nk + $0, dk) }
            let features = keyRows.map { textbookFeatures($0, options.featureMap) }
            var keyFeatureGradients = features.map { [Scalar](repeating: 0, count: $0.count) }
            for i in 0..<nq {
                let queryIndex = (b * x.queryHeads + h) * nq + i
                let a = textbookFeatures(row(x.queries, queryIndex, dk), options.featureMap)
                let visible = options.mask == .causal ? Array(0...i) : Array(0..<nk)
                func weight(_ j: Int) -> Scalar {
                    options.mask == .causal ? Scalar(Foundation.pow(Double(lambda), Double(i - j))) : 1
                }
                var scores: [Int: Scalar] = [:]
                var num = [Scalar](repeating: 0, count: dv)
                var den: Scalar = 0
                for j in visible {
                    var score: Scalar = 0
                    for f in a.indices { score += a[f] * features[j][f] }
                    scores[j] = score
                    let vj = row(x.values, (b * x.keyValueHeads + g) * nk + j, dv)
                    for e in 0..<dv { num[e] += weight(j) * score * vj[e] }
                    den += weight(j) * score
                }
                let dO = row(x.outputGradient, queryIndex, dv)
                var gi = dO
                var ti: Scalar = 0
                if options.normalize {
                    if den == 0 {
                        gi = [Scalar](repeating: 0, count: dv)
                    } else {
                        let o = num.map { $0 / den }
                        for e in 0..<dv { output[queryIndex * dv + e] = o[e] }
                        gi = dO.map { $0 / den }
                        var dot: Scalar = 0
                        for e in 0..<dv { dot += dO[e] * o[e] }
                        ti = -dot / den
                    }
                } else {
                    for e in 0..<dv { output[queryIndex * dv + e] = num[e] }
                }
                var queryFeatureGradient = [Scalar](repeating: 0, count: a.count)
                for j in visible {
                    let vj = row(x.values, (b * x.keyValueHeads + g) * nk + j, dv)
                    var gv: Scalar = 0
                    for e in 0..<dv { gv += gi[e] * vj[e] }
                    let e = weight(j) * (gv + ti)  // dL / d s_ij
                    for f in a.indices {
                        queryFeatureGradient[f] += e * features[j][f]
                        keyFeatureGradients[j][f] += e * a[f]
                    }
                    let kv = (b * x.keyValueHeads + g) * nk + j
                    for c in 0..<dv { dV[kv * dv + c] += weight(j) * scores[j]! * gi[c] }
                }
                let dq = textbookFeatureGradient(
                    row(x.queries, queryIndex, dk), queryFeatureGradient, options.featureMap)
                for c in 0..<dk { dQ[queryIndex * dk + c] = dq[c] }
            }
            for j in 0..<nk {
                let dkRow = textbookFeatureGradient(keyRows[j], keyFeatureGradients[j], options.featureMap)
                let kv = (b * x.keyValueHeads + g) * nk + j
                for c in 0..<dk { dK[kv * dk + c] += dkRow[c] }
            }
        }
    }
    return (dQ, dK, dV, output)
}

/// The reference forward's loss sum(dO * O), for finite differences.
public func referenceLinearLoss<Scalar: ReferenceScalar>(
    _ x: LinearReferenceInputs<Scalar>, options: LinearAttentionOptions
) -> Scalar {
    zip(referenceLinearBackward(x, options: options).output, x.outputGradient).reduce(0) { $0 + $1.0 * $1.1 }
}

/// `linearAttentionGradients` against the Float64 reference under the tolerance rule (the same textbook loops in
/// Float32 as the plain comparator), gradient by gradient.
public func checkLinearGradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, options: LinearAttentionOptions
) throws -> [String: ToleranceCheck] {
    let kernel = try linearAttentionGradients(
        queries: queries, keys: keys, values: values, outputGradient: outputGradient, options: options)
    let reference = referenceLinearBackward(
        LinearReferenceInputs<Double>(
            queries: queries, keys: keys, values: values, outputGradient: outputGradient, sinkLogits: nil),
        options: options)
    let plain = referenceLinearBackward(
        LinearReferenceInputs<Float>(
            queries: queries, keys: keys, values: values, outputGradient: outputGradient, sinkLogits: nil),
        options: options)
    let context = SweepContext.description + " q\(queries.shape) k\(keys.shape) v\(values.shape)"
    return queryKeyValueChecks(
        kernel: (kernel.queries, kernel.keys, kernel.values),
        reference: (reference.queries, reference.keys, reference.values),
        plain: (plain.queries, plain.keys, plain.values),
        context: context)
}
