// The reference backward: attention's gradients from the textbook softmax Jacobian, row by row, in any precision
// (Float64 is the spec; Float32 is "a plain Float32 implementation" for the tolerance rule). It shares nothing
// with the kernel: visibility comes from `textbookVisible`, scores from the formula in the README's "Semantics",
// and the forward is recomputed here. It is itself checked against central finite differences of its own forward
// in Float64 (BackwardTests), which is why its inputs are plain arrays rather than Float32 tensors.
//
// For one row with visible keys j, scores z_j = softcap(scale q.k_j) - slope |d - j| + bias_j (a key whose
// bias is -infinity, or that padding removes, is not visible), L = log(exp(sink) +
// sum_j exp(z_j)), P_j = exp(z_j - L), O = sum_j P_j v_j and loss gradient dO:
//   dv_j += P_j dO,  dP_j = dO.v_j,  D = sum_j P_j dP_j,  dz_j = P_j (dP_j - D),
//   dx_j = dz_j (1 - tanh^2(scale q.k_j / c)) with softcap c (else dz_j),
//   dq += scale sum_j dx_j k_j,  dk_j += scale dx_j q,  d sink = -exp(sink - L) D,  d bias_j += dz_j.

import AttentionCore

/// Inputs of the reference backward as arrays in `Scalar`: [B, Hq, Nq, Dk] queries, [B, Hkv, Nk, Dk] keys,
/// [B, Hkv, Nk, Dv] values, [B, Hq, Nq, Dv] output gradient, row-major.
public struct BackwardReferenceInputs<Scalar: ReferenceScalar> {
    public var queries: [Scalar]
    public var keys: [Scalar]
    public var values: [Scalar]
    public var outputGradient: [Scalar]
    public var sinkLogits: [Scalar]?
    /// The additive bias, [B or 1, Hq or 1, Nq or 1, Nk] (`biasShape`), broadcast over its size-1 axes.
    public var bias: [Scalar]?
    public let biasShape: [Int]
    public let batch: Int
    public let queryHeads: Int
    public let keyValueHeads: Int
    public let queryLength: Int
    public let keyLength: Int
    public let keyDimension: Int
    public let valueDimension: Int

    public init(
        queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, sinkLogits: [Float]?,
        bias: Tensor? = nil
    ) {
        self.bias = bias?.scalars.map { Scalar($0) }
        biasShape = bias?.shape ?? []
        self.queries = queries.scalars.map { Scalar($0) }
        self.keys = keys.scalars.map { Scalar($0) }
        self.values = values.scalars.map { Scalar($0) }
        self.outputGradient = outputGradient.scalars.map { Scalar($0) }
        self.sinkLogits = sinkLogits?.map { Scalar($0) }
        (batch, queryHeads, queryLength, keyDimension) = (
            queries.shape[0], queries.shape[1], queries.shape[2], queries.shape[3]
        )
        (keyValueHeads, keyLength, valueDimension) = (keys.shape[1], keys.shape[2], values.shape[3])
    }
}

/// Reference gradients, row-major in the inputs' shapes.
public struct BackwardReferenceResult<Scalar: ReferenceScalar> {
    public var queries: [Scalar]
    public var keys: [Scalar]
    public var values: [Scalar]
    public var sinkLogits: [Scalar]?
    /// dL/d(bias) in the bias's shape (summed over its broadcast axes), when there is a bias.
    public var bias: [Scalar]?
    /// The forward's output and log-sum-exp, recomputed.
    public var output: [Scalar]
    public var logSumExp: [Scalar]
}

/// One row's visible keys, their scores (z_j), softcap factors and bias indices, from the textbook definitions.
private func rowScores<Scalar: ReferenceScalar>(
    _ x: BackwardReferenceInputs<Scalar>, batch b: Int, head h: Int, query i: Int, mask: AttentionMask,
    options: AttentionOptions
) -> [(key: Int, score: Scalar, capFactor: Scalar, biasIndex: Int?)] {
    let g = h / (x.queryHeads / x.keyValueHeads)
    let scale = options.scale.map { Scalar($0) } ?? 1 / Scalar(x.keyDimension).squareRoot()
    let d = i + x.keyLength - x.queryLength
    let headMask = options.headMasks?[h] ?? .none
    var scores: [(Int, Scalar, Scalar, Int?)] = []
    for j in 0..<x.keyLength
    where textbookVisible(mask, query: i, key: j, queryLength: x.queryLength, keyLength: x.keyLength)
        && textbookVisible(headMask, query: i, key: j, queryLength: x.queryLength, keyLength: x.keyLength)
        && isRealToken(options.keyPadding, batch: b, position: j, length: x.keyLength)
        && isRealToken(options.queryPadding, batch: b, position: i, length: x.queryLength)
    {
        var dot: Scalar = 0
        for c in 0..<x.keyDimension {
            dot +=
                x.queries[((b * x.queryHeads + h) * x.queryLength + i) * x.keyDimension + c]
                * x.keys[((b * x.keyValueHeads + g) * x.keyLength + j) * x.keyDimension + c]
        }
        var score = scale * dot
        var capFactor: Scalar = 1
        if let cap = options.softcap.map({ Scalar($0) }) {
            let t = Scalar.hyperbolicTangent(score / cap)
            score = cap * t
            capFactor = 1 - t * t
        }
        if let slopes = options.alibiSlopes { score -= Scalar(slopes[h]) * Scalar(abs(d - j)) }
        var biasIndex: Int? = nil
        if let bias = x.bias {
            let shape = x.biasShape
            let index =
                (((shape[0] == 1 ? 0 : b) * shape[1] + (shape[1] == 1 ? 0 : h)) * shape[2] + (shape[2] == 1 ? 0 : i))
                * shape[3] + j
            // A -inf bias removes the key, whatever its score (AttentionOptions.bias).
            if bias[index] == -.infinity { continue }
            score += bias[index]
            biasIndex = index
        }
        scores.append((j, score, capFactor, biasIndex))
    }
    return scores
}

