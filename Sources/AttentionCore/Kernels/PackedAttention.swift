// Packed (variable-length) batches: FlashAttention's varlen call. Sequences of different lengths are concatenated
// along the token axis with no padding (see PackedSequences.swift), so a batch of one 4096-token document and
// fifteen short prompts costs what its real tokens cost.
//
// Each sequence is its own attention problem (batch 1, its own lengths, its mask aligned bottom-right), read from
// the packed tensors (with several key/value heads, whose rows interleave, each sequence's rows of one key/value
// head are copied head-major by the worker that runs them, see `RowStaging`, or all at once with few sequences and
// heads per thread, see `withHeadMajorRows`) and written in place into the packed output: the kernel, tiles and
// key splits it gets are exactly those of a call on that sequence alone, so the packed result equals the
// per-sequence calls bitwise. What packing adds is one parallel loop over the work items of every sequence, the
// longest sequences first, so that short sequences fill the gaps the long ones leave and no worker waits for a
// sequence to finish.

/// Attention over a packed batch of variable-length sequences: sequence b's queries attend to sequence b's keys
/// only, with `mask` applied per sequence (positions count from the sequence's first token; causal and window
/// masks are aligned bottom-right, d(i) = i + Nk_b - Nq_b).
///
/// - Parameters:
///   - queries: [totalQueries, queryHeads, headDimension] (`sequences.queryOffsets.last` tokens).
///   - keys: [totalKeys, keyValueHeads, headDimension]; `queryHeads` a multiple of `keyValueHeads`.
///   - values: [totalKeys, keyValueHeads, valueDimension].
///   - sequences: where each sequence starts (cumulative offsets, FlashAttention's `cu_seqlens`).
///   - mask: per sequence; it must be valid for every sequence's lengths (a `.blockSparse` layout only when all
///     sequences have its lengths).
///   - options: as for `attention`, except `bias`, `keyPadding`, `queryPadding`, `layout`, `outputLayout` and the
///     naive kernel, which packed batches do not take (there is no padding, and the tensors are token-major by
///     definition). `alibiSlopes`, `sinkLogits`, `headMasks`, softcap and scale apply to every sequence.
/// - Returns: output [totalQueries, queryHeads, valueDimension] and log-sum-exp [totalQueries, queryHeads], one
///   per query token and head, so two packed results over disjoint keys merge with `mergeAttention` (chunked
///   prefill). A sequence with no keys gives zeros and log-sum-exp -infinity (or its sink logit).
/// - Throws: ``AttentionError`` for shapes that do not match `sequences`, or an option or mask invalid for some
///   sequence (the argument then names the sequence).
///
/// ```swift
/// let sequences = try PackedSequences(lengths: [5, 17, 2])
/// let q = try Tensor.randomNormal(shape: [24, 8, 64], seed: 1)
/// let k = try Tensor.randomNormal(shape: [24, 2, 64], seed: 2)
/// let v = try Tensor.randomNormal(shape: [24, 2, 64], seed: 3)
/// let result = try packedAttention(queries: q, keys: k, values: v, sequences: sequences, mask: .causal)
/// // result.output: [24, 8, 64], result.logSumExp: [24, 8]
/// ```
public func packedAttention(
    queries: Tensor, keys: Tensor, values: Tensor, sequences: PackedSequences, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    let problems = try packedProblems(
        queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, sequences: sequences, mask: mask,
        options: options)
    var fresh: [Float]? = nil
    return withPackedRows(keys, values) { keys, values in
        packedAttention(
            problems, queries: queries, keys: keys, values: values, sequences: sequences, options: options,
            reusing: &fresh)
    }
}

