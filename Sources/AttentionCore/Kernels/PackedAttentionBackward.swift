// PackedAttentionBackward: the gradients of a packed (variable-length) batch, FlashAttention's varlen backward.
//
// Each sequence is its own backward problem, exactly as in the forward (`packedAttention`), and its work items are
// the dense backward's (`BackwardPass.runItem`: one per key/value head, owning every gradient row of that head):
// they read the sequence's rows of Q, K, V, the output, dO and the log-sum-exp where they are, at the packed
// tensors' token-major strides (K and V packed per key tile, as always; Q and dO rows staged once per item when
// several heads interleave), and write its dQ, dK and dV rows in place. An item computes the same whichever worker
// runs it, so a sequence's gradients are bitwise those of `attentionGradients` on that sequence alone, for every
// thread count; the sink-logit gradients are summed over the sequences in order.
//
// Scheduling, as the forward's: one parallel loop over the (sequence, key/value head) items of every sequence, the
// longest sequences first (by Nq x Nk), so that short sequences fill the gaps the long ones leave.
// Memory beyond the gradients: one scratch per worker, sized for the sequence with the most queries (O(Nq * d)).
// Stored tensors (`packedAttentionGradients` over `StoredTensor`s, Attention+Stored.swift) run the same items on
// encoded rows (`BackwardRows`).

/// The gradients of a packed batch's attention
/// (``packedAttention(queries:keys:values:sequences:mask:options:)-(Tensor,_,_,_,_,_)``) with respect to its queries,
/// keys, values and learned sink logits.
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
///   ``attentionGradients(queries:keys:values:result:outputGradient:mask:options:)-(Tensor,_,_,_,_,_,_)`` on
///   sequence b alone ([1, H, n, d] tensors), for every thread count; a sequence with no keys or no queries gets
///   zero gradients. 2.5x the forward's multiply-adds; O(Nq * d) scratch per worker beyond the gradients (Nq the
///   most queries of any sequence), nothing of size Nq x Nk.
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
    let problems = try packedBackwardProblems(
        queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, sequences: sequences,
        result: result, outputGradientShape: outputGradient.shape, mask: mask, options: options)
    return withBaseAddresses([queries, keys, values, result.output, result.logSumExp, outputGradient]) {
        packedGradients(
            problems, sequences: sequences, q: .float32($0[0]), k: .float32($0[1]), v: .float32($0[2]), o: $0[3],
            lse: $0[4], dO: .float32($0[5]), queryShape: queries.shape, keyShape: keys.shape,
            valueShape: values.shape, options: options)
    }
}

/// Validates a packed backward call (tensors of these shapes, in any format): one problem per sequence.
func packedBackwardProblems(
    queryShape: [Int], keyShape: [Int], valueShape: [Int], sequences: PackedSequences, result: AttentionResult,
    outputGradientShape: [Int], mask: AttentionMask, options: AttentionOptions
) throws -> [AttentionProblem] {
    let problems = try packedProblems(
        queryShape: queryShape, keyShape: keyShape, valueShape: valueShape, sequences: sequences, mask: mask,
        options: options)
    let (totalQueries, hq, dv) = (queryShape[0], queryShape[1], valueShape[2])
    let outputShape = [totalQueries, hq, dv]
    for (name, shape, expected, reason) in [
        ("result.output", result.output.shape, outputShape, "the forward's output for these queries and values"),
        ("result.logSumExp", result.logSumExp.shape, [totalQueries, hq], "one log-sum-exp per query token and head"),
        ("outputGradient", outputGradientShape, outputShape, "the gradient of the loss has the output's shape"),
    ] where shape != expected {
        throw AttentionError.shapeMismatch(argument: name, expected: "\(expected)", actual: shape, reason: reason)
    }
    return problems
}