/// The reference forward and backward over every row. D = sum_j P_j dP_j, the textbook form; with
/// `deltaFromOutput`, D = dO . O from this forward's own output instead (FlashAttention's form, the same number in
/// exact arithmetic): the plain Float32 comparator of the tolerance rule uses it, because every backward that takes
/// the forward's output computes D so (the kernel does), and in Float32 the textbook form is exact where the other
/// cannot be: with one visible key its D and dP are the same sum in the same order, so dQ and dK come out exactly 0.
public func referenceBackward<Scalar: ReferenceScalar>(
    _ x: BackwardReferenceInputs<Scalar>, mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions(),
    deltaFromOutput: Bool = false
) -> BackwardReferenceResult<Scalar> {
    let scale = options.scale.map { Scalar($0) } ?? 1 / Scalar(x.keyDimension).squareRoot()
    var result = BackwardReferenceResult<Scalar>(
        queries: [Scalar](repeating: 0, count: x.queries.count), keys: [Scalar](repeating: 0, count: x.keys.count),
        values: [Scalar](repeating: 0, count: x.values.count),
        sinkLogits: x.sinkLogits.map { [Scalar](repeating: 0, count: $0.count) },
        bias: x.bias.map { [Scalar](repeating: 0, count: $0.count) },
        output: [Scalar](repeating: 0, count: x.outputGradient.count), logSumExp: [])
    let (dk, dv) = (x.keyDimension, x.valueDimension)
    for b in 0..<x.batch {
        for h in 0..<x.queryHeads {
            let g = h / (x.queryHeads / x.keyValueHeads)
            for i in 0..<x.queryLength {
                let scores = rowScores(x, batch: b, head: h, query: i, mask: mask, options: options)
                let sink = x.sinkLogits?[h]
                let row = (b * x.queryHeads + h) * x.queryLength + i
                guard !scores.isEmpty || sink != nil else {
                    result.logSumExp.append(-.infinity)
                    continue
                }
                var maximum = sink ?? -.infinity
                for s in scores { maximum = Swift.max(maximum, s.score) }
                var denominator = sink.map { Scalar.exponential($0 - maximum) } ?? 0
                for s in scores { denominator += Scalar.exponential(s.score - maximum) }
                let lse = maximum + Scalar.logarithm(denominator)
                result.logSumExp.append(lse)
                let weights = scores.map { Scalar.exponential($0.score - lse) }
                // Forward output, dP and D.
                var dP = [Scalar](repeating: 0, count: scores.count)
                var D: Scalar = 0
                for (n, s) in scores.enumerated() {
                    let kv = (b * x.keyValueHeads + g) * x.keyLength + s.key
                    for c in 0..<dv {
                        result.output[row * dv + c] += weights[n] * x.values[kv * dv + c]
                        dP[n] += x.outputGradient[row * dv + c] * x.values[kv * dv + c]
                    }
                    D += weights[n] * dP[n]
                }
                if deltaFromOutput {
                    D = 0
                    for c in 0..<dv { D += x.outputGradient[row * dv + c] * result.output[row * dv + c] }
                }
                if let sink { result.sinkLogits![h] -= Scalar.exponential(sink - lse) * D }
                for (n, s) in scores.enumerated() {
                    let kv = (b * x.keyValueHeads + g) * x.keyLength + s.key
                    let dz = weights[n] * (dP[n] - D)
                    if let index = s.biasIndex { result.bias![index] += dz }
                    let dx = dz * s.capFactor
                    for c in 0..<dv { result.values[kv * dv + c] += weights[n] * x.outputGradient[row * dv + c] }
                    for c in 0..<dk {
                        result.queries[row * dk + c] += scale * dx * x.keys[kv * dk + c]
                        result.keys[kv * dk + c] += scale * dx * x.queries[row * dk + c]
                    }
                }
            }
        }
    }
    return result
}

