// The public attention entry points: validate, pick a kernel, run it.
//
// Shapes: queries [B, Hq, Nq, Dk], keys [B, Hkv, Nk, Dk], values [B, Hkv, Nk, Dv] with Hq a multiple of Hkv;
// output [B, Hq, Nq, Dv]; log-sum-exp [B, Hq, Nq]. The score formula is in AttentionOptions.swift, the mask
// semantics in AttentionMask.swift.

/// The output of an attention call together with what a caller needs to merge or account for it.
public struct AttentionResult: Sendable {
    /// [batch, queryHeads, queryLength, valueDimension].
    public var output: Tensor
    /// [batch, queryHeads, queryLength]: log of each row's softmax denominator (natural log), including the
    /// row's sink logit if one was set; -infinity for a row that sees no key and has no sink logit.
    public var logSumExp: Tensor
    /// Bytes of scratch memory the kernel allocated for this call (score matrices, packed tiles), excluding the
    /// output and log-sum-exp tensors.
    public var workspaceBytes: Int

    /// Wraps a partial result computed elsewhere (another process, another device) so that it can be passed to
    /// `mergeAttention`, which validates the shapes.
    public init(output: Tensor, logSumExp: Tensor, workspaceBytes: Int = 0) {
        self.output = output
        self.logSumExp = logSumExp
        self.workspaceBytes = workspaceBytes
    }
}

/// Scaled dot-product attention: `softmax(scale * Q K^T + bias, masked) V`, per batch and query head.
///
/// - Parameters:
///   - queries: [batch, queryHeads, queryLength, headDimension].
///   - keys: [batch, keyValueHeads, keyLength, headDimension]; `queryHeads` must be a multiple of
///     `keyValueHeads` (grouped-query attention: query head h reads key/value head h / (queryHeads / keyValueHeads)).
///   - values: [batch, keyValueHeads, keyLength, valueDimension].
///   - mask: which keys each query sees (default: all). A query that sees no key outputs zeros.
///   - options: scale, softcap, ALiBi, bias, sink logits, kernel choice and threads.
/// - Returns: [batch, queryHeads, queryLength, valueDimension].
/// - Throws: ``AttentionError`` for inconsistent shapes, invalid options, or a naive call over its memory budget.
/// - Complexity: O(B * Hq * Nq * Nk * (Dk + Dv)) time; memory depends on the kernel (see ``AttentionKernel``).
///
/// ```swift
/// let q = try Tensor.randomNormal(shape: [1, 8, 128, 64], seed: 1)
/// let k = try Tensor.randomNormal(shape: [1, 2, 128, 64], seed: 2)   // 4 query heads per key/value head
/// let v = try Tensor.randomNormal(shape: [1, 2, 128, 64], seed: 3)
/// let o = try attention(queries: q, keys: k, values: v, mask: .causal)  // [1, 8, 128, 64]
/// ```
public func attention(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    try partialAttention(
        queries: queries, keys: keys, values: values, mask: mask, options: options
    ).output
}

/// Like ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)``, also returning each row's log-sum-exp and
/// the kernel's workspace size.
public func partialAttention(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    let problem = try AttentionProblem(
        queries: queries, keys: keys, values: values, mask: mask, options: options)
    return try withKeyValueSegments(keys: keys, values: values, layout: options.layout) { segments in
        try runAttention(problem, queries: queries, segments: segments)
    }
}

/// ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` writing into `output` instead of returning a new
/// tensor, for callers that run it repeatedly (every layer of every step) and keep one output buffer. A new result's
/// memory is fresh pages that the operating system maps and zeroes on first write once it is too large for the
/// allocator to recycle (the README gives the measured cost); writing into a tensor written before skips that. Every
/// element of `output` is overwritten (its old contents do not matter); if its storage is shared with another tensor it
/// is copied first, as for any mutation of a ``Tensor``.
///
/// ```swift
/// var output = try Tensor(zeros: [1, 8, 4096, 64])
/// for layer in layers { try attention(queries: q[layer], keys: k[layer], values: v[layer], into: &output) }
/// ```
/// - Throws: what ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` throws, and
///   ``AttentionError/shapeMismatch(argument:expected:actual:reason:)`` unless `output.shape` is [batch, queryHeads,
///   queryLength, valueDimension]; `output` is untouched when it throws.
public func attention(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions(), into output: inout Tensor
) throws {
    let problem = try AttentionProblem(
        queries: queries, keys: keys, values: values, mask: mask, options: options)
    guard output.shape == problem.outputShape else {
        throw AttentionError.shapeMismatch(
            argument: "output", expected: "\(problem.outputShape) (batch, query heads, queries, value dimension)",
            actual: output.shape, reason: "the result is written into it")
    }
    // Move the storage out so that it is uniquely referenced (no copy on write) unless the caller shares it.
    let shape = output.shape
    var storage: [Float]? = output.scalars
    output = Tensor(uncheckedShape: [0], scalars: [])
    do {
        let result = try withKeyValueSegments(keys: keys, values: values, layout: options.layout) { segments in
            try runAttention(problem, queries: queries, segments: segments, reusing: &storage)
        }
        output = result.output
    } catch {
        output = Tensor(uncheckedShape: shape, scalars: storage ?? [Float](repeating: 0, count: shape.reduce(1, *)))
        throw error
    }
}

/// Runs the kernel `problem.options.kernel` resolves to over keys and values given as segments (a tensor, or a
/// cache's buffers). The problem is already validated.
package func runAttention(
    _ problem: AttentionProblem, queries: Tensor, segments: [KeyValueSegment]
) throws -> AttentionResult {
    var fresh: [Float]? = nil
    return try runAttention(problem, queries: queries, segments: segments, reusing: &fresh)
}

/// `runAttention`, writing the output into `reused` when it has the output's element count (see `tiledAttention`).
/// `reused` is left untouched when this throws.
package func runAttention(
    _ problem: AttentionProblem, queries: Tensor, segments: [KeyValueSegment], reusing reused: inout [Float]?
) throws -> AttentionResult {
    let kernel = problem.options.kernel.resolved(for: problem)
    if kernel == .naive { try checkNaiveBudget(problem) }
    return withResultStorage(problem, queries: queries, reusing: &reused) { q, o, lse in
        runAttention(problem, kernel: kernel, queries: q, segments: segments, output: o, logSumExp: lse)
    }
}

/// Runs `kernel` (resolved for `problem`, its budget checked) on raw memory laid out by `problem`'s strides;
/// returns the workspace bytes.
package func runAttention(
    _ problem: AttentionProblem, kernel: ResolvedKernel, queries: UnsafePointer<Float>?, segments: [KeyValueSegment],
    output: UnsafeMutablePointer<Float>?, logSumExp: UnsafeMutablePointer<Float>?
) -> Int {
    switch kernel {
    case .naive:
        return naiveAttention(problem, queries: queries, segments: segments, output: output, logSumExp: logSumExp)
    case .blockwise(let tiling), .decode(let tiling):
        return tiledAttention(
            problem, queries: queries, segments: segments, tiling: tiling, scoreStorage: .perWorkerTile,
            output: output, logSumExp: logSumExp)
    }
}
