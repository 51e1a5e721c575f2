// Sparse attention: the blockwise kernel driven by a block-sparse layout, and token-level top-k attention.
//
// Block-sparse attention adds no kernel: the layout becomes a mask (`.blockSparse`, per head through
// `AttentionOptions.headMasks` when the layout has one pattern per head) and the blockwise kernel runs with the
// layout's block sizes as its tiles, so every listed block is one tile and every other tile is skipped. Its cost is
// proportional to the listed blocks.
//
// Top-k attention is a separate kernel: for each query, exact scores against every visible key, then the softmax
// over the k largest only. It costs a full pass of scores (O(Nq * Nk * Dk)) plus O(Nk) selection per query and
// O(k * Dv) for the output, so it saves no score work; it is exact where block-sparse is approximate. Prefer a
// top-k *block* layout (`BlockSparseLayout.topK`) when the scores themselves are the cost.

/// Attention restricted to the key blocks of a block-sparse layout (and to `mask`), with any option of
/// ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)``.
///
/// - Parameters:
///   - queries: [batch, queryHeads, Nq, Dk].
///   - keys: [batch, keyValueHeads, Nk, Dk].
///   - values: [batch, keyValueHeads, Nk, Dv].
///   - layout: made for Nq queries and Nk keys; shared by all heads or one pattern per query head.
///   - mask: intersected with the layout (e.g. `.causal`, which masks exactly inside the diagonal blocks).
///   - options: with `.automatic` the blockwise kernel runs with tiles of the layout's block sizes.
/// - Returns: [batch, queryHeads, Nq, Dv]. A query whose blocks are all empty outputs zeros.
/// - Throws: ``AttentionError`` for a layout made for other lengths or another number of heads, and anything
///   `attention` rejects.
public func blockSparseAttention(
    queries: Tensor, keys: Tensor, values: Tensor, layout: BlockSparseLayout, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    try partialBlockSparseAttention(
        queries: queries, keys: keys, values: values, layout: layout, mask: mask, options: options
    ).output
}

/// Like `blockSparseAttention`, also returning each row's log-sum-exp and the kernel's workspace.
public func partialBlockSparseAttention(
    queries: Tensor, keys: Tensor, values: Tensor, layout: BlockSparseLayout, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> AttentionResult {
    let (mask, options) = try blockSparseDescription(
        layout: layout, mask: mask, options: options,
        queryHeads: queries.rank == 4 ? options.layout.canonical(queries.shape)[1] : 0)
    return try partialAttention(queries: queries, keys: keys, values: values, mask: mask, options: options)
}

/// The mask and options that run `layout` (intersected with `mask`) through the blockwise kernel: one
/// `.blockSparse` mask, or per-head masks for a layout with one pattern per query head.
package func blockSparseDescription(
    layout: BlockSparseLayout, mask: AttentionMask, options: AttentionOptions, queryHeads heads: Int
) throws -> (AttentionMask, AttentionOptions) {
    var options = options
    options.kernel = options.kernel.forBlockSparse(layout)
    if layout.heads == 1 {
        if case .none = mask { return (.blockSparse(layout), options) }
        return (.intersection(mask, .blockSparse(layout)), options)
    }
    try AttentionError.require(
        layout.heads == heads, "layout.heads", expected: "1 or \(heads) (the query heads)",
        actual: "\(layout.heads)")
    // A caller's own per-head masks of the wrong count are left for validation to report.
    if let existing = options.headMasks, existing.count != heads { return (mask, options) }
    let existing = options.headMasks
    options.headMasks = (0..<heads).map { h in
        let own = AttentionMask.blockSparse(layout.forHead(h))
        return existing.map { .intersection($0[h], own) } ?? own
    }
    return (mask, options)
}

/// Token-level top-k attention: each query attends, with an exact softmax, to only the `keysPerQuery` visible keys
/// with the highest scores (scale * q . k). With `keysPerQuery` >= the visible keys it equals dense attention.
///
/// Ties at the last kept score keep the lower key index, so the result is deterministic. NaN scores rank below every
/// number; if one is among those kept, the row is NaN (as dense attention makes a row with a visible NaN score NaN).
/// Supports `options.scale` and `options.threads`; the other score options are rejected.
/// - Throws: ``AttentionError`` for `keysPerQuery` < 1, unsupported options, and anything `attention` rejects.
/// - Complexity: O(B * Hq * Nq * Nk * Dk) for the scores, O(Nk) per query to select, O(k * Dv) per query to sum;
///   scratch O(threads * Nk).
public func topKAttention(
    queries: Tensor, keys: Tensor, values: Tensor, keysPerQuery k: Int, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> Tensor {
    let problem = try AttentionProblem(queries: queries, keys: keys, values: values, mask: mask, options: options)
    try AttentionError.require(k >= 1, "keysPerQuery", expected: ">= 1", actual: "\(k)")
    for (name, isSet) in [
        ("options.softcap", options.softcap != nil), ("options.alibiSlopes", options.alibiSlopes != nil),
        ("options.bias", options.bias != nil), ("options.sinkLogits", options.sinkLogits != nil),
        ("options.headMasks", options.headMasks != nil), ("options.keyPadding", options.keyPadding != nil),
        ("options.queryPadding", options.queryPadding != nil),
        ("options.layout", options.layout != .bhnd || (options.outputLayout ?? .bhnd) != .bhnd),
    ] where isSet {
        throw AttentionError.invalidValue(
            argument: name, expected: "nil (not supported by topKAttention)", actual: "set")
    }
    let (b, hq, nq, nk, dk, dv) = (
        problem.batch, problem.queryHeads, problem.queryLength, problem.keyLength, problem.keyDimension,
        problem.valueDimension
    )
    var output = zeroedScalars(count: b * hq * nq * dv)
    let rowsPerItem = 16
    let blocks = (nq + rowsPerItem - 1) / rowsPerItem
    let items = b * hq * blocks
    let workers = Parallel.workerCount(items: items, threads: problem.threads)
    // Per worker: the row's scores and key indices (Nk each).
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, workers * nk))
    defer { scratch.deallocate() }
    let order = UnsafeMutablePointer<Int>.allocate(capacity: Swift.max(1, workers * nk))
    defer { order.deallocate() }
    queries.withUnsafeBufferPointer { q in
        keys.withUnsafeBufferPointer { kp in
            values.withUnsafeBufferPointer { v in
                output.withUnsafeMutableBufferPointer { o in
                    let pointers = UncheckedSendable((q.baseAddress, kp.baseAddress, v.baseAddress, o.baseAddress))
                    Parallel.forEach(items: items, threads: problem.threads) { worker, item in
                        guard let qBase = pointers.value.0, let kBase = pointers.value.1, let vBase = pointers.value.2,
                            let oBase = pointers.value.3
                        else { return }
                        let (bh, block) = item.quotientAndRemainder(dividingBy: blocks)
                        let (batch, head) = bh.quotientAndRemainder(dividingBy: hq)
                        let kvHead = problem.keyValueHead(of: head)
                        let keyRows = kBase + (batch * problem.keyValueHeads + kvHead) * nk * dk
                        let valueRows = vBase + (batch * problem.keyValueHeads + kvHead) * nk * dv
                        let scores = scratch + worker * nk
                        let candidates = order + worker * nk
                        for i in (block * rowsPerItem)..<Swift.min(nq, (block + 1) * rowsPerItem) {
                            let query = qBase + ((batch * hq + head) * nq + i) * dk
                            var count = 0
                            for span in problem.mask.visibleSpans(query: i, queryLength: nq, keyLength: nk) {
                                for j in span
                                where !problem.mask.hasPredicate
                                    || problem.mask.allows(query: i, key: j, queryLength: nq, keyLength: nk)
                                {
                                    scores[j] = problem.scale * dotProduct(query, keyRows + j * dk, count: dk)
                                    candidates[count] = j
                                    count += 1
                                }
                            }
                            let kept = selectLargest(k, of: candidates, count: count, scores: scores)
                            softmaxSum(
                                keys: candidates, count: kept, scores: scores, values: valueRows, valueDimension: dv,
                                into: oBase + ((batch * hq + head) * nq + i) * dv)
                        }
                    }
                }
            }
        }
    }
    return Tensor(uncheckedShape: problem.outputShape, scalars: output)
}