/// ``packedAttention(queries:keys:values:sequences:mask:options:)-(Tensor,_,_,_,_,_)`` writing the output into `output`
/// instead of a new tensor, for a caller that runs packed batches of the same token count repeatedly (every layer of a
/// prefill) and keeps one output buffer. As for ``attention(queries:keys:values:mask:options:into:)``, a large new
/// output is fresh memory that the operating system maps and zeroes as it is first written; writing into a tensor
/// written before skips that (the README's "Real batches" section gives what it measured). Every element of `output` is
/// overwritten; if its storage is shared with another tensor it is copied first.
///
/// - Returns: the log-sum-exp, [totalQueries, queryHeads], for merging with another chunk's result.
/// - Throws: what ``packedAttention(queries:keys:values:sequences:mask:options:)-(Tensor,_,_,_,_,_)`` throws, and
///   ``AttentionError/shapeMismatch(argument:expected:actual:reason:)`` unless `output.shape` is [totalQueries,
///   queryHeads, valueDimension]; `output` is untouched when it throws.
///
/// ```swift
/// var output = try Tensor(zeros: [24, 8, 64])
/// for layer in layers {
///     try packedAttention(
///         queries: q[layer], keys: k[layer], values: v[layer], sequences: sequences, mask: .causal, into: &output)
/// }
/// ```
@discardableResult
public func packedAttention(
    queries: Tensor, keys: Tensor, values: Tensor, sequences: PackedSequences, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions(), into output: inout Tensor
) throws -> Tensor {
    let problems = try packedProblems(
        queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, sequences: sequences, mask: mask,
        options: options)
    let expected = [queries.shape[0], queries.shape[1], values.shape[2]]
    guard output.shape == expected else {
        throw AttentionError.shapeMismatch(
            argument: "output", expected: "\(expected) (total queries, query heads, value dimension)",
            actual: output.shape, reason: "the result is written into it")
    }
    // Move the storage out so that it is uniquely referenced (no copy on write) unless the caller shares it.
    var storage: [Float]? = output.scalars
    output = Tensor(uncheckedShape: [0], scalars: [])
    let result = withPackedRows(keys, values) { keys, values in
        packedAttention(
            problems, queries: queries, keys: keys, values: values, sequences: sequences, options: options,
            reusing: &storage)
    }
    output = result.output
    return result.logSumExp
}

/// A packed key or value tensor's rows, [tokens, heads, d] rows of `codec` from `base` (nil when it has none):
/// a Float32 tensor's or a stored tensor's.
struct PackedRows {
    let base: UnsafeRawPointer?
    let codec: RowCodec
    let tokens: Int
    let heads: Int
}

/// Calls `body` with the rows of Float32 packed keys and values.
private func withPackedRows<R>(_ keys: Tensor, _ values: Tensor, _ body: (PackedRows, PackedRows) -> R) -> R {
    keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
            body(
                PackedRows(
                    base: k.baseAddress.map(UnsafeRawPointer.init), codec: RowCodec(.float32, dimension: keys.shape[2]),
                    tokens: keys.shape[0], heads: keys.shape[1]),
                PackedRows(
                    base: v.baseAddress.map(UnsafeRawPointer.init),
                    codec: RowCodec(.float32, dimension: values.shape[2]), tokens: values.shape[0],
                    heads: values.shape[1]))
        }
    }
}

