// Helpers for tests that compare one output against the Float64 reference of other inputs (caches, gathered
// keys), where `checkAttention` cannot run the kernel itself.

import AttentionCore

/// The tolerance check of `output` against the Float64 reference of `queries` over `keys` / `values` with `mask`
/// and `options`: the same rule as `checkAttention` (2x the plain Float32 error + 8 ulp).
public func checkOutput(
    _ output: Tensor, queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) -> ToleranceCheck {
    let reference = referenceAttention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    let plain = plainFloat32Attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    return toleranceCheck(kernel: output.scalars, reference: reference.output, plain: plain.output)
}

/// The tokens `range` (axis 2) of a rank-4 tensor.
public func tokens(_ tensor: Tensor, _ range: Range<Int>) -> Tensor {
    let s = tensor.shape
    var scalars: [Float] = []
    scalars.reserveCapacity(s[0] * s[1] * range.count * s[3])
    for a in 0..<s[0] {
        for b in 0..<s[1] {
            let start = ((a * s[1] + b) * s[2] + range.lowerBound) * s[3]
            scalars += tensor.scalars[start..<(start + range.count * s[3])]
        }
    }
    return try! Tensor(shape: [s[0], s[1], range.count, s[3]], scalars: scalars)
}

/// Rank-4 tensors concatenated along axis 2 (tokens).
public func concatenateTokens(_ parts: [Tensor]) -> Tensor {
    let s = parts[0].shape
    let total = parts.reduce(0) { $0 + $1.shape[2] }
    var scalars: [Float] = []
    scalars.reserveCapacity(s[0] * s[1] * total * s[3])
    for a in 0..<s[0] {
        for b in 0..<s[1] {
            for part in parts {
                let n = part.shape[2]
                let start = ((a * s[1] + b) * n) * s[3]
                scalars += part.scalars[start..<(start + n * s[3])]
            }
        }
    }
    return try! Tensor(shape: [s[0], s[1], total, s[3]], scalars: scalars)
}

/// Feeds `inputs` to a cache step `attend(queries, keys, values)` in consecutive chunks of the given token counts
/// and returns the outputs concatenated along the tokens.
public func attendInChunks(
    _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), chunks: [Int],
    _ attend: (_ queries: Tensor, _ keys: Tensor, _ values: Tensor) throws -> Tensor
) rethrows -> Tensor {
    var outputs: [Tensor] = []
    var start = 0
    for chunk in chunks {
        let t = start..<(start + chunk)
        outputs.append(try attend(tokens(inputs.queries, t), tokens(inputs.keys, t), tokens(inputs.values, t)))
        start += chunk
    }
    return concatenateTokens(outputs)
}

/// A rank-4 tensor with axes 1 and 2 swapped: [B, H, N, d] as [B, N, H, d] (`TensorLayout.bnhd`), and back.
public func swappingHeadsAndTokens(_ t: Tensor) -> Tensor {
    let s = t.shape
    return try! Tensor(shape: [s[0], s[2], s[1], s[3]]) { i in t[i[0], i[2], i[1], i[3]] }
}

/// Tokens `range` of a packed [T, H, d] tensor as a [1, H, n, d] tensor (what the reference reads).
public func headMajor(_ packed: Tensor, _ range: Range<Int>) -> Tensor {
    let (h, d) = (packed.shape[1], packed.shape[2])
    return try! Tensor(shape: [1, h, range.count, d]) { i in
        packed.scalars[((range.lowerBound + i[2]) * h + i[1]) * d + i[3]]
    }
}

/// Batch entry `batch`, tokens `range`, of a [B, H, N, d] tensor, token-major: [n, H, d] rows for a packed batch.
public func packedRows(_ tensor: Tensor, batch: Int, _ range: Range<Int>) -> [Float] {
    let s = tensor.shape
    var scalars: [Float] = []
    scalars.reserveCapacity(range.count * s[1] * s[3])
    for n in range {
        for h in 0..<s[1] {
            let start = ((batch * s[1] + h) * s[2] + n) * s[3]
            scalars += tensor.scalars[start..<(start + s[3])]
        }
    }
    return scalars
}

