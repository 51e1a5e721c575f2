// Attention over stored tensors: queries, keys and values in Float16, BFloat16 (keys and values also in 8- and
// 4-bit blocks), with the output in Float32 or a 16-bit format, through the same kernels as Float32 tensors; the
// same for packed batches, and the backward of both (Float32 gradients, see `attentionGradients` below).
//
// Where each operand is converted:
// - keys and values: tile by tile in the tile walk, into a per-worker tile of Bc rows that the micro-kernels read
//   (keys before the scores, values after them); the kernels accumulate in Float32. No Float32 copy of K or V
//   exists at any time, so K and V cost their stored bytes only. Every kernel reads them this way: blockwise,
//   decode, naive and block-sparse. [B, N, H, d] rows are decoded at their stride, or, when the workers stage
//   (batch, head) groups (`RowStaging`), from a per-worker copy of one group's encoded rows.
// - queries: decoded once per call into a Float32 tensor of the queries' shape (Nq * Dk floats per head). Each
//   work item copies its query rows into scratch (scaled, in its micro-kernel layout) anyway, so this adds one pass
//   over Q; its memory is what Float32 queries would take, at most the output's size for Dk = Dv. The pass runs on
//   the call's threads, into storage that is not zero-filled first (`overwrittenScalars`). Decoded on one thread
//   into zeroed memory (as `Tensor(stored)` did), the queries of GQA 32/8 at N 2048, d 128 (32 MiB, four times the keys
//   and values) held the two-thread Float16 call at 0.82-0.87x of the Float32 tensor call's rate; now 0.96-0.99x
//   (Zen 3, 2026-12-07, three runs each of `attention-bench --suite blockwise`'s paired lines, alternated). One
//   thread: 0.92-0.98x either way.
// - output: written in Float32 by the kernel, then encoded into the requested format (one pass, rounded to nearest
//   even). The Float32 result exists until the call returns.
// - the backward: Q and dO rows decoded once per work item into its staging scratch, K and V tiles as the
//   backward packs them (`BackwardRows`); gradients are Float32.
// Shapes are those of `attention(queries:keys:values:mask:options:)` in either layout, and of `packedAttention`.

/// Attention with queries, keys and values held in any ``StorageFormat``, returning a Float32 output.
///
/// Keys and values may be in different formats, and each format may differ from the queries'. The result is
/// exactly that of ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` on the decoded tensors
/// (`Tensor(keys)` ...) up to float reassociation, computed without expanding keys or values into Float32.
///
/// - Parameters:
///   - queries: [batch, queryHeads, queryLength, headDimension] in `.float32`, `.float16` or `.bfloat16`.
///   - keys: [batch, keyValueHeads, keyLength, headDimension] in any format.
///   - values: [batch, keyValueHeads, keyLength, valueDimension] in any format.
///   - mask: as for ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)``.
///   - options: as for ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)``.
/// - Returns: [batch, queryHeads, queryLength, valueDimension] in Float32.
/// - Throws: ``AttentionError`` as ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` does, and for
///   quantized queries (named `queries.format`).
///
/// ```swift
/// let q = try StoredTensor(Tensor.randomNormal(shape: [1, 8, 1024, 64], seed: 1), format: .bfloat16)
/// let k = try StoredTensor(Tensor.randomNormal(shape: [1, 2, 1024, 64], seed: 2), format: .bfloat16)
/// let v = try StoredTensor(Tensor.randomNormal(shape: [1, 2, 1024, 64], seed: 3), format: .bfloat16)
/// let o = try attention(queries: q, keys: k, values: v, mask: .causal)   // Tensor [1, 8, 1024, 64]
/// ```
public func attention(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    try partialAttention(queries: queries, keys: keys, values: values, mask: mask, options: options).output
}

/// The stored-tensor ``attention(queries:keys:values:mask:options:)-(StoredTensor,_,_,_,_)``, with the output encoded
/// in `outputFormat`: the Float32 result rounded to nearest even (`.float16`, `.bfloat16`), or kept (`.float32`).
/// - Throws: what the Float32-output call throws, and for a quantized `outputFormat`.
public func attention(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions(), outputFormat: StorageFormat
) throws -> StoredTensor {
    try requireFloatFormat(outputFormat, "outputFormat")
    let output = try attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
    return try StoredTensor(output, format: outputFormat)
}