/// The packed kernel on validated `problems`, writing into `reused` when it has the output's element count (taken,
/// leaving nil), else into new storage. Keys and values in any format (`PackedRows`); Float32 queries.
func packedAttention(
    _ problems: [AttentionProblem], queries: Tensor, keys: PackedRows, values: PackedRows,
    sequences: PackedSequences, options: AttentionOptions, reusing reused: inout [Float]?
) -> AttentionResult {
    let (totalQueries, hq, hkv) = (queries.shape[0], queries.shape[1], keys.heads)
    let dv = values.codec.dimension
    let threads = options.threads ?? Parallel.defaultThreadCount

    let tilings = sequenceTilings(problems)
    // With more than one key/value head, a token's heads are interleaved: the rows are copied head-major (staged
    // per worker or once for the call, below) when the prefill kernel reads keys more than once, else the decode
    // layout gathers them.
    let reuses = zip(problems, tilings).map { problem, tiling in
        tiling.layout == .stripes ? (problem.queryLength + tiling.queryBlock - 1) / tiling.queryBlock : 1
    }
    let reuse = reuses.max() ?? 1
    // Every output row is written by the finalize of the work item that owns it: no zero fill needed.
    var output =
        reused?.count == totalQueries * hq * dv
        ? reused.take()! : overwrittenScalars(count: totalQueries * hq * dv)
    var logSumExp = [Float](repeating: 0, count: totalQueries * hq)
    let workspace = queries.withUnsafeBufferPointer { q in
        output.withUnsafeMutableBufferPointer { o in
            logSumExp.withUnsafeMutableBufferPointer { lse in
                // All the keys as one segment of one batch entry; each sequence reads its part of it.
                var whole: [KeyValueSegment] = []
                if let kBase = keys.base, let vBase = values.base, keys.tokens > 0 {
                    let (keyRow, valueRow) = (keys.codec.rowBytes, values.codec.rowBytes)
                    whole.append(
                        KeyValueSegment(
                            keys: kBase, values: vBase, keyCodec: keys.codec, valueCodec: values.codec,
                            keyStrides: (0, keyRow, hkv * keyRow), valueStrides: (0, valueRow, hkv * valueRow),
                            start: 0, count: keys.tokens))
                }
                // Each sequence's (key/value head) rows staged by the worker that runs them when there
                // are groups enough to balance the workers (`RowStaging`), else one copy for the call.
                let groups = problems.count * hkv
                let stages =
                    RowStaging(whole, reuse: reuse, groups: groups, threads: threads) != nil
                return withHeadMajorRows(
                    whole, batch: 1, keyValueHeads: hkv, reuse: stages ? 1 : reuse, threads: threads
                ) { whole, copyBytes in
                    let runBytes = runSequenceProblems(
                        problems, tilings: tilings, queryOffsets: sequences.queryOffsets,
                        queries: q.baseAddress, output: o.baseAddress, logSumExp: lse.baseAddress,
                        threads: threads, staging: stages ? reuses : nil
                    ) { b in
                        let keyStart = sequences.keyOffsets[b]
                        return whole.prefix(problems[b].keyLength > 0 ? 1 : 0).map { all in
                            KeyValueSegment(
                                keys: all.keys + keyStart * all.keyRowStride,
                                values: all.values + keyStart * all.valueRowStride, keyCodec: all.keyCodec,
                                valueCodec: all.valueCodec,
                                keyStrides: (0, all.keyHeadStride, all.keyRowStride),
                                valueStrides: (0, all.valueHeadStride, all.valueRowStride), start: 0,
                                count: problems[b].keyLength)
                        }
                    }
                    return runBytes + copyBytes
                }
            }
        }
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: [totalQueries, hq, dv], scalars: output),
        logSumExp: Tensor(uncheckedShape: [totalQueries, hq], scalars: logSumExp), workspaceBytes: workspace)
}

/// Validates a packed call (tensors of these shapes, in any format) and returns one problem per sequence.
func packedProblems(
    queryShape: [Int], keyShape: [Int], valueShape: [Int], sequences: PackedSequences, mask: AttentionMask,
    options: AttentionOptions
) throws -> [AttentionProblem] {
    let (totalQueries, totalKeys) = (sequences.queryOffsets[sequences.count], sequences.keyOffsets[sequences.count])
    guard queryShape.count == 3, queryShape[0] == totalQueries, queryShape[1] >= 1, queryShape[2] >= 1 else {
        throw AttentionError.shapeMismatch(
            argument: "queries", expected: "[\(totalQueries), H, D] with H, D >= 1", actual: queryShape,
            reason:
                "packed queries are [totalQueries, heads, headDimension], sequences.queryOffsets ending at the total")
    }
    let (hq, dk) = (queryShape[1], queryShape[2])
    guard keyShape.count == 3, keyShape[0] == totalKeys, keyShape[1] >= 1, hq % keyShape[1] == 0, keyShape[2] == dk
    else {
        throw AttentionError.shapeMismatch(
            argument: "keys", expected: "[\(totalKeys), H, \(dk)] with H >= 1 dividing \(hq)", actual: keyShape,
            reason:
                "packed keys are [totalKeys, heads, headDimension], sequences.keyOffsets ending at the total, with "
                + "the queries' head dimension and a head count that divides theirs")
    }
    let hkv = keyShape[1]
    guard valueShape.count == 3, valueShape[0] == totalKeys, valueShape[1] == hkv, valueShape[2] >= 1 else {
        throw AttentionError.shapeMismatch(
            argument: "values", expected: "[\(totalKeys), \(hkv), D] with D >= 1", actual: valueShape,
            reason: "packed values have the keys' token and head counts")
    }
    return try sequenceProblems(
        queryHeads: hq, keyValueHeads: hkv, queryLengths: (0..<sequences.count).map { sequences.queryRange($0).count },
        keyLengths: (0..<sequences.count).map { sequences.keyRange($0).count }, keyDimension: dk,
        valueDimension: valueShape[2], mask: mask, options: options, batchName: "the packed batch")
}

