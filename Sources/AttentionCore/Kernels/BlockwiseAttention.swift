// Blockwise attention: the FlashAttention-2 forward pass (Dao, 2023) on the CPU. Every softmax variant of this
// package (MHA/GQA/MQA, every mask, softcap, ALiBi, bias, learned sinks) runs through this one kernel.
//
// Work item = (batch b, key/value head, query block). The G query heads that share the key/value head are
// processed together: their Br query rows each form one set of R = G * Br rows, so every key/value tile is read
// once per group. For each visible key tile (Bc keys) the kernel computes the scores of all R rows, updates the
// online softmax state and accumulates P V. Nothing of size Nq x Nk is ever allocated.
//
// Decode (few rows, long keys) adds a key split to the work item: each split leaves a partial (O, m, l) and
// `finalize` merges the splits in split order. Keys and values arrive as `KeyValueSegment`s (a tensor, or a cache's
// ring runs plus the step's new tokens), read in place; key tiles never cross a segment boundary.
//
// Layout - rows in lanes: every per-tile matrix is stored transposed, with the R query rows along the 16-lane
// vectors. Q^T [Dk, Rp] is packed once per work item (scaled by scale * log2(e) / 2, so scores come out in "half
// base 2", see `logitScale`);
// S^T = K Q^T [Bc, Rp] is computed by broadcasting key elements against Q^T vectors, and O^T [Dv, Rp] += V^T P^T
// by broadcasting value elements against P^T vectors. K and V are read in place (no per-tile packing), and the
// softmax statistics m and l are vectors of 16 rows, so the online softmax needs no horizontal reductions or
// lane shuffles.
//
// Legend: B batch, Hq/Hkv query/key-value heads, G = Hq / Hkv, Nq/Nk lengths, Dk/Dv head dimensions,
// Br query positions per block (per head), Bc keys per tile, R = G * Br rows per item, Rp = R rounded up to 16,
// m running row maximum (half base 2), l running denominator, S scores, P = exp2(2 (S - m)) weights, O unnormalized
// output.
//
// Numerics: masked scores become -inf *after* they are computed (so NaN in a masked key is discarded); the row
// maximum used for exponentials is replaced by 0 while a row has seen no key, so exp2(-inf - -inf) never happens;
// a value row holding NaN or infinity reaches exactly the rows that see its key (even with a weight that underflowed
// to 0, as in the Float64 reference) and never a row for which the key is masked or scored -inf.
//
// Matrices are stripe-major (`stripeIndex`): 16-row stripes, each a contiguous [columns, 16] block.
//
// Files, by concern: this one is the driver (scratch, the parallel loop over work items, the split merge);
// +Tiling the tile sizes, segments and the tile walk; +WorkItem one work item and the two row layouts;
// +Softmax the per-tile steps after the scores (score options, masking, online softmax, NaN quarantine);
// +Finalize the merge of an item's partial states into output rows; +MicroKernels and +DecodeKernels the
// register-blocked products. Which kernel and tiles a call gets is decided in KernelDispatch.swift.

/// Logits enter the kernel as s * log2(e) / 2 ("half base 2") and every exponential is 2^(2 * (s - m)) = e^(s - m).
/// Folding all of log2(e) into the logits would overflow above 2.36e38; folding half keeps every finite Float logit
/// finite, and the doubling is applied to differences s - m <= 0, where overflow can only mean -infinity, a weight of
/// exactly 0. Halving and doubling are exact, so this costs one multiply per score and no accuracy.
let logitScale: Float = 0.721_347_52
let exponentScale: Float = 2
let ln2: Float = 0.693_147_18

/// Runs the tiled kernel over every work item. The blockwise kernel calls it with `.perWorkerTile`; the naive
/// kernel with one tile covering everything and `.materialized` (after checking its memory budget); the decode
/// kernel with the `.rows` layout and key splits. `segments` hold the keys and values (see `KeyValueSegment`),
/// sorted by `start` and covering 0..<keyLength. The output goes into `reused` (taken, leaving nil) when it holds
/// exactly the output's element count, else into a new array; every element is overwritten either way.
package func tiledAttention(
    _ problem: AttentionProblem, queries: Tensor, segments: [KeyValueSegment], tiling: BlockwiseTiling,
    scoreStorage: ScoreStorage, reusing reused: inout [Float]?
) -> AttentionResult {
    // The one place the row layout is read: everything below runs specialized for its strategy.
    switch tiling.layout {
    case .stripes:
        return tiledAttention(
            problem, queries: queries, segments: segments, tiling: tiling, scoreStorage: scoreStorage,
            reusing: &reused, layout: StripeRows(problem, tiling))
    case .rows:
        return tiledAttention(
            problem, queries: queries, segments: segments, tiling: tiling, scoreStorage: scoreStorage,
            reusing: &reused, layout: FewRows(problem, tiling))
    }
}

