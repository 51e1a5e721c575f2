// FeatureMap and LinearAttentionOptions: what linear attention computes.
//
// Linear attention replaces softmax(q . k) with phi(q) . phi(k) for a feature map phi, so that
// sum_j (phi(q_i) . phi(k_j)) v_j = phi(q_i) (sum_j phi(k_j)^T v_j) costs O(d_phi * d_v) per token instead of O(N).

/// The feature map phi applied to every query and key row.
public enum FeatureMap: Sendable {
    /// phi(x) = x (d_phi = d). Features can be negative, so a normalizing denominator can be 0, negative or close
    /// to 0, where the normalized output is ill-conditioned (any Float32 summation order loses digits); use it
    /// unnormalized, or a positive map when normalizing.
    case identity
    /// phi(x) = elu(x) + 1: x + 1 for x > 0, e^x otherwise (Katharopoulos et al., 2020). Positive, except that e^x
    /// is flushed to 0 below x = -87.3 (where it would be subnormal).
    case eluPlusOne
    /// phi(x) = max(x, 0). A row with no positive feature gets a denominator of 0 (its output is then 0).
    case relu
    /// The second-order Taylor features of exp (BASED, Arora et al., 2024): phi(x) = [1, x, vec(x x^T) / sqrt(2)],
    /// d_phi = 1 + d + d^2, so that phi(q) . phi(k) = 1 + q . k + (q . k)^2 / 2. To approximate
    /// exp(q . k / sqrt(d)) scale queries and keys by d^(-1/4) first, as BASED does.
    case taylor2
    /// A caller-supplied map from a row of `d` floats to `outputDimension` floats. It must be pure and thread-safe:
    /// the kernel calls it from several threads.
    case custom(
        outputDimension: Int,
        @Sendable (_ input: UnsafeBufferPointer<Float>, _ output: UnsafeMutableBufferPointer<Float>) -> Void)

    /// d_phi for input rows of `inputDimension` floats.
    public func featureDimension(inputDimension d: Int) -> Int {
        switch self {
        case .identity, .eluPlusOne, .relu: return d
        case .taylor2: return 1 + d + d * d
        case .custom(let outputDimension, _): return outputDimension
        }
    }

    /// Writes phi(input[0..<d]) to output[0..<featureDimension(d)], each feature times `outputScale`.
    package func apply(
        _ input: UnsafePointer<Float>, count d: Int, into output: UnsafeMutablePointer<Float>, outputScale: Float = 1
    ) {
        switch self {
        case .identity, .eluPlusOne, .relu:
            // 16 features per step; the last Dk % 16 go through the same vector code in a zero-padded vector, so
            // every feature is computed the same way (elu + 1 uses the vectorized exp).
            var c = 0
            while c + 16 <= d {
                store16(elementwise(load16(input, c)) * outputScale, output, c)
                c += 16
            }
            if c < d {
                var tail = SIMD16<Float>()
                for lane in 0..<(d - c) { tail[lane] = input[c + lane] }
                let mapped = elementwise(tail) * outputScale
                for lane in 0..<(d - c) { output[c + lane] = mapped[lane] }
            }
        case .taylor2:
            output[0] = outputScale
            for c in 0..<d { output[1 + c] = input[c] * outputScale }
            let half = Float(0.5).squareRoot() * outputScale
            for a in 0..<d {
                let row = output + 1 + d + a * d
                let xa = input[a] * half
                for b in 0..<d { row[b] = xa * input[b] }
            }
        case .custom(let outputDimension, let map):
            map(
                UnsafeBufferPointer(start: input, count: d),
                UnsafeMutableBufferPointer(start: output, count: outputDimension))
            if outputScale != 1 {
                for c in 0..<outputDimension { output[c] *= outputScale }
            }
        }
    }
}

extension FeatureMap {
    /// phi of 16 lanes, for the element-wise maps. A NaN stays NaN (the comparisons are false for it).
    @inline(__always)
    fileprivate func elementwise(_ x: SIMD16<Float>) -> SIMD16<Float> {
        switch self {
        case .eluPlusOne: return vectorExp(x).replacing(with: x + 1, where: x .> 0)
        case .relu: return x.replacing(with: 0, where: x .< 0)
        default: return x
        }
    }
}

/// How linear attention runs.
///
/// ```swift
/// var options = LinearAttentionOptions(featureMap: .eluPlusOne, mask: .causal)
/// options.decay = [Float](repeating: 0.97, count: 8)   // RetNet-style per-head decay
/// ```
public struct LinearAttentionOptions: Sendable {
    /// phi (default elu + 1).
    public var featureMap: FeatureMap
    /// `.causal`: token i sees keys j <= i (computed chunkwise); `.none`: every query sees every key.
    public var mask: LinearAttentionMask
    /// Divide each output row by phi(q_i) . sum_j w_ij phi(k_j) (the same weights as the numerator). A row whose
    /// denominator is 0 (e.g. relu features that are all 0) outputs zeros.
    public var normalize: Bool
    /// Per-query-head decay lambda in (0, 1] (RetNet, TransNormer, Lightning): key j contributes to query i with
    /// weight lambda^(i - j). Causal only. `nil` means no decay (lambda = 1).
    public var decay: [Float]?
    /// Tokens per chunk (>= 1): the causal algorithm's block, and the batch of keys or queries per state update.
    /// `nil` means 16 with the causal mask and 64 without (the fastest of the sizes measured, as recorded in
    /// LinearAttention.swift).
    public var chunkSize: Int?
    /// Worker threads; `nil` means every active processor. Results are bitwise identical for every count.
    public var threads: Int?

    /// Options for `linearAttention`; every argument has a default (elu + 1 features, no mask, normalized).
    public init(
        featureMap: FeatureMap = .eluPlusOne, mask: LinearAttentionMask = .none, normalize: Bool = true,
        decay: [Float]? = nil, chunkSize: Int? = nil, threads: Int? = nil
    ) {
        self.featureMap = featureMap
        self.mask = mask
        self.normalize = normalize
        self.decay = decay
        self.chunkSize = chunkSize
        self.threads = threads
    }

    /// Whether the mask is `.causal`.
    package var isCausal: Bool { mask == .causal }

    /// The mask as a Boolean, the spelling before 0.2.
    @available(*, deprecated, renamed: "mask", message: "use mask: .causal or mask: .none")
    public var causal: Bool {
        get { isCausal }
        set { mask = newValue ? .causal : .none }
    }

    /// The initializer before 0.2, with the mask as a Boolean.
    @available(*, deprecated, renamed: "init(featureMap:mask:normalize:decay:chunkSize:threads:)")
    public init(
        featureMap: FeatureMap = .eluPlusOne, causal: Bool, normalize: Bool = true, decay: [Float]? = nil,
        chunkSize: Int? = nil, threads: Int? = nil
    ) {
        self.init(
            featureMap: featureMap, mask: causal ? .causal : .none, normalize: normalize, decay: decay,
            chunkSize: chunkSize, threads: threads)
    }
}

/// The masks linear attention supports: its recurrent form sees either every key or every earlier key. Spelled as
/// the matching ``AttentionMask`` cases, so `mask: .causal` reads the same in every call of the package.
public enum LinearAttentionMask: Sendable, Hashable {
    /// Every query sees every key.
    case none
    /// Query i sees keys j <= i.
    case causal
}