/// Checks every sequence of a packed result (output [T, Hq, Dv], log-sum-exp [T, Hq]) against the Float64
/// reference of that sequence alone, with the tolerance rule; returns the checks that fail.
public func packedReferenceFailures(
    _ result: AttentionResult, queries: Tensor, keys: Tensor, values: Tensor, sequences: PackedSequences,
    mask: AttentionMask, options: AttentionOptions
) -> [String] {
    var failures: [String] = []
    let lse = try! Tensor(shape: result.logSumExp.shape + [1], scalars: result.logSumExp.scalars)
    for b in 0..<sequences.count {
        let (qs, ks) = (sequences.queryRange(b), sequences.keyRange(b))
        let (q, k, v) = (headMajor(queries, qs), headMajor(keys, ks), headMajor(values, ks))
        let reference = referenceAttention(queries: q, keys: k, values: v, mask: mask, options: options)
        let plain = plainFloat32Attention(queries: q, keys: k, values: v, mask: mask, options: options)
        for check in [
            toleranceCheck(
                kernel: headMajor(result.output, qs).scalars, reference: reference.output, plain: plain.output,
                context: "sequence \(b) (\(qs.count) x \(ks.count)) output"),
            toleranceCheck(
                kernel: headMajor(lse, qs).scalars, reference: reference.logSumExp, plain: plain.logSumExp,
                context: "sequence \(b) (\(qs.count) x \(ks.count)) logSumExp"),
        ] where !check.passes {
            failures.append("\(check)")
        }
    }
    return failures
}

/// Checks a packed batch's gradients (dQ [Tq, Hq, Dk], dK [Tk, Hkv, Dk], dV [Tk, Hkv, Dv]) sequence by sequence
/// against the Float64 reference backward of that sequence alone, with the tolerance rule (the plain Float32
/// reference as the comparator), keyed "sequence b dQ" (dK, dV); with sink logits and every sequence checked, also
/// "dSink" against the references' gradients summed over the sequences. `only` limits the sequences checked.
public func packedGradientChecks(
    _ gradients: AttentionGradients, queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor,
    sequences: PackedSequences, mask: AttentionMask, options: AttentionOptions, only: [Int]? = nil
) -> [String: ToleranceCheck] {
    var checks: [String: ToleranceCheck] = [:]
    let heads = queries.shape[1]
    var (referenceSinks, plainSinks) = ([Double](repeating: 0, count: heads), [Float](repeating: 0, count: heads))
    for b in only ?? Array(0..<sequences.count) {
        let (qs, ks) = (sequences.queryRange(b), sequences.keyRange(b))
        let (q, k, v, dO) = (
            headMajor(queries, qs), headMajor(keys, ks), headMajor(values, ks), headMajor(outputGradient, qs)
        )
        let reference = referenceBackward(
            BackwardReferenceInputs<Double>(
                queries: q, keys: k, values: v, outputGradient: dO, sinkLogits: options.sinkLogits, bias: nil),
            mask: mask, options: options)
        let plain = referenceBackward(
            BackwardReferenceInputs<Float>(
                queries: q, keys: k, values: v, outputGradient: dO, sinkLogits: options.sinkLogits, bias: nil),
            mask: mask, options: options, deltaFromOutput: true)
        let context = "\(mask) H \(heads) sequence \(b)"
        for (name, check) in queryKeyValueChecks(
            kernel: (headMajor(gradients.queries, qs), headMajor(gradients.keys, ks), headMajor(gradients.values, ks)),
            reference: (reference.queries, reference.keys, reference.values),
            plain: (plain.queries, plain.keys, plain.values), context: context)
        {
            checks["sequence \(b) \(name)"] = check
        }
        for h in 0..<heads where options.sinkLogits != nil {
            referenceSinks[h] += reference.sinkLogits![h]
            plainSinks[h] += plain.sinkLogits![h]
        }
    }
    if options.sinkLogits != nil && only == nil {
        checks["dSink"] = toleranceCheck(
            kernel: gradients.sinkLogits ?? [], reference: referenceSinks, plain: plainSinks,
            context: "\(mask) H \(heads) dSink")
    }
    return checks
}

/// A tensor as bits: its shape and the bit pattern of every scalar. Tests that promise bitwise identity compare
/// these (`XCTAssertEqual(bitwise(a), bitwise(b))`): `Tensor`'s own `==` compares Floats, under which +0 equals -0
/// and NaN differs from itself.
public struct BitwiseTensor: Equatable, CustomStringConvertible {
    public let shape: [Int]
    public let bits: [UInt32]

    /// The shape and a checksum of the bits (a failed comparison prints both sides).
    public var description: String {
        let checksum = bits.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
        return "\(shape) tensor, bits checksum \(String(checksum, radix: 16))"
    }
}

/// `tensor` as bits (see `BitwiseTensor`).
public func bitwise(_ tensor: Tensor) -> BitwiseTensor {
    BitwiseTensor(shape: tensor.shape, bits: tensor.scalars.map(\.bitPattern))
}

/// Floats as their bit patterns.
public func bitwise(_ scalars: [Float]) -> [UInt32] { scalars.map(\.bitPattern) }