/// The reference forward's loss sum(dO * O), for finite differences.
public func referenceLoss<Scalar: ReferenceScalar>(
    _ x: BackwardReferenceInputs<Scalar>, mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) -> Scalar {
    let output = referenceBackward(x, mask: mask, options: options).output
    var loss: Scalar = 0
    for (o, g) in zip(output, x.outputGradient) { loss += o * g }
    return loss
}

/// Checks `attentionGradients` against the Float64 reference backward under the tolerance rule (the plain error
/// from the same textbook loop in Float32), gradient by gradient. The forward result passed to the kernel is the
/// package's own `partialAttention`, as a training loop would pass it.
public func checkGradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> [String: ToleranceCheck] {
    let forward = try partialAttention(
        queries: queries, keys: keys, values: values, mask: mask, options: options)
    let kernel = try attentionGradients(
        queries: queries, keys: keys, values: values, result: forward, outputGradient: outputGradient, mask: mask,
        options: options)
    return gradientChecks(
        kernel, queries: queries, keys: keys, values: values, outputGradient: outputGradient, mask: mask,
        options: options)
}

/// `checkGradients` for the stored-tensor backward: the inputs encoded in `formats`, the forward and backward run
/// on the stored tensors, and the gradients checked against the reference on the values the formats hold, rounded
/// by test support (`roundedThrough`), not by the package's codec. Nil where the platform has no `Float16`.
public func checkStoredGradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor,
    formats: (queries: StorageFormat, keys: StorageFormat, values: StorageFormat, outputGradient: StorageFormat),
    mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) throws -> [String: ToleranceCheck]? {
    guard let q = roundedThrough(formats.queries, queries), let k = roundedThrough(formats.keys, keys),
        let v = roundedThrough(formats.values, values),
        let dO = roundedThrough(formats.outputGradient, outputGradient)
    else { return nil }
    let (storedQ, storedK, storedV) = (
        try StoredTensor(queries, format: formats.queries), try StoredTensor(keys, format: formats.keys),
        try StoredTensor(values, format: formats.values)
    )
    let forward = try partialAttention(
        queries: storedQ, keys: storedK, values: storedV, mask: mask, options: options)
    let kernel = try attentionGradients(
        queries: storedQ, keys: storedK, values: storedV, result: forward,
        outputGradient: try StoredTensor(outputGradient, format: formats.outputGradient), mask: mask,
        options: options)
    return gradientChecks(kernel, queries: q, keys: k, values: v, outputGradient: dO, mask: mask, options: options)
}

/// A kernel's gradients against the Float64 reference backward on these inputs, under the tolerance rule.
private func gradientChecks(
    _ kernel: AttentionGradients, queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor,
    mask: AttentionMask, options: AttentionOptions
) -> [String: ToleranceCheck] {
    let reference = referenceBackward(
        BackwardReferenceInputs<Double>(
            queries: queries, keys: keys, values: values, outputGradient: outputGradient,
            sinkLogits: options.sinkLogits, bias: options.bias), mask: mask, options: options)
    let plain = referenceBackward(
        BackwardReferenceInputs<Float>(
            queries: queries, keys: keys, values: values, outputGradient: outputGradient,
            sinkLogits: options.sinkLogits, bias: options.bias), mask: mask, options: options, deltaFromOutput: true)
    let context =
        SweepContext.description + " q\(queries.shape) k\(keys.shape) v\(values.shape) mask=\(mask)"
    var checks = queryKeyValueChecks(
        kernel: (kernel.queries, kernel.keys, kernel.values),
        reference: (reference.queries, reference.keys, reference.values),
        plain: (plain.queries, plain.keys, plain.values),
        context: context)
    if let bias = reference.bias {
        checks["dBias"] = toleranceCheck(
            kernel: kernel.bias?.scalars ?? [Float](repeating: .nan, count: bias.count), reference: bias,
            plain: plain.bias ?? [], context: context)
    }
    if let sinks = reference.sinkLogits {
        checks["dSink"] = toleranceCheck(
            kernel: kernel.sinkLogits ?? [], reference: sinks, plain: plain.sinkLogits ?? [], context: context)
    }
    return checks
}

/// The tolerance checks of dQ, dK and dV ("dQ", "dK", "dV"): kernel gradients against the Float64 reference's, with
/// the plain Float32 reference's error as the rule's comparator.
public func queryKeyValueChecks(
    kernel: (Tensor, Tensor, Tensor), reference: ([Double], [Double], [Double]), plain: ([Float], [Float], [Float]),
    context: String
) -> [String: ToleranceCheck] {
    [
        "dQ": toleranceCheck(kernel: kernel.0.scalars, reference: reference.0, plain: plain.0, context: context),
        "dK": toleranceCheck(kernel: kernel.1.scalars, reference: reference.1, plain: plain.1, context: context),
        "dV": toleranceCheck(kernel: kernel.2.scalars, reference: reference.2, plain: plain.2, context: context),
    ]
}
