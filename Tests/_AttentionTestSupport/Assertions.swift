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