/// One problem per sequence of a sequence batch (packed, or a paged cache's), after rejecting the options such a
/// batch does not take; a mask or option invalid for one sequence throws with the sequence named.
package func sequenceProblems(
    queryHeads hq: Int, keyValueHeads hkv: Int, queryLengths: [Int], keyLengths: [Int], keyDimension dk: Int,
    valueDimension dv: Int, mask: AttentionMask, options: AttentionOptions, batchName: String
) throws -> [AttentionProblem] {
    let unsupported: [(String, Bool)] = [
        ("options.bias", options.bias != nil), ("options.keyPadding", options.keyPadding != nil),
        ("options.queryPadding", options.queryPadding != nil), ("options.layout", options.layout != .bhnd),
        ("options.outputLayout", options.outputLayout != nil),
    ]
    if let (name, _) = unsupported.first(where: { $0.1 }) {
        throw AttentionError.invalidValue(
            argument: name, expected: "not set (\(batchName) has no padding and is [tokens, heads, d])",
            actual: "set")
    }
    if case .naive = options.kernel {
        throw AttentionError.invalidValue(
            argument: "options.kernel", expected: ".automatic, .blockwise or .decode for \(batchName)",
            actual: ".naive")
    }
    return try queryLengths.indices.map { b in
        do {
            return try AttentionProblem(
                packedSequenceOf: hq, keyValueHeads: hkv, queryLength: queryLengths[b], keyLength: keyLengths[b],
                keyDimension: dk, valueDimension: dv, mask: mask, options: options)
        } catch let error as AttentionError {
            throw error.naming("sequence \(b) of \(batchName)")
        }
    }
}

/// The tiles each sequence's problem runs with (every kernel but naive, which sequence batches reject).
package func sequenceTilings(_ problems: [AttentionProblem]) -> [BlockwiseTiling] {
    problems.map { problem -> BlockwiseTiling in
        switch problem.options.kernel.resolved(for: problem) {
        case .blockwise(let resolved), .decode(let resolved): return resolved
        case .naive: preconditionFailure("sequence batches reject the naive kernel")
        }
    }
}

/// Runs one problem per sequence (a packed batch, or a paged cache's sequences) in one parallel loop, the longest
/// sequences first (by the key rows their items read) so that short ones fill the tail of the schedule. Sequence b's
/// query, output and log-sum-exp rows are token-major from token `queryOffsets[b]` of `queries`, `output` and
/// `logSumExp`; `segments(b)` gives its keys and values (positions 0 ..< its key length, batch stride 0). Each
/// sequence gets the tiles and splits it would get alone, so its result equals its own call bitwise. `staging`:
/// each sequence's key reuse (query blocks), to stage its interleaved rows group by group (`RowStaging`). Returns
/// the bytes of scratch, staging buffers and split states.
package func runSequenceProblems(
    _ problems: [AttentionProblem], tilings: [BlockwiseTiling], queryOffsets: [Int], queries: UnsafePointer<Float>?,
    output: UnsafeMutablePointer<Float>?, logSumExp: UnsafeMutablePointer<Float>?, threads: Int,
    staging reuses: [Int]? = nil, segments: (Int) -> [KeyValueSegment]
) -> Int {
    let sequenceSegments = problems.indices.map(segments)
    let plans = problems.indices.map { b in
        TiledJobPlan(
            problems[b], tiling: tilings[b],
            decodesTiles: sequenceSegments[b].contains {
                $0.needsDecoding(gathersStridedRows: tilings[b].layout == .rows)
            })
    }
    let order = plans.indices.sorted {
        let (a, b) = (plans[$0].problem, plans[$1].problem)
        let (costA, costB) = (a.queryLength * a.keyLength, b.queryLength * b.keyLength)
        return costA != costB ? costA > costB : $0 < $1
    }
    return runTiledPlans(plans, order: order, threads: threads, scoreStorage: .perWorkerTile) { b, partials in
        let problem = problems[b]
        let queryStart = queryOffsets[b]
        return plans[b].job(
            queries: queries.map { $0 + queryStart * problem.queryHeads * problem.keyDimension },
            segments: sequenceSegments[b], bias: nil,
            output: output.map { $0 + queryStart * problem.queryHeads * problem.valueDimension },
            logSumExp: logSumExp.map { $0 + queryStart * problem.queryHeads }, scoreStorage: .perWorkerTile,
            scores: nil, partials: partials,
            staging: reuses.flatMap {
                RowStaging(
                    sequenceSegments[b], reuse: $0[b], groups: problems.count * problem.keyValueHeads,
                    threads: threads)
            })
    }
}
