// The reference attention: the spec every kernel is tested against.
//
// It reads like the textbook formula, one query row at a time, with no tiling, no vector code and no shortcuts:
//
//   for each visible key j:  s_j = scale * (q . k_j), then softcap, ALiBi and bias (AttentionOptions.swift order)
//   (visible: the mask, the per-head mask and key padding allow it; a padding query sees no key)
//   keys whose score is -inf, or whose bias is -inf, are dropped like masked ones
//   m = max(s_j, sink);  denominator = sum_j exp(s_j - m) + exp(sink - m)
//   o = sum_j exp(s_j - m) / denominator * v_j;  lse = m + log(denominator)
//   no visible key and no sink: o = 0, lse = -inf
//
// It is generic over the scalar so the same lines give the Float64 reference (`referenceAttention`) and the
// "plain Float32 naive loop" (`plainFloat32Attention`) whose error sets the tolerance (Tolerance.swift).

import AttentionCore
import Foundation

/// A scalar the reference can run in: Double for the reference itself, Float for the plain-loop baseline.
public protocol ReferenceScalar: BinaryFloatingPoint {
    static func exponential(_ x: Self) -> Self
    static func logarithm(_ x: Self) -> Self
    static func hyperbolicTangent(_ x: Self) -> Self
}

extension Double: ReferenceScalar {
    public static func exponential(_ x: Double) -> Double { Foundation.exp(x) }
    public static func logarithm(_ x: Double) -> Double { Foundation.log(x) }
    public static func hyperbolicTangent(_ x: Double) -> Double { Foundation.tanh(x) }
}

extension Float: ReferenceScalar {
    public static func exponential(_ x: Float) -> Float { Foundation.expf(x) }
    public static func logarithm(_ x: Float) -> Float { Foundation.logf(x) }
    public static func hyperbolicTangent(_ x: Float) -> Float { Foundation.tanhf(x) }
}

/// A reference result: output [B, Hq, Nq, Dv] and log-sum-exp [B, Hq, Nq], row-major.
public struct ReferenceResult<Scalar: ReferenceScalar> {
    public var output: [Scalar]
    public var logSumExp: [Scalar]
}

/// One row of the reference: query `query` of head `head` in batch `batch`.
public func referenceRow<Scalar: ReferenceScalar>(
    _: Scalar.Type, batch: Int, head: Int, query: Int,
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask, options: AttentionOptions
) -> (output: [Scalar], logSumExp: Scalar) {
    let (queryHeads, queryLength, headDimension) = (
        queries.shape[1], queries.shape[2], queries.shape[3]
    )
    let (keyValueHeads, keyLength, valueDimension) = (keys.shape[1], keys.shape[2], values.shape[3])
    let keyValueHead = head / (queryHeads / keyValueHeads)
    let scale = options.scale.map { Scalar($0) } ?? 1 / Scalar(headDimension).squareRoot()
    let diagonal = query + keyLength - queryLength

    var scores: [(key: Int, score: Scalar)] = []
    let headMask = options.headMasks?[head] ?? .none
    for key in 0..<keyLength
    where textbookVisible(mask, query: query, key: key, queryLength: queryLength, keyLength: keyLength)
        && textbookVisible(headMask, query: query, key: key, queryLength: queryLength, keyLength: keyLength)
        && isRealToken(options.keyPadding, batch: batch, position: key, length: keyLength)
        && isRealToken(options.queryPadding, batch: batch, position: query, length: queryLength)
    {
        var dot: Scalar = 0
        for c in 0..<headDimension {
            dot +=
                Scalar(element(queries, batch, head, query, c))
                * Scalar(element(keys, batch, keyValueHead, key, c))
        }
        var score = scale * dot
        if let cap = options.softcap.map({ Scalar($0) }) {
            score = cap * Scalar.hyperbolicTangent(score / cap)
        }
        if let slopes = options.alibiSlopes {
            score -= Scalar(slopes[head]) * Scalar(abs(diagonal - key))
        }
        if let bias = options.bias {
            let added = element(
                bias, bias.shape[0] == 1 ? 0 : batch, bias.shape[1] == 1 ? 0 : head, bias.shape[2] == 1 ? 0 : query,
                key)
            // A -inf bias removes the key, whatever its score (AttentionOptions.bias).
            if added == -.infinity { continue }
            score += Scalar(added)
        }
        if score == -.infinity { continue }
        scores.append((key, score))
    }

    let sink = options.sinkLogits.map { Scalar($0[head]) }
    var output = [Scalar](repeating: 0, count: valueDimension)
    guard !scores.isEmpty || sink != nil else { return (output, -.infinity) }
    var maximum = sink ?? -.infinity
    for (_, score) in scores { maximum = Swift.max(maximum, score) }
    var denominator: Scalar = sink.map { Scalar.exponential($0 - maximum) } ?? 0
    for (_, score) in scores { denominator += Scalar.exponential(score - maximum) }
    for (key, score) in scores {
        let weight = Scalar.exponential(score - maximum) / denominator
        for c in 0..<valueDimension {
            output[c] += weight * Scalar(element(values, batch, keyValueHead, key, c))
        }
    }
    return (output, maximum + Scalar.logarithm(denominator))
}

