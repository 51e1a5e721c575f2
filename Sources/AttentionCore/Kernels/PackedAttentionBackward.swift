// PackedAttentionBackward: the gradients of a packed (variable-length) batch, FlashAttention's varlen backward.
//
// Each sequence is its own backward problem, exactly as in the forward (`packedAttention`): the dense backward
// (`BackwardPass`, which owns every gradient row of a key/value head in one work item) reads its rows of Q, K, V,
// the output, dO and the log-sum-exp where they are, at the packed tensors' token-major strides (packing each tile's
// rows into its scratch, as it does for a [B, N, H, d] call), and writes its dQ, dK and dV rows in place. So a
// sequence's gradients are bitwise those of `attentionGradients` on that sequence alone, and bitwise identical for
// every thread count; the sink-logit gradients are summed over the sequences in order.
//
// Scheduling: with at least as many key/value heads as threads, the sequences run one after another, each on all
// the threads (its heads are the work items); with fewer, the sequences themselves run in parallel, longest first
// (by Nq x Nk), one thread each, so that a batch of many short sequences and few heads still fills the cores.
// Memory beyond the gradients: each running sequence's backward scratch (O(Nq * d) per worker, with its staged
// query and output-gradient rows).

/// The gradients of a packed batch's attention (``packedAttention(queries:keys:values:sequences:mask:options:)``)
/// with respect to its queries, keys, values and learned sink logits.
///
/// - Parameters:
///   - queries: the forward call's queries, [totalQueries, queryHeads, headDimension].
///   - keys: the forward call's keys, [totalKeys, keyValueHeads, headDimension].
///   - values: the forward call's values, [totalKeys, keyValueHeads, valueDimension].
///   - sequences: the forward call's sequence offsets.
///   - result: the forward's output [totalQueries, queryHeads, valueDimension] and log-sum-exp [totalQueries,
///     queryHeads]; the probabilities are rebuilt from the log-sum-exp, so it must be the one computed with these
///     inputs.
///   - outputGradient: dL/d(output), [totalQueries, queryHeads, valueDimension].
///   - mask: the forward call's mask.
///   - options: the forward call's options.
/// - Returns: dQ [totalQueries, queryHeads, headDimension], dK [totalKeys, keyValueHeads, headDimension],
///   dV [totalKeys, keyValueHeads, valueDimension] (summed over each group's query heads), and the sink logits'
///   gradients summed over the sequences. Sequence b's gradients are bitwise those of
///   ``attentionGradients(queries:keys:values:result:outputGradient:mask:options:)`` on sequence b alone
///   ([1, H, n, d] tensors), for every thread count; a sequence with no keys or no queries gets zero gradients.
/// - Throws: what the forward throws for these inputs (an option or mask invalid for some sequence names the
///   sequence), and a shape mismatch naming `result.output`, `result.logSumExp` or `outputGradient`.
///
/// ```swift
/// let sequences = try PackedSequences(lengths: [5, 17, 2])
/// let result = try packedAttention(queries: q, keys: k, values: v, sequences: sequences, mask: .causal)
/// let grads = try packedAttentionGradients(
///     queries: q, keys: k, values: v, sequences: sequences, result: result, outputGradient: dO, mask: .causal)
/// // grads.queries [24, 8, 64], grads.keys and grads.values [24, 2, 64]
/// ```
public func packedAttentionGradients(
    queries: Tensor, keys: Tensor, values: Tensor, sequences: PackedSequences, result: AttentionResult,
    outputGradient: Tensor, mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) throws -> AttentionGradients {
    let threads = options.threads ?? Parallel.defaultThreadCount
    var single = options
    single.threads = 1
    let problems = try packedProblems(
        queries: queries, keys: keys, values: values, sequences: sequences, mask: mask, options: options)
    let (totalQueries, hq, hkv) = (queries.shape[0], queries.shape[1], keys.shape[1])
    let (dk, dv) = (queries.shape[2], values.shape[2])
    let outputShape = [totalQueries, hq, dv]
    for (name, shape, expected, reason) in [
        ("result.output", result.output.shape, outputShape, "the forward's output for these queries and values"),
        ("result.logSumExp", result.logSumExp.shape, [totalQueries, hq], "one log-sum-exp per query token and head"),
        ("outputGradient", outputGradient.shape, outputShape, "the gradient of the loss has the output's shape"),
    ] where shape != expected {
        throw AttentionError.shapeMismatch(argument: name, expected: "\(expected)", actual: shape, reason: reason)
    }
    // Sequences across threads when the heads alone cannot fill them.
    let acrossSequences = hkv < threads && sequences.count > 1
    let perSequence =
        acrossSequences
        ? try packedProblems(
            queries: queries, keys: keys, values: values, sequences: sequences, mask: mask, options: single)
        : problems
    var dQ = [Float](repeating: 0, count: totalQueries * hq * dk)
    var dK = [Float](repeating: 0, count: keys.shape[0] * hkv * dk)
    var dV = [Float](repeating: 0, count: keys.shape[0] * hkv * dv)
    var sinkParts = [Float](repeating: 0, count: options.sinkLogits == nil ? 0 : sequences.count * hq)
    var workspace = [Int](repeating: 0, count: sequences.count)
    let order = (0..<sequences.count).sorted {
        let (a, b) = (problems[$0], problems[$1])
        let (costA, costB) = (a.queryLength * a.keyLength, b.queryLength * b.keyLength)
        return costA != costB ? costA > costB : $0 < $1
    }
    // Token-major rows: a sequence's row (head h, token t) is h * d + t * H * d floats past its first token's.
    let strides = BackwardStrides(
        queries: RowStrides(batch: 0, head: dk, token: hq * dk),
        keys: RowStrides(batch: 0, head: dk, token: hkv * dk),
        values: RowStrides(batch: 0, head: dv, token: hkv * dv),
        outputs: RowStrides(batch: 0, head: dv, token: hq * dv),
        logSumExp: RowStrides(batch: 0, head: 1, token: hq))
    let inputTensors = [queries, keys, values, result.output, result.logSumExp, outputGradient]
    withBaseAddresses(inputTensors) { inputs in
        dQ.withUnsafeMutableBufferPointer { queryGradients in
            dK.withUnsafeMutableBufferPointer { keyGradients in
                dV.withUnsafeMutableBufferPointer { valueGradients in
                    sinkParts.withUnsafeMutableBufferPointer { sinks in
                        workspace.withUnsafeMutableBufferPointer { bytes in
                            // Disjoint writes: sequence b writes only its own tokens' gradient rows, its sink slots
                            // and its workspace slot.
                            let shared = UncheckedSendable(
                                (
                                    inputs, queryGradients.baseAddress!, keyGradients.baseAddress!,
                                    valueGradients.baseAddress!, sinks.baseAddress, bytes.baseAddress!
                                ))
                            Parallel.forEach(items: order.count, threads: acrossSequences ? threads : 1) { _, index in
                                let b = order[index]
                                let (inputs, dQ, dK, dV, sinks, bytes) = shared.value
                                let (qs, ks) = (sequences.queryRange(b), sequences.keyRange(b))
                                if qs.isEmpty || ks.isEmpty { return }
                                let (q, k) = (qs.lowerBound, ks.lowerBound)
                                let run = BackwardPass(problem: perSequence[b]).run(
                                    BackwardInputs(
                                        q: inputs[0] + q * hq * dk, k: inputs[1] + k * hkv * dk,
                                        v: inputs[2] + k * hkv * dv, o: inputs[3] + q * hq * dv,
                                        lse: inputs[4] + q * hq, dO: inputs[5] + q * hq * dv, bias: nil,
                                        strides: strides),
                                    dQ: dQ + q * hq * dk, dK: dK + k * hkv * dk, dV: dV + k * hkv * dv)
                                if let part = run.sinkLogits, let sinks {
                                    for h in 0..<hq { sinks[b * hq + h] = part[h] }
                                }
                                bytes[b] = run.workspaceBytes
                            }
                        }
                    }
                }
            }
        }
    }
    var sinkGradients: [Float]? = nil
    if options.sinkLogits != nil {
        // Sequence order: the same sums for every thread count.
        var sums = [Float](repeating: 0, count: hq)
        for b in 0..<sequences.count { for h in 0..<hq { sums[h] += sinkParts[b * hq + h] } }
        sinkGradients = sums
    }
    // Concurrent sequences hold their scratch at once; the largest ones bound it.
    let concurrent = acrossSequences ? Parallel.workerCount(items: sequences.count, threads: threads) : 1
    return AttentionGradients(
        queries: Tensor(uncheckedShape: queries.shape, scalars: dQ),
        keys: Tensor(uncheckedShape: keys.shape, scalars: dK),
        values: Tensor(uncheckedShape: values.shape, scalars: dV), sinkLogits: sinkGradients, bias: nil,
        workspaceBytes: workspace.sorted(by: >).prefix(concurrent).reduce(0, +))
}
