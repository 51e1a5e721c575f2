// AttentionOptions and AttentionKernel: how scores are formed and which kernel forms them.
//
// Score of query i and key j in query head h, in this order:
//   s = scale * (q_i . k_j)
//   s = softcap * tanh(s / softcap)                 if softcap is set
//   s = s - alibiSlopes[h] * |d(i) - j|            if alibiSlopes is set; d(i) = i + keyLength - queryLength
//   s = s + bias[b, h, i, j]                        if bias is set (broadcast over size-1 batch/head/query axes)
// then masked keys (the mask, per-head masks and key padding) are removed and p = softmax(s) over the visible keys, with sinkLogits[h] (if set) joining
// the denominator only. A score of -infinity (e.g. from the bias) is treated exactly like a masked key.
//
// Range: the kernels carry logits as s * log2(e) / 2 and exponentiate 2^(2 (s - m)), so every finite Float logit
// (score, sink logit, slope times distance, bias) stays finite inside them, up to Float.greatestFiniteMagnitude.

/// Which kernel computes attention.
public enum AttentionKernel: Sendable, Hashable {
    /// Let the library choose: the decode kernel when (queryHeads / keyValueHeads) * queryLength <= 16, otherwise the
    /// blockwise kernel with tiles sized for the head grouping (see `AttentionKernel.resolved(for:)`).
    case automatic
    /// The quadratic baseline: materializes the whole [batch, queryHeads, queryLength, keyLength] score tensor.
    /// Refuses calls whose score tensor exceeds ``AttentionOptions/naiveMemoryBudget``.
    case naive
    /// The tiled online-softmax kernel (FlashAttention-2): O(threads * tile) scratch memory, never Nq x Nk.
    /// `queryBlock` is the query positions per block and head (default: 64 / (queryHeads / keyValueHeads), at
    /// least 1); `keyBlock` the keys per tile (default 64). Both must be >= 1 when given; values above the query or
    /// key length are clamped to it. The output does not depend on them beyond float rounding.
    case blockwise(queryBlock: Int? = nil, keyBlock: Int? = nil)
    /// Flash-decoding for few query rows against many keys: the blockwise kernel with all queries of a key/value
    /// group in one block (requires groupSize * queryLength <= 16), micro-kernels that vectorize along the head
    /// dimension instead of padding the rows to 16 lanes, and the keys split into chunks of `keysPerSplit` (default:
    /// chosen from the shape, see `decodeTiling`) that run on separate workers and are merged in a fixed order, so
    /// the output is the same for every thread count. Each key and value row is read once per key/value head.
    case decode(keysPerSplit: Int? = nil)
}

/// Everything about an attention call besides the tensors and the mask.
///
/// ```swift
/// var options = AttentionOptions()
/// options.softcap = 50          // Gemma-2 style logit soft-capping
/// options.threads = 1
/// ```
public struct AttentionOptions: Sendable {
    /// The multiplier of q . k; `nil` means 1 / sqrt(headDimension). Must be finite.
    public var scale: Float?
    /// Logit soft-capping `c * tanh(s / c)`; must be finite and > 0 when set.
    public var softcap: Float?
    /// ALiBi slopes, one per query head (`queryHeads` values, finite). Adds `-slope * |d(i) - j|`.
    public var alibiSlopes: [Float]?
    /// An additive score bias of shape [batch or 1, queryHeads or 1, queryLength or 1, keyLength] (a size-1 axis
    /// broadcasts). An entry of -infinity removes its key exactly like a mask, even when the key or its score holds
    /// NaN or infinity. Entries of +infinity or NaN poison their row (the math is undefined). For key padding,
    /// `keyPadding` costs no memory and skips the padded tiles; a [B, 1, 1, Nk] bias works too.
    public var bias: Tensor?
    /// Key padding of a padded batch: which keys of each sequence are real tokens (see ``SequencePadding``); padding
    /// keys are removed like masked ones, for every query and head of their sequence, intersected with the mask.
    public var keyPadding: SequencePadding?
    /// Query padding of a padded batch: which query rows of each sequence are real tokens. Padding rows are not
    /// computed: each is a row that sees no key (zeros, log-sum-exp -infinity or its sink logit).
    public var queryPadding: SequencePadding?
    /// Learned attention-sink logits (gpt-oss style), one per query head, finite: each adds `exp(sink)` to its
    /// head's softmax denominator without adding an output term. Unrelated to sink *tokens*
    /// (``AttentionMask/sinks(count:window:)``).
    public var sinkLogits: [Float]?
    /// Per-head visibility (DuoAttention-style head policies): `headMasks[h]` restricts query head h in addition
    /// to the call's mask (the two are intersected). One mask per query head; `nil` means every head uses the call's
    /// mask alone. Heads sharing a key/value head still read each key tile once: a tile is skipped only when it is
    /// empty for all of them.
    public var headMasks: [AttentionMask]?
    /// The axis order of the queries, keys and values given to `attention` / `partialAttention` on tensors
    /// (default [batch, heads, tokens, d]); `.bnhd` reads [batch, tokens, heads, d] in place, without a transpose.
    /// Stored tensors (`StoredTensor`) take either layout; caches hold `.bhnd` and reject `.bnhd`.
    public var layout: TensorLayout
    /// The output's axis order; nil means the same as `layout`. (Log-sum-exp is always [batch, heads, tokens].)
    public var outputLayout: TensorLayout?
    /// The kernel to run.
    public var kernel: AttentionKernel
    /// Worker threads; `nil` means every active processor. Must be >= 1. Results are bitwise identical for
    /// every thread count.
    public var threads: Int?
    /// The largest score tensor, in bytes, the naive kernel may allocate (default 4 GiB). Must be >= 0.
    public var naiveMemoryBudget: Int

    /// Creates options; every parameter defaults to plain scaled dot-product attention.
    public init(
        scale: Float? = nil, softcap: Float? = nil, alibiSlopes: [Float]? = nil, bias: Tensor? = nil,
        keyPadding: SequencePadding? = nil, queryPadding: SequencePadding? = nil, sinkLogits: [Float]? = nil,
        headMasks: [AttentionMask]? = nil, layout: TensorLayout = .bhnd, outputLayout: TensorLayout? = nil,
        kernel: AttentionKernel = .automatic,
        threads: Int? = nil, naiveMemoryBudget: Int = 4 << 30
    ) {
        self.scale = scale
        self.softcap = softcap
        self.alibiSlopes = alibiSlopes
        self.bias = bias
        self.keyPadding = keyPadding
        self.queryPadding = queryPadding
        self.sinkLogits = sinkLogits
        self.headMasks = headMasks
        self.layout = layout
        self.outputLayout = outputLayout
        self.kernel = kernel
        self.threads = threads
        self.naiveMemoryBudget = naiveMemoryBudget
    }
}