/// Like the stored-tensor ``attention(queries:keys:values:mask:options:)-(StoredTensor,_,_,_,_)``, also returning each
/// row's log-sum-exp and the kernel's workspace (which includes the per-worker decoded tiles).
public func partialAttention(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    let q = try decodedQueries(queries, threads: Swift.max(1, options.threads ?? Parallel.defaultThreadCount))
    let problem = try AttentionProblem(
        shapesInLayout: q.shape, keys.shape, values.shape, mask: mask, options: options)
    return try withKeyValueSegments(keys: keys, values: values, layout: options.layout) { segments in
        try runAttention(problem, queries: q, segments: segments)
    }
}

/// ``blockSparseAttention(queries:keys:values:layout:mask:options:)-(Tensor,_,_,_,_,_)`` over stored tensors: the
/// listed key blocks only, each tile of keys and values decoded as it is loaded.
/// - Returns: [batch, queryHeads, Nq, Dv] in Float32.
/// - Throws: what `blockSparseAttention` and the stored `attention` throw.
public func blockSparseAttention(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, layout: BlockSparseLayout,
    mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    let (mask, options) = try blockSparseDescription(
        layout: layout, mask: mask, options: options,
        queryHeads: queries.shape.count == 4 ? options.layout.canonical(queries.shape)[1] : 0)
    return try attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// The gradients of the stored-tensor ``partialAttention(queries:keys:values:mask:options:)-(StoredTensor,_,_,_,_)``
/// with respect to its queries, keys and values (and learned sink logits, and the bias), as Float32 tensors: the
/// backward of a mixed-precision training step, whose activations are Float16 or BFloat16 and whose gradients are
/// accumulated in Float32.
///
/// The gradients are bitwise those of
/// ``attentionGradients(queries:keys:values:result:outputGradient:mask:options:)-(Tensor,_,_,_,_,_,_)`` on the
/// decoded tensors (`Tensor(queries)` ...), computed without a Float32 copy of any input: each work item decodes its
/// group's query and output-gradient rows once (O(Nq * d) per worker, as that call stages [B, N, H, d] rows) and
/// the key and value tiles as it packs them, which it does for Float32 tensors too. So the call costs what the
/// Float32 one does plus one pass of decoding. Quantized keys and values get the gradients with respect to their
/// stored (dequantized) values. To keep a gradient in 16 bits, encode it:
/// `StoredTensor(gradients.queries, format: .bfloat16)`.
///
/// - Parameters:
///   - queries: the forward call's queries, `.float32`, `.float16` or `.bfloat16`.
///   - keys: the forward call's keys, any format.
///   - values: the forward call's values, any format.
///   - result: the forward's Float32 output and log-sum-exp (the stored-tensor `partialAttention` returns them).
///   - outputGradient: dL/d(output), [B, Hq, Nq, Dv], `.float32`, `.float16` or `.bfloat16`.
///   - mask: the forward call's mask.
///   - options: the forward call's options (either layout: with `.bnhd` the tensors are [B, N, H, d] and the
///     gradients come back so).
/// - Returns: dQ, dK and dV in Float32, the shapes of `queries`, `keys` and `values`; bitwise identical for every
///   thread count.
/// - Throws: ``AttentionError`` as the Float32 call does, and for quantized queries or output gradient (naming
///   `queries.format` or `outputGradient.format`).
///
/// ```swift
/// let result = try partialAttention(queries: q, keys: k, values: v, mask: .causal)   // q, k, v in .bfloat16
/// let dO = try StoredTensor(lossGradient(result.output), format: .bfloat16)
/// let grads = try attentionGradients(
///     queries: q, keys: k, values: v, result: result, outputGradient: dO, mask: .causal)
/// ```
public func attentionGradients(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, result: AttentionResult,
    outputGradient: StoredTensor, mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) throws -> AttentionGradients {
    try requireFloatFormat(queries.format, "queries.format")
    try requireFloatFormat(outputGradient.format, "outputGradient.format")
    let problem = try AttentionProblem(
        shapesInLayout: queries.shape, keys.shape, values.shape, mask: mask, options: options)
    let strides = try BackwardStrides(problem, result: result, outputGradientShape: outputGradient.shape)
    let bias = options.bias.flatMap { $0.scalars.isEmpty ? nil : $0 }
    return withStoredRows(queries, keys, values, outputGradient, result: result, bias: bias) { rows, floats in
        BackwardPass(problem: problem).gradients(
            BackwardInputs(
                q: rows.q, k: rows.k, v: rows.v, o: floats[0], lse: floats[1], dO: rows.dO,
                bias: bias != nil ? floats[2] : nil, strides: strides),
            queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape)
    }
}

/// ``packedAttention(queries:keys:values:sequences:mask:options:)-(Tensor,_,_,_,_,_)`` over stored tensors: queries
/// [totalQueries, queryHeads, headDimension] in `.float32`, `.float16` or `.bfloat16`, keys and values [totalKeys,
/// keyValueHeads, d] in any format. As for the dense stored call, the queries are decoded once and each sequence's key
/// and value tiles as the kernels load them; each sequence's result is bitwise that of the Float32 packed call on the
/// decoded tensors.
/// - Returns: output [totalQueries, queryHeads, valueDimension] (Float32) and log-sum-exp [totalQueries, queryHeads].
/// - Throws: what the Float32 packed call throws, and for quantized queries (named `queries.format`).
public func packedAttention(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, sequences: PackedSequences,
    mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    try requireFloatFormat(queries.format, "queries.format")
    let problems = try packedProblems(
        queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, sequences: sequences, mask: mask,
        options: options)
    let q = try decodedQueries(queries, threads: Swift.max(1, options.threads ?? Parallel.defaultThreadCount))
    var fresh: [Float]? = nil
    return keys.withRows { k in
        values.withRows { v in
            packedAttention(
                problems, queries: q,
                keys: PackedRows(base: k, codec: keys.codec, tokens: keys.shape[0], heads: keys.shape[1]),
                values: PackedRows(base: v, codec: values.codec, tokens: values.shape[0], heads: values.shape[1]),
                sequences: sequences, options: options, reusing: &fresh)
        }
    }
}

/// The packed backward over stored tensors: the gradients of the stored
/// ``packedAttention(queries:keys:values:sequences:mask:options:)-(StoredTensor,_,_,_,_,_)``, rows decoded as the
/// dense stored backward decodes them. Float32 gradients in the packed shapes, each sequence's bitwise those of the
/// Float32 packed backward on the decoded tensors.
/// - Throws: what the Float32 packed backward throws, and for quantized queries or output gradient (named
///   `queries.format` or `outputGradient.format`).
public func packedAttentionGradients(
    queries: StoredTensor, keys: StoredTensor, values: StoredTensor, sequences: PackedSequences,
    result: AttentionResult, outputGradient: StoredTensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionGradients {
    try requireFloatFormat(queries.format, "queries.format")
    try requireFloatFormat(outputGradient.format, "outputGradient.format")
    let problems = try packedBackwardProblems(
        queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, sequences: sequences,
        result: result, outputGradientShape: outputGradient.shape, mask: mask, options: options)
    return withStoredRows(queries, keys, values, outputGradient, result: result, bias: nil) { rows, floats in
        packedGradients(
            problems, sequences: sequences, q: rows.q, k: rows.k, v: rows.v, o: floats[0], lse: floats[1],
            dO: rows.dO, queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, options: options)
    }
}

/// Calls `body` with the encoded rows of a stored backward's queries, keys, values and output gradient, and the
/// base addresses of the forward's output, log-sum-exp and (if given) the bias.
private func withStoredRows<R>(
    _ queries: StoredTensor, _ keys: StoredTensor, _ values: StoredTensor, _ outputGradient: StoredTensor,
    result: AttentionResult, bias: Tensor?,
    _ body: ((q: BackwardRows, k: BackwardRows, v: BackwardRows, dO: BackwardRows), [UnsafePointer<Float>]) -> R
) -> R {
    queries.withRows { q in
        keys.withRows { k in
            values.withRows { v in
                outputGradient.withRows { dO in
                    withBaseAddresses([result.output, result.logSumExp] + (bias.map { [$0] } ?? [])) { floats in
                        // A tensor without rows (no queries or no keys) is never read: any address serves.
                        let none = UnsafeRawPointer(floats[0])
                        return body(
                            (
                                .encoded(q ?? none, queries.codec), .encoded(k ?? none, keys.codec),
                                .encoded(v ?? none, values.codec), .encoded(dO ?? none, outputGradient.codec)
                            ), floats)
                    }
                }
            }
        }
    }
}

/// Queries as Float32, after checking that their format is one queries may have: decoded on up to `threads`
/// workers (see the file header).
private func decodedQueries(_ queries: StoredTensor, threads: Int) throws -> Tensor {
    try requireFloatFormat(queries.format, "queries.format")
    return Tensor(queries, threads: threads)
}

/// Queries and outputs are activations: Float32, Float16 or BFloat16, never block-quantized.
private func requireFloatFormat(_ format: StorageFormat, _ argument: String) throws {
    try AttentionError.require(
        !format.isQuantized, argument, expected: "float32, float16 or bfloat16", actual: "\(format)")
}