/// The packed backward on validated `problems`, over rows of queries, keys, values and output gradient in any
/// format (`BackwardRows`, at float offsets into [tokens, heads, d] tensors) and the forward's Float32 output and
/// log-sum-exp.
func packedGradients(
    _ problems: [AttentionProblem], sequences: PackedSequences, q: BackwardRows, k: BackwardRows, v: BackwardRows,
    o: UnsafePointer<Float>, lse: UnsafePointer<Float>, dO: BackwardRows, queryShape: [Int], keyShape: [Int],
    valueShape: [Int], options: AttentionOptions
) -> AttentionGradients {
    let threads = options.threads ?? Parallel.defaultThreadCount
    let (totalQueries, hq, hkv) = (queryShape[0], queryShape[1], keyShape[1])
    let (dk, dv) = (queryShape[2], valueShape[2])
    let passes = problems.map(BackwardPass.init(problem:))
    // Token-major rows: a sequence's row (head h, token t) is h * d + t * H * d floats past its first token's.
    let strides = problems.map {
        BackwardStrides(
            $0, keys: RowStrides(batch: 0, head: dk, token: hkv * dk),
            values: RowStrides(batch: 0, head: dv, token: hkv * dv))
    }
    // Every (sequence, key/value head) item of the sequences with queries and keys, longest sequences first.
    let active = (0..<sequences.count).filter { problems[$0].queryLength > 0 && problems[$0].keyLength > 0 }
    let items = active.sorted {
        let (a, b) = (problems[$0], problems[$1])
        let (costA, costB) = (a.queryLength * a.keyLength, b.queryLength * b.keyLength)
        return costA != costB ? costA > costB : $0 < $1
    }
    .flatMap { b in (0..<hkv).map { (sequence: b, head: $0) } }
    let encoded = (q.isEncoded, dO.isEncoded)
    let perWorker = active.map { passes[$0].scratchFloats(strides[$0], encoded: encoded) }.max() ?? 0
    var scratch = [Float](repeating: 0, count: Parallel.workerCount(items: items.count, threads: threads) * perWorker)
    var dQ = [Float](repeating: 0, count: totalQueries * hq * dk)
    var dK = [Float](repeating: 0, count: keyShape[0] * hkv * dk)
    var dV = [Float](repeating: 0, count: keyShape[0] * hkv * dv)
    // Each sequence's sink-logit gradients per query head ([sequence][head]: item (b, g) writes its group's).
    var sinkParts = [Float](repeating: 0, count: sequences.count * hq)
    let group = hq / hkv
    let inputs = UncheckedSendable((q, k, v, o, lse, dO))
    dQ.withUnsafeMutableBufferPointer { queryGradients in
        dK.withUnsafeMutableBufferPointer { keyGradients in
            dV.withUnsafeMutableBufferPointer { valueGradients in
                sinkParts.withUnsafeMutableBufferPointer { sinks in
                    scratch.withUnsafeMutableBufferPointer { work in
                        // Disjoint writes: item (b, g) writes only sequence b's rows of head g (and of its group's
                        // query heads), its sink slots and its worker's scratch.
                        let shared = UncheckedSendable(
                            (
                                queryGradients.baseAddress!, keyGradients.baseAddress!, valueGradients.baseAddress!,
                                sinks.baseAddress!, work.baseAddress!
                            ))
                        Parallel.forEach(items: items.count, threads: threads) { worker, index in
                            let (b, g) = items[index]
                            let (q, k, v, o, lse, dO) = inputs.value
                            let (dQ, dK, dV, sinks, work) = shared.value
                            let (first, firstKey) = (
                                sequences.queryRange(b).lowerBound, sequences.keyRange(b).lowerBound
                            )
                            passes[b].runItem(
                                g,
                                BackwardInputs(
                                    q: q.advanced(by: first * hq * dk), k: k.advanced(by: firstKey * hkv * dk),
                                    v: v.advanced(by: firstKey * hkv * dv), o: o + first * hq * dv,
                                    lse: lse + first * hq, dO: dO.advanced(by: first * hq * dv), bias: nil,
                                    strides: strides[b]),
                                dQ: dQ + first * hq * dk, dK: dK + firstKey * hkv * dk, dV: dV + firstKey * hkv * dv,
                                // (A packed batch has no bias: runItem never writes biasGradient.)
                                sinkGradients: sinks + b * hq + g * group, biasGradient: work + worker * perWorker,
                                scratch: work + worker * perWorker)
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
    return AttentionGradients(
        queries: Tensor(uncheckedShape: queryShape, scalars: dQ),
        keys: Tensor(uncheckedShape: keyShape, scalars: dK),
        values: Tensor(uncheckedShape: valueShape, scalars: dV), sinkLogits: sinkGradients, bias: nil,
        workspaceBytes: scratch.count * MemoryLayout<Float>.stride)
}