private func tiledAttention<Layout: TileRowLayout>(
    _ problem: AttentionProblem, queries: Tensor, segments: [KeyValueSegment], tiling: BlockwiseTiling,
    scoreStorage: ScoreStorage, reusing reused: inout [Float]?, layout: Layout
) -> AttentionResult {
    let (nq, dv) = (problem.queryLength, problem.valueDimension)
    let queryBlocks = (nq + tiling.queryBlock - 1) / tiling.queryBlock
    let units = problem.batch * problem.keyValueHeads * queryBlocks
    let splits = tiling.splitCount(keyLength: problem.keyLength)
    let items = units * splits
    let workers = Parallel.workerCount(items: items, threads: problem.threads)
    let decodesTiles = segments.contains { $0.needsDecoding }
    let scratchFloats = tiledScratchFloats(problem, tiling, scoreStorage, decodesTiles: decodesTiles)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, workers * scratchFloats))
    defer { scratch.deallocate() }
    let scoreFloats = scoreStorage == .materialized ? (materializedScoreFloats(problem, tiling) ?? 0) : 0
    let scores = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, scoreFloats))
    defer { scores.deallocate() }
    let stateSize = stateFloats(problem, tiling)
    let partialFloats = splits > 1 ? items * stateSize : 0
    let partials = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, partialFloats))
    defer { partials.deallocate() }
    let tileFloats = tiling.keyBlock * tiling.paddedRows(groupSize: problem.groupSize)

    let outputCount = problem.batch * problem.queryHeads * nq
    var output: [Float]
    if let storage = reused.take(), storage.count == outputCount * dv {
        output = storage
    } else {
        // Every row is written by the finalize of the one work item that owns it: no zero fill needed.
        output = overwrittenScalars(count: outputCount * dv)
    }
    var logSumExp = [Float](repeating: 0, count: outputCount)
    let biasScalars = problem.options.bias?.scalars ?? []
    queries.withUnsafeBufferPointer { q in
        biasScalars.withUnsafeBufferPointer { bias in
            output.withUnsafeMutableBufferPointer { o in
                logSumExp.withUnsafeMutableBufferPointer { lse in
                    let context = UncheckedSendable(
                        WorkItemContext(
                            problem: problem, tiling: tiling, layout: layout, queries: q.baseAddress,
                            segments: segments, decodesTiles: decodesTiles, bias: bias.baseAddress,
                            output: o.baseAddress,
                            logSumExp: lse.baseAddress))
                    Parallel.forEach(items: items, threads: problem.threads) { worker, item in
                        let (unit, split) = item.quotientAndRemainder(dividingBy: splits)
                        // Last query blocks first: under a causal mask they have the most work, and starting
                        // with them balances the dynamic schedule.
                        let block = queryBlocks - 1 - unit % queryBlocks
                        let (b, kvHead) = (unit / queryBlocks).quotientAndRemainder(dividingBy: problem.keyValueHeads)
                        let workerScratch = scratch + worker * scratchFloats
                        // Worker scratch ends with [S^T tile][state], the state only with one split (split states
                        // live in `partials`); see `tiledScratchFloats`.
                        let stateInScratch = splits == 1 ? stateSize : 0
                        let tile =
                            scoreStorage == .materialized
                            ? scores + item * tileFloats
                            : workerScratch + (scratchFloats - stateInScratch - tileFloats)
                        let state =
                            splits == 1 ? workerScratch + (scratchFloats - stateSize) : partials + item * stateSize
                        context.value.run(
                            batch: b, keyValueHead: kvHead, queryBlock: block, split: split, scratch: workerScratch,
                            scoreTile: tile, state: state)
                        if splits == 1 {
                            context.value.finalize(
                                batch: b, keyValueHead: kvHead, queryBlock: block, states: state, count: 1,
                                stride: stateSize)
                        }
                    }
                    if splits > 1 {
                        // The merge of the splits, in split order: deterministic for any thread count.
                        Parallel.forEach(items: units, threads: problem.threads) { _, unit in
                            let block = queryBlocks - 1 - unit % queryBlocks
                            let (b, kvHead) = (unit / queryBlocks).quotientAndRemainder(
                                dividingBy: problem.keyValueHeads)
                            context.value.finalize(
                                batch: b, keyValueHead: kvHead, queryBlock: block,
                                states: partials + unit * splits * stateSize, count: splits, stride: stateSize)
                        }
                    }
                }
            }
        }
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: problem.outputShape, scalars: output),
        logSumExp: Tensor(uncheckedShape: [problem.batch, problem.queryHeads, nq], scalars: logSumExp),
        workspaceBytes: (workers * scratchFloats + scoreFloats + partialFloats) * MemoryLayout<Float>.size)
}