/// Whether query `i` sees key `j`, decided from each mask's definition (the table in AttentionMask.swift) written
/// out here, never through the library's `allows` or span code, so a wrong span computation cannot hide behind
/// its own reference. Differences like d - j are formed instead of d - left, so huge windows cannot overflow.
public func textbookVisible(
    _ mask: AttentionMask, query i: Int, key j: Int, queryLength: Int, keyLength: Int
) -> Bool {
    let d = i + keyLength - queryLength  // the diagonal key
    switch mask {
    case .none:
        return true
    case .causal:
        return j <= d
    case .window(let left, let right):
        return d - j <= left && j - d <= right
    case .sinks(let count, let window):
        return j <= d && (j < count || d - j < window)
    case .blockSparse(let layout):
        return layout.keyBlocks(queryBlock: i / layout.queryBlock).contains(j / layout.keyBlock)
    case .custom(let predicate):
        return predicate(i, j)
    case .intersection(let a, let b):
        return textbookVisible(a, query: i, key: j, queryLength: queryLength, keyLength: keyLength)
            && textbookVisible(b, query: i, key: j, queryLength: queryLength, keyLength: keyLength)
    }
}

/// Whether position `position` of batch entry `batch` is a real token under `padding` (every position is, without
/// padding). A padding key is invisible to every query; a padding query sees no key.
public func isRealToken(_ padding: SequencePadding?, batch: Int, position: Int, length: Int) -> Bool {
    switch padding {
    case nil: return true
    case .lengths(let lengths): return position < lengths[batch]
    case .ranges(let ranges): return ranges[batch].contains(position)
    case .realTokens(let realTokens): return realTokens[batch * length + position]
    }
}

/// `tensor[a, b, c, d]` for a rank-4 tensor, without the variadic subscript's array allocation.
@inline(__always)
private func element(_ tensor: Tensor, _ a: Int, _ b: Int, _ c: Int, _ d: Int) -> Float {
    let s = tensor.shape
    return tensor.scalars[((a * s[1] + b) * s[2] + c) * s[3] + d]
}

/// The reference over every row, in `Scalar` precision.
public func referenceAttention<Scalar: ReferenceScalar>(
    _ type: Scalar.Type, queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) -> ReferenceResult<Scalar> {
    let (batchCount, heads, queryLength) = (queries.shape[0], queries.shape[1], queries.shape[2])
    var result = ReferenceResult<Scalar>(output: [], logSumExp: [])
    for batch in 0..<batchCount {
        for head in 0..<heads {
            for query in 0..<queryLength {
                let row = referenceRow(
                    type, batch: batch, head: head, query: query, queries: queries, keys: keys,
                    values: values,
                    mask: mask, options: options)
                result.output += row.output
                result.logSumExp.append(row.logSumExp)
            }
        }
    }
    return result
}

/// The Float64 reference (the spec).
public func referenceAttention(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) -> ReferenceResult<Double> {
    referenceAttention(
        Double.self, queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// The same textbook loop in Float32: what "a plain Float32 implementation" gets wrong on these inputs.
public func plainFloat32Attention(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) -> ReferenceResult<Float> {
    referenceAttention(
        Float.self, queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// Rotary embedding of one head row in Float64, from the textbook definition: theta_k = base^(-2k / r) (base
/// times factor^(r / (r - 2)) for NTK-aware scaling), angle = (position / linear factor) * theta_k, and pair k
/// (elements 2k and 2k + 1 when interleaved, k and k + r / 2 otherwise) rotated by the angle. Elements from r on are
/// unchanged.
public func referenceRotary(
    _ row: [Double], position: Int, interleaved: Bool, base: Double, rotaryDimension r: Int,
    linearFactor: Double = 1, ntkFactor: Double = 1, yarn: YarnReference? = nil
) -> [Double] {
    var out = row
    let scaledBase = r > 2 ? base * Foundation.pow(ntkFactor, Double(r) / Double(r - 2)) : base
    for k in 0..<(r / 2) {
        var theta = Foundation.pow(scaledBase, -2 * Double(k) / Double(r))
        var m = 1.0
        if let yarn {
            // YaRN: the wavelength 2 pi / theta fits L / wavelength times into the original context; pairs whose
            // count is above betaFast keep theta, below betaSlow take theta / s, linearly in the pair index between
            // the (rounded) pair indices where the count crosses the two betas.
            func crossing(_ beta: Double) -> Double {
                // L theta_k / (2 pi) = beta  <=>  k = r ln(L / (2 pi beta)) / (2 ln base)
                Double(r) * Foundation.log(Double(yarn.originalContextLength) / (2 * Double.pi * beta))
                    / (2 * Foundation.log(base))
            }
            let low = max(0, Foundation.floor(crossing(yarn.betaFast)))
            var high = min(Double(r - 1), Foundation.ceil(crossing(yarn.betaSlow)))
            if high == low { high += 0.001 }
            let interpolated = min(1, max(0, (Double(k) - low) / (high - low)))
            theta = theta * (1 - interpolated) + theta / yarn.factor * interpolated
            m = yarn.attentionFactor ?? (yarn.factor > 1 ? 0.1 * Foundation.log(yarn.factor) + 1 : 1)
        }
        let angle = Double(position) / linearFactor * theta
        let (i, j) = interleaved ? (2 * k, 2 * k + 1) : (k, k + r / 2)
        out[i] = m * (row[i] * Foundation.cos(angle) - row[j] * Foundation.sin(angle))
        out[j] = m * (row[i] * Foundation.sin(angle) + row[j] * Foundation.cos(angle))
    }
    return out
}

/// YaRN's parameters for `referenceRotary`.
public struct YarnReference {
    public var factor: Double
    public var originalContextLength: Int
    public var betaFast: Double
    public var betaSlow: Double
    public var attentionFactor: Double?

    public init(
        factor: Double, originalContextLength: Int, betaFast: Double = 32, betaSlow: Double = 1,
        attentionFactor: Double? = nil
    ) {
        self.factor = factor
        self.originalContextLength = originalContextLength
        self.betaFast = betaFast
        self.betaSlow = betaSlow
        self.attentionFactor = attentionFactor
    }
}
