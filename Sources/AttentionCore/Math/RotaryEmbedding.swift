// Rotary position embedding (RoPE, Su et al. 2021): each pair of a head's first `rotaryDimension` values is rotated
// by an angle proportional to the token's position, so that q . k depends on the positions only through their
// difference.
//
// For pair k of r = rotaryDimension values (k = 0 ..< r / 2) at position p:
//   inverse frequency  w_k = base^(-2k / r)          (base' = base * factor^(r / (r - 2)) with .ntkAware(factor))
//   angle              a = p' * w_k                    (p' = p / factor with .linear(factor), else p)
//   (x, y) -> m (x cos a - y sin a, x sin a + y cos a) (m = 1 except with .yarn)
// YaRN (Peng et al. 2023), as Hugging Face computes it (`rope_type: "yarn"`), for factor s and original context L:
//   dim(beta) = r ln(L / (2 pi beta)) / (2 ln base)   the pair index whose wavelength fits beta times in L
//   low = max(0, floor(dim(betaFast))), high = min(r - 1, ceil(dim(betaSlow)))   (high = low + 0.001 if equal)
//   ramp_k = clamp((k - low) / (high - low), 0, 1)
//   w'_k = w_k (1 - ramp_k) + (w_k / s) ramp_k        fast pairs keep their frequency, slow ones are interpolated
//   m = attentionFactor, by default 0.1 ln(s) + 1 (1 for s <= 1): q . k grows by m^2, YaRN's temperature
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
        /// YaRN (Peng et al. 2023, Hugging Face `rope_type: "yarn"`): pairs whose wavelength fits more than
        /// `betaFast` times into `originalContextLength` keep their frequency, pairs that fit fewer than
        /// `betaSlow` times are interpolated by `factor`, with a linear ramp between; rotated values are scaled
        /// by `attentionFactor` (default 0.1 ln(factor) + 1). See the formula at the top of this file.
        case yarn(
            factor: Float, originalContextLength: Int, betaFast: Float = 32, betaSlow: Float = 1,
            attentionFactor: Float? = nil)
    }

    /// Which values of a head form the rotated pairs; it must match the model's code.
    public let pairing: Pairing
    /// The frequency base (10000 in most models; 500000 in Llama 3). Finite and > 1.
    public let base: Float
    /// The rotated values per head (even, >= 2); nil rotates the whole head (all but its last value when the
    /// head dimension is odd).
    public let rotaryDimension: Int?
    /// How the frequencies are stretched for contexts longer than the model was trained on.
    public let scaling: Scaling

    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` for a base that is not finite and > 1, an
    ///   odd or non-positive rotary dimension, or a scaling factor that is not finite and > 0.
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
        case .yarn(let factor, let length, let fast, let slow, let attentionFactor):
            try AttentionError.require(
                factor.isFinite && factor > 0, "scaling factor", expected: "a finite number > 0", actual: "\(factor)")
            try AttentionError.require(
                length >= 1, "originalContextLength", expected: ">= 1", actual: "\(length)")
            try AttentionError.require(
                fast.isFinite && slow.isFinite && fast > 0 && slow > 0, "betaFast, betaSlow",
                expected: "finite numbers > 0", actual: "\(fast), \(slow)")
            if let m = attentionFactor {
                try AttentionError.require(
                    m.isFinite && m > 0, "attentionFactor", expected: "a finite number > 0", actual: "\(m)")
            }
        }
        self.pairing = pairing
        self.base = base
        self.rotaryDimension = rotaryDimension
        self.scaling = scaling
    }

    /// Rotates every head of `tensor` ([batch, heads, tokens, headDimension] in `layout`) by its tokens'
    /// positions: `positions[n]` for token n of every batch entry, or `positions[b * tokens + n]` per batch entry
    /// (left-padded batches, packed sequences). Positions are >= 0.
    /// - Throws: ``AttentionError`` for a tensor that is not rank 4, a rotary dimension above the head dimension, or
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
        try Self.validatePositions(positions)
        let perBatch = positions.count != tokens
        let strides = layout.strides(heads: heads, tokens: tokens, dimension: d)
        var scalars = tensor.scalars
        let table = RotaryTable(self, rotaryDimension: r)
        scalars.withUnsafeMutableBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            for b in 0..<batch {
                for n in 0..<tokens {
                    table.load(position: positions[perBatch ? b * tokens + n : n])
                    for h in 0..<heads { table.rotate(base + strides.offset(batch: b, head: h, token: n)) }
                }
            }
        }
        return Tensor(uncheckedShape: tensor.shape, scalars: scalars)
    }

    /// Throws unless the rotation fits heads of `headDimension` values (a cache checks this when it is created).
    package func validate(headDimension d: Int) throws {
        try AttentionError.require(
            (rotaryDimension ?? 0) <= d, "rotary.rotaryDimension", expected: "<= the head dimension \(d)",
            actual: "\(rotaryDimension ?? 0)")
    }

    /// `queries` [batch, heads, Nq, d] rotated as the newest Nq of `count` tokens: positions count - Nq ..< count.
    /// - Throws: ``AttentionError/shapeMismatch(argument:expected:actual:reason:)`` when there are more queries than
    ///   tokens (they would have no position).
    package func applyToNewest(_ queries: Tensor, of count: Int) throws -> Tensor {
        try AttentionProblem.validateQueries(shape: queries.shape)
        let nq = queries.shape[2]
        guard nq <= count else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "at most \(count) tokens (axis 2)", actual: queries.shape,
                reason: "with a rotary embedding the queries are the cache's newest tokens and take their positions")
        }
        return try apply(to: queries, positions: Array((count - nq)..<count))
    }

    /// The largest position rotated: beyond it a Float64 angle p * w_0 keeps under 2^-20 of a radian's precision.
    public static let maximumPosition = (1 << 32) - 1

    /// Throws unless every position is in 0 ... maximumPosition.
    package static func validatePositions(_ positions: [Int], argument: String = "positions") throws {
        if let bad = positions.firstIndex(where: { $0 < 0 || $0 > maximumPosition }) {
            throw AttentionError.invalidValue(
                argument: "\(argument)[\(bad)]", expected: "in 0 ... \(maximumPosition)", actual: "\(positions[bad])")
        }
    }

    /// w'_k for every pair k of an r-value rotation, in Float64, with the position divisor folded in.
    package func inverseFrequencies(rotaryDimension r: Int) -> [Double] {
        var base = Double(self.base)
        if case .ntkAware(let factor) = scaling, r > 2 { base *= _pow(Double(factor), Double(r) / Double(r - 2)) }
        let w = (0..<(r / 2)).map { k in _pow(base, -2 * Double(k) / Double(r)) }
        switch scaling {
        case .none, .ntkAware: return w
        case .linear(let factor): return w.map { $0 / Double(factor) }
        case .yarn(let factor, let length, let fast, let slow, _):
            func dimension(_ beta: Float) -> Double {
                Double(r) * _log(Double(length) / (2 * Double.pi * Double(beta))) / (2 * _log(base))
            }
            let low = Swift.max(0, dimension(fast).rounded(.down))
            var high = Swift.min(Double(r - 1), dimension(slow).rounded(.up))
            if high == low { high += 0.001 }
            return w.enumerated().map { k, w in
                let ramp = Swift.min(1, Swift.max(0, (Double(k) - low) / (high - low)))
                return w * (1 - ramp) + w / Double(factor) * ramp
            }
        }
    }

    /// m: the factor rotated values are scaled by (YaRN's attention factor; 1 otherwise).
    package var magnitude: Double {
        guard case .yarn(let factor, _, _, _, let attentionFactor) = scaling else { return 1 }
        if let attentionFactor { return Double(attentionFactor) }
        return factor > 1 ? 0.1 * _log(Double(factor)) + 1 : 1
    }
}

/// The cosines and sines of one position for every pair, and the rotation of head rows by them: what `apply` and
/// the caches' appends run per token. Angles are computed in Float64 and rounded once (times m, for YaRN).
package final class RotaryTable {
    let pairing: RotaryEmbedding.Pairing
    let frequencies: [Double]
    let magnitude: Double
    private(set) var cosines: [Float]
    private(set) var sines: [Float]

    package init(_ rope: RotaryEmbedding, rotaryDimension r: Int) {
        pairing = rope.pairing
        frequencies = rope.inverseFrequencies(rotaryDimension: r)
        magnitude = rope.magnitude
        cosines = [Float](repeating: 0, count: r / 2)
        sines = cosines
    }

    /// Loads the cosines and sines of `position`.
    package func load(position: Int) {
        let p = Double(position)
        for k in frequencies.indices {
            let angle = p * frequencies[k]
            cosines[k] = Float(magnitude * _cos(angle))
            sines[k] = Float(magnitude * _sin(angle))
        }
    }

    /// Rotates the first r values of the head row at `row` by the loaded position.
    package func rotate(_ row: UnsafeMutablePointer<Float>) {
        cosines.withUnsafeBufferPointer { c in
            sines.withUnsafeBufferPointer { s in
                rotatePairs(
                    row, cosines: c.baseAddress!, sines: s.baseAddress!, pairs: frequencies.count,
                    interleaved: pairing == .interleaved)
            }
        }
    }
}

/// The cosines and sines of positions 0 ..< positions, computed once (as `RotaryTable` computes them, so a row
/// rotated from this table equals the same row rotated by `apply`), for rotating keys as a kernel loads them
/// (`StreamingKVCache`'s `.whenLoaded`): the positions within a cache are bounded by its size.
package final class RotaryPositionTable: @unchecked Sendable {
    let interleaved: Bool
    let pairs: Int
    let positions: Int
    /// [positions, pairs] each.
    private let cosines: [Float]
    private let sines: [Float]

    package init(_ rope: RotaryEmbedding, headDimension d: Int, positions: Int) {
        let r = rope.rotaryDimension ?? d - d % 2
        let table = RotaryTable(rope, rotaryDimension: r)
        interleaved = rope.pairing == .interleaved
        pairs = r / 2
        self.positions = positions
        var cosines: [Float] = []
        var sines: [Float] = []
        cosines.reserveCapacity(positions * pairs)
        sines.reserveCapacity(positions * pairs)
        for position in 0..<positions {
            table.load(position: position)
            cosines += table.cosines
            sines += table.sines
        }
        self.cosines = cosines
        self.sines = sines
    }

    /// Calls `body` with a rotation by this table (a key at logical position p rotated by position p, until the
    /// caller sets the rotation's `positionOffset`).
    package func withRowRotation<R>(_ body: (RowRotation) throws -> R) rethrows -> R {
        try cosines.withUnsafeBufferPointer { c in
            try sines.withUnsafeBufferPointer { s in
                try body(
                    RowRotation(
                        cosines: c.baseAddress!, sines: s.baseAddress!, positions: positions, pairs: pairs,
                        interleaved: interleaved, positionOffset: 0))
            }
        }
    }
}

/// A rotary rotation applied to key rows as the tile walk loads them: row r of a tile starting at logical key k0
/// is rotated by position k0 + r + positionOffset, clamped into the table (a key outside the table is one the
/// mask hides: see `StreamingKVCache`). Pointers into a `RotaryPositionTable`, valid inside its `withRowRotation`.
package struct RowRotation {
    let cosines: UnsafePointer<Float>
    let sines: UnsafePointer<Float>
    let positions: Int
    let pairs: Int
    let interleaved: Bool
    package var positionOffset: Int

    /// Rotates `count` rows (`stride` floats apart) whose first has logical key position `firstKey`.
    func rotate(_ rows: UnsafeMutablePointer<Float>, count: Int, stride: Int, firstKey: Int) {
        for r in 0..<count {
            let position = Swift.min(Swift.max(firstKey + r + positionOffset, 0), positions - 1)
            rotatePairs(
                rows + r * stride, cosines: cosines + position * pairs, sines: sines + position * pairs, pairs: pairs,
                interleaved: interleaved)
        }
    }
}

/// Rotates the `pairs` pairs of `row` (interleaved (2k, 2k + 1), or halves (k, k + pairs)) by the angles whose
/// cosines and sines are given: x' = x cos - y sin, y' = x sin + y cos. Halves run 16 pairs at a time, with the same
/// products and sums in the same order as the scalar loop, so both give the same bits.
@inline(__always)
package func rotatePairs(
    _ row: UnsafeMutablePointer<Float>, cosines c: UnsafePointer<Float>, sines s: UnsafePointer<Float>, pairs: Int,
    interleaved: Bool
) {
    var k = 0
    if !interleaved {
        while k + 16 <= pairs {
            let (x, y) = (load16(UnsafePointer(row), k), load16(UnsafePointer(row), k + pairs))
            let (cv, sv) = (load16(c, k), load16(s, k))
            store16(x * cv - y * sv, row, k)
            store16(x * sv + y * cv, row, k + pairs)
            k += 16
        }
    }
    while k < pairs {
        let (i, j) = interleaved ? (2 * k, 2 * k + 1) : (k, k + pairs)
        let (x, y) = (row[i], row[j])
        row[i] = x * c[k] - y * s[k]
        row[j] = x * s[k] + y * c[k]
        k += 1
    }
}
