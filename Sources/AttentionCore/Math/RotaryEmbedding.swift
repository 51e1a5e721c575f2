// Rotary position embedding (RoPE, Su et al. 2021): each pair of a head's first `rotaryDimension` values is rotated
// by an angle proportional to the token's position, so that q . k depends on the positions only through their
// difference.
//
// For pair k of r = rotaryDimension values (k = 0 ..< r / 2) at position p:
//   inverse frequency  w_k = base^(-2k / r)          (base' = base * factor^(r / (r - 2)) with .ntkAware(factor))
//   angle              a = p' * w_k                    (p' = p / factor with .linear(factor), else p)
//   (x, y) -> (x cos a - y sin a, x sin a + y cos a)
// where (x, y) are the pair's two values: elements (2k, 2k + 1) with `.interleaved`, elements (k, k + r / 2) with
// `.halves`. Values r ..< d are left as they are (partial rotary, as in GPT-NeoX and Phi). Angles, cosines and
// sines are computed in Float64 and rounded once, so a position of 100,000 loses nothing to Float32 angle
// arithmetic.
//
// The two pairings are not interchangeable: a model trained with one produces gibberish with the other. Meta's
// Llama reference code and GPT-J rotate interleaved pairs; GPT-NeoX and Hugging Face's Llama (whose checkpoints
// permute the projection weights to match) rotate halves.

/// A rotary position embedding: which values form pairs, the frequencies, and how positions are scaled.
///
/// ```swift
/// // Hugging Face Llama: half-split pairs, base 500000 (Llama 3), all 128 dimensions rotated.
/// let rope = try RotaryEmbedding(pairing: .halves, base: 500_000)
/// let rotated = try rope.apply(to: queries, positions: Array(0..<queries.shape[2]))
/// ```
public struct RotaryEmbedding: Sendable, Hashable {
    /// Which two values of a head form each rotated pair.
    public enum Pairing: Sendable, Hashable {
        /// Pairs (0, 1), (2, 3), ...: Meta's Llama reference code, GPT-J, `rotate_every_two`.
        case interleaved
        /// Pairs (0, r/2), (1, r/2 + 1), ...: GPT-NeoX, Hugging Face Llama and Mistral, `rotate_half`.
        case halves
    }

    /// How positions are stretched for contexts longer than the training length.
    public enum Scaling: Sendable, Hashable {
        /// Angles p * w_k.
        case none
        /// Position interpolation (Chen et al. 2023, Hugging Face `rope_type: "linear"`): positions divided by
        /// `factor` (> 0).
        case linear(factor: Float)
        /// NTK-aware scaling (Hugging Face `rope_type: "dynamic"` at a fixed factor): the base multiplied by
        /// `factor^(r / (r - 2))` (`factor` > 0), which stretches low frequencies more than high ones.
        case ntkAware(factor: Float)
    }

    public let pairing: Pairing
    /// The frequency base (10000 in most models; 500000 in Llama 3). Finite and > 1.
    public let base: Float
    /// The rotated values per head (even, >= 2); nil rotates the whole head (all but its last value when the
    /// head dimension is odd).
    public let rotaryDimension: Int?
    public let scaling: Scaling

    /// - Throws: `AttentionError.invalidValue` for a base that is not finite and > 1, an odd or non-positive
    ///   rotary dimension, or a scaling factor that is not finite and > 0.
    public init(pairing: Pairing, base: Float = 10_000, rotaryDimension: Int? = nil, scaling: Scaling = .none) throws {
        try AttentionError.require(
            base.isFinite && base > 1, "base", expected: "a finite number > 1", actual: "\(base)")
        if let r = rotaryDimension {
            try AttentionError.require(
                r >= 2 && r % 2 == 0, "rotaryDimension", expected: "an even number >= 2", actual: "\(r)")
        }
        switch scaling {
        case .none: break
        case .linear(let factor), .ntkAware(let factor):
            try AttentionError.require(
                factor.isFinite && factor > 0, "scaling factor", expected: "a finite number > 0", actual: "\(factor)")
        }
        self.pairing = pairing
        self.base = base
        self.rotaryDimension = rotaryDimension
        self.scaling = scaling
    }

    /// Rotates every head of `tensor` ([batch, heads, tokens, headDimension] in `layout`) by its tokens'
    /// positions: `positions[n]` for token n of every batch entry, or `positions[b * tokens + n]` per batch entry
    /// (left-padded batches, packed sequences). Positions are >= 0.
    /// - Throws: `AttentionError` for a tensor that is not rank 4, a rotary dimension above the head dimension, or
    ///   positions of the wrong count or negative.
    public func apply(to tensor: Tensor, positions: [Int], layout: TensorLayout = .bhnd) throws -> Tensor {
        guard tensor.rank == 4 else {
            throw AttentionError.shapeMismatch(
                argument: "tensor", expected: "rank 4 [batch, heads, tokens, headDimension]", actual: tensor.shape,
                reason: "rotary embedding rotates the heads of attention operands")
        }
        let shape = layout.canonical(tensor.shape)
        let (batch, heads, tokens, d) = (shape[0], shape[1], shape[2], shape[3])
        let r = rotaryDimension ?? d - d % 2
        try AttentionError.require(
            r <= d, "rotaryDimension", expected: "<= the head dimension \(d)", actual: "\(r)")
        try AttentionError.require(
            positions.count == tokens || positions.count == batch * tokens, "positions.count",
            expected: "\(tokens) (one per token) or \(batch * tokens) (one per batch entry and token)",
            actual: "\(positions.count)")
        if let bad = positions.firstIndex(where: { $0 < 0 }) {
            throw AttentionError.invalidValue(
                argument: "positions[\(bad)]", expected: ">= 0", actual: "\(positions[bad])")
        }
        let frequencies = inverseFrequencies(rotaryDimension: r)
        let perBatch = positions.count != tokens
        let strides = layout.strides(heads: heads, tokens: tokens, dimension: d)
        var scalars = tensor.scalars
        var cosines = [Float](repeating: 0, count: r / 2)
        var sines = [Float](repeating: 0, count: r / 2)
        let half = r / 2
        for b in 0..<batch {
            for n in 0..<tokens {
                let position = Double(positions[perBatch ? b * tokens + n : n]) / positionDivisor
                for k in 0..<half {
                    let angle = position * frequencies[k]
                    cosines[k] = Float(_cos(angle))
                    sines[k] = Float(_sin(angle))
                }
                for h in 0..<heads {
                    let row = strides.offset(batch: b, head: h, token: n)
                    for k in 0..<half {
                        let (i, j) =
                            pairing == .interleaved ? (row + 2 * k, row + 2 * k + 1) : (row + k, row + k + half)
                        let (x, y) = (scalars[i], scalars[j])
                        scalars[i] = x * cosines[k] - y * sines[k]
                        scalars[j] = x * sines[k] + y * cosines[k]
                    }
                }
            }
        }
        return Tensor(uncheckedShape: tensor.shape, scalars: scalars)
    }

    /// w_k = base'^(-2k / r), in Float64.
    private func inverseFrequencies(rotaryDimension r: Int) -> [Double] {
        var base = Double(self.base)
        if case .ntkAware(let factor) = scaling, r > 2 { base *= _pow(Double(factor), Double(r) / Double(r - 2)) }
        return (0..<(r / 2)).map { k in _pow(base, -2 * Double(k) / Double(r)) }
    }

    private var positionDivisor: Double {
        if case .linear(let factor) = scaling { return Double(factor) }
        return 1
    }
}