/// Moves the `k` candidates with the largest scores (ties: lower key index first; NaN scores rank last) to the
/// front of `candidates` and returns how many were kept (min(k, count)). Expected O(count) (quickselect with
/// median-of-three pivots).
private func selectLargest(
    _ k: Int, of pointer: UnsafeMutablePointer<Int>, count: Int, scores: UnsafePointer<Float>
) -> Int {
    if k >= count { return count }
    let candidates = UnsafeMutableBufferPointer(start: pointer, count: count)
    // a ranks before b: higher score, or equal score and lower index. NaN compares as the lowest score.
    func before(_ a: Int, _ b: Int) -> Bool {
        let (x, y) = (scores[a], scores[b])
        if x.isNaN || y.isNaN { return !x.isNaN && y.isNaN || (x.isNaN && y.isNaN && a < b) }
        return x > y || (x == y && a < b)
    }
    var (low, high) = (0, count - 1)
    while low < high {
        let middle = (low + high) / 2
        // Median of three as the pivot, moved to `high`.
        if before(candidates[middle], candidates[low]) { candidates.swapAt(middle, low) }
        if before(candidates[high], candidates[low]) { candidates.swapAt(high, low) }
        if before(candidates[middle], candidates[high]) { candidates.swapAt(middle, high) }
        let pivot = candidates[high]
        var store = low
        for index in low..<high where before(candidates[index], pivot) {
            candidates.swapAt(index, store)
            store += 1
        }
        candidates.swapAt(store, high)
        if store == k - 1 || store == k { break }
        if store < k { low = store + 1 } else { high = store - 1 }
    }
    return k
}

/// out = softmax over the kept keys' scores, times their values (in key order, so the sum is deterministic).
private func softmaxSum(
    keys candidates: UnsafeMutablePointer<Int>, count: Int, scores: UnsafePointer<Float>, values: UnsafePointer<Float>,
    valueDimension dv: Int, into out: UnsafeMutablePointer<Float>
) {
    guard count > 0 else { return }  // no visible key: zeros
    var kept = UnsafeMutableBufferPointer(start: candidates, count: count)
    // A kept NaN score makes the row NaN, as a visible NaN score does in dense attention.
    if kept.contains(where: { scores[$0].isNaN }) {
        for c in 0..<dv { out[c] = .nan }
        return
    }
    kept.sort()
    var maximum = -Float.infinity
    for j in kept where scores[j] > maximum { maximum = scores[j] }
    if maximum == -.infinity { return }  // every kept score is -inf: nothing is visible
    var denominator: Float = 0
    for j in kept { denominator += _exp(scores[j] - maximum) }
    for j in kept {
        let weight = _exp(scores[j] - maximum) / denominator
        let row = values + j * dv
        for c in 0..<dv { out[c] += weight * row[c] }
    }
}
