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
    withResultStorage(problem, queries: queries, reusing: &reused) { q, o, lse in
        tiledAttention(
            problem, queries: q, segments: segments, tiling: tiling, scoreStorage: scoreStorage, output: o,
            logSumExp: lse)
    }
}

/// Allocates the output (into `reused` when it has the output's element count; it is left untouched when `body`
/// throws) and log-sum-exp of `problem`, and calls `body` with the query, output and log-sum-exp pointers (nil
/// only for empty tensors); `body` returns the workspace bytes it used.
package func withResultStorage(
    _ problem: AttentionProblem, queries: Tensor, reusing reused: inout [Float]?,
    _ body: (UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) throws -> Int
) rethrows -> AttentionResult {
    let rows = problem.batch * problem.queryHeads * problem.queryLength
    let outputCount = rows * problem.valueDimension
    var output: [Float]
    let reusable = reused?.count == outputCount
    if reusable, let storage = reused.take() {
        output = storage
    } else {
        // Every row is written by the finalize of the one work item that owns it: no zero fill needed.
        output = overwrittenScalars(count: outputCount)
    }
    var logSumExp = [Float](repeating: 0, count: rows)
    let workspace: Int
    do {
        workspace = try queries.withUnsafeBufferPointer { q in
            try output.withUnsafeMutableBufferPointer { o in
                try logSumExp.withUnsafeMutableBufferPointer { lse in
                    try body(q.baseAddress, o.baseAddress, lse.baseAddress)
                }
            }
        }
    } catch {
        if reusable { reused = output }
        throw error
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: problem.outputShape, scalars: output),
        logSumExp: Tensor(
            uncheckedShape: [problem.batch, problem.queryHeads, problem.queryLength], scalars: logSumExp),
        workspaceBytes: workspace)
}

/// The tiled kernel on raw memory: query rows and output rows where `problem`'s strides put them, log-sum-exp
/// where `problem.logSumExpStrides` puts it. Returns the bytes of scratch it allocated.
package func tiledAttention(
    _ problem: AttentionProblem, queries: UnsafePointer<Float>?, segments: [KeyValueSegment], tiling: BlockwiseTiling,
    scoreStorage: ScoreStorage, output: UnsafeMutablePointer<Float>?, logSumExp: UnsafeMutablePointer<Float>?
) -> Int {
    let queryBlocks = (problem.queryLength + tiling.queryBlock - 1) / tiling.queryBlock
    let reuse = tiling.layout == .stripes ? queryBlocks : 1
    // Interleaved rows: copied group by group by the workers when there are groups enough, else once for the call.
    let staging = RowStaging(
        segments, reuse: reuse, groups: problem.batch * problem.keyValueHeads, threads: problem.threads)
    return withHeadMajorRows(
        segments, batch: problem.batch, keyValueHeads: problem.keyValueHeads, reuse: staging == nil ? reuse : 1,
        threads: problem.threads
    ) { segments, copyBytes in
        let plan = TiledJobPlan(
            problem, tiling: tiling,
            decodesTiles: segments.contains { $0.needsDecoding(gathersStridedRows: tiling.layout == .rows) })
        let scoreFloats = scoreStorage == .materialized ? (materializedScoreFloats(problem, tiling) ?? 0) : 0
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, scoreFloats))
        defer { scores.deallocate() }
        let biasScalars = problem.options.bias?.scalars ?? []
        let runBytes = biasScalars.withUnsafeBufferPointer { bias in
            runTiledPlans([plan], order: [0], threads: problem.threads, scoreStorage: scoreStorage) { _, partials in
                plan.job(
                    queries: queries, segments: segments, bias: bias.baseAddress, output: output,
                    logSumExp: logSumExp, scoreStorage: scoreStorage,
                    scores: scoreStorage == .materialized ? scores : nil, partials: partials, staging: staging)
            }
        }
        return runBytes + scoreFloats * MemoryLayout<Float>.size + copyBytes
    }
}

/// Runs the jobs of `plans` in one parallel loop (`runTiledJobs`), in `order`, with each worker's scratch sized
/// for the largest plan and every plan's split states in one allocation: `job(index, partials)` builds plan
/// `index`'s job over its `partialFloats` floats at `partials`. Returns the bytes of scratch and split states.
package func runTiledPlans(
    _ plans: [TiledJobPlan], order: [Int], threads: Int, scoreStorage: ScoreStorage,
    _ job: (Int, UnsafeMutablePointer<Float>) -> any TiledJob
) -> Int {
    let scratchFloats = plans.map { $0.scratchFloats(scoreStorage) }.max() ?? 0
    var firstPartials = [0]
    for plan in plans { firstPartials.append(firstPartials[firstPartials.count - 1] + plan.partialFloats) }
    let partials = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, firstPartials[plans.count]))
    defer { partials.deallocate() }
    let scratchBytes = runTiledJobs(
        order.map { job($0, partials + firstPartials[$0]) }, threads: threads, scratchFloats: scratchFloats)
    return scratchBytes + firstPartials[plans.count] * MemoryLayout<Float>.size
}

/// The sizes of one problem's work in a tiled dispatch: work items = units (batch x key/value head x query block)
/// times key splits, and the scratch and split-state memory they need.
package struct TiledJobPlan {
    package let problem: AttentionProblem
    package let tiling: BlockwiseTiling
    package let decodesTiles: Bool
    package let queryBlocks: Int
    package let splits: Int
    package var units: Int { problem.batch * problem.keyValueHeads * queryBlocks }
    /// (batch entry, key/value head) pairs. Group g owns the consecutive items from g * queryBlocks * splits on.
    package var groups: Int { problem.batch * problem.keyValueHeads }
    package var items: Int { units * splits }
    /// Floats of one work item's softmax state.
    package var stateSize: Int { stateFloats(problem, tiling) }
    /// Floats of the split states (none with one split: the state then lives in the worker's scratch).
    package var partialFloats: Int { splits > 1 ? items * stateSize : 0 }

    package init(_ problem: AttentionProblem, tiling: BlockwiseTiling, decodesTiles: Bool) {
        self.problem = problem
        self.tiling = tiling
        self.decodesTiles = decodesTiles
        queryBlocks = (problem.queryLength + tiling.queryBlock - 1) / tiling.queryBlock
        splits = tiling.splitCount(keyLength: problem.keyLength)
    }

    /// Floats of one worker's scratch for this job.
    package func scratchFloats(_ scoreStorage: ScoreStorage) -> Int {
        tiledScratchFloats(problem, tiling, scoreStorage, decodesTiles: decodesTiles)
    }

    /// The job over these tensors. The one place the row layout is read: everything below runs specialized for
    /// its strategy. `scores` is the materialized score tensor (`.materialized` only); `partials` holds
    /// `partialFloats` floats.
    package func job(
        queries: UnsafePointer<Float>?, segments: [KeyValueSegment], bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>?, logSumExp: UnsafeMutablePointer<Float>?, scoreStorage: ScoreStorage,
        scores: UnsafeMutablePointer<Float>?, partials: UnsafeMutablePointer<Float>, staging: RowStaging? = nil
    ) -> any TiledJob {
        func context<Layout: TileRowLayout>(_ layout: Layout) -> WorkItemContext<Layout> {
            WorkItemContext(
                problem: problem, tiling: tiling, layout: layout, queries: queries, segments: segments,
                decodesTiles: decodesTiles, bias: bias, output: output, logSumExp: logSumExp)
        }
        let contexts: TiledLayoutJob.Contexts
        switch tiling.layout {
        case .stripes: contexts = .stripes(context(StripeRows(problem, tiling)))
        case .rows: contexts = .rows(context(FewRows(problem, tiling)))
        }
        return TiledLayoutJob(
            plan: self, contexts: contexts, scratchFloats: scratchFloats(scoreStorage), scores: scores,
            partials: partials, staging: staging)
    }
}

/// One problem's work items, runnable from a shared parallel loop (`runTiledJobs`): the kernel runs one job per
/// call, a packed batch one job per sequence.
package protocol TiledJob {
    var plan: TiledJobPlan { get }
    /// Floats of the worker buffer `stage` fills (0 when the job stages nothing; see `RowStaging`).
    var stagingFloats: Int { get }
    /// Copies group `group`'s interleaved rows into `buffer` and returns the segments its items then read.
    func stage(group: Int, into buffer: UnsafeMutablePointer<Float>) -> [KeyValueSegment]
    /// Runs work item `item` (in 0..<plan.items) in a worker's scratch, finalizing it when it has one split;
    /// `segments` (from `stage`) replace the job's own when given.
    func run(item: Int, scratch: UnsafeMutablePointer<Float>, segments: [KeyValueSegment]?)
    /// Merges the split states of unit `unit` (in 0..<plan.units) into its output rows.
    func merge(unit: Int)
}

/// A job of either row layout. Not generic over the layout: an existential of a generic type would run the
/// unspecialized generic code through witness tables (and Swift marks the calls left in witness thunks noinline,
/// which kept even the prefetch hints out of line in the micro-kernels), so each entry point switches once to a
/// concrete layout and everything below it is specialized.
private struct TiledLayoutJob: TiledJob {
    enum Contexts {
        case stripes(WorkItemContext<StripeRows>)
        case rows(WorkItemContext<FewRows>)
    }

    let plan: TiledJobPlan
    let contexts: Contexts
    let scratchFloats: Int
    let scores: UnsafeMutablePointer<Float>?
    let partials: UnsafeMutablePointer<Float>
    let staging: RowStaging?

    var stagingFloats: Int { staging?.floatsPerWorker ?? 0 }

    func stage(group: Int, into buffer: UnsafeMutablePointer<Float>) -> [KeyValueSegment] {
        let segments: [KeyValueSegment]
        switch contexts {
        case .stripes(let context): segments = context.segments
        case .rows(let context): segments = context.segments
        }
        guard let staging else { return segments }
        let (b, kvHead) = group.quotientAndRemainder(dividingBy: plan.problem.keyValueHeads)
        return staging.stage(segments, batch: b, keyValueHead: kvHead, into: buffer)
    }

    /// (batch, key/value head, query block) of a unit. Last query blocks first: under a causal mask they have the
    /// most work, and starting with them balances the dynamic schedule.
    private func coordinates(unit: Int) -> (batch: Int, keyValueHead: Int, queryBlock: Int) {
        let block = plan.queryBlocks - 1 - unit % plan.queryBlocks
        let (b, kvHead) = (unit / plan.queryBlocks).quotientAndRemainder(dividingBy: plan.problem.keyValueHeads)
        return (b, kvHead, block)
    }

    func run(item: Int, scratch: UnsafeMutablePointer<Float>, segments: [KeyValueSegment]?) {
        switch contexts {
        case .stripes(let context): run(context, item: item, scratch: scratch, segments: segments)
        case .rows(let context): run(context, item: item, scratch: scratch, segments: segments)
        }
    }

    func merge(unit: Int) {
        switch contexts {
        case .stripes(let context): merge(context, unit: unit)
        case .rows(let context): merge(context, unit: unit)
        }
    }

    @inline(__always)
    private func run<Layout>(
        _ context: WorkItemContext<Layout>, item: Int, scratch: UnsafeMutablePointer<Float>,
        segments: [KeyValueSegment]?
    ) {
        let (unit, split) = item.quotientAndRemainder(dividingBy: plan.splits)
        let (b, kvHead, block) = coordinates(unit: unit)
        let (stateSize, tileFloats) = (
            plan.stateSize, plan.tiling.keyBlock * plan.tiling.paddedRows(groupSize: plan.problem.groupSize)
        )
        // Worker scratch ends with [S^T tile][state], the state only with one split (split states live in
        // `partials`); see `tiledScratchFloats`.
        let stateInScratch = plan.splits == 1 ? stateSize : 0
        let tile = scores.map { $0 + item * tileFloats } ?? scratch + (scratchFloats - stateInScratch - tileFloats)
        let state = plan.splits == 1 ? scratch + (scratchFloats - stateSize) : partials + item * stateSize
        context.run(
            batch: b, keyValueHead: kvHead, queryBlock: block, split: split, scratch: scratch, scoreTile: tile,
            state: state, segments: segments)
        if plan.splits == 1 {
            context.finalize(
                batch: b, keyValueHead: kvHead, queryBlock: block, states: state, count: 1, stride: stateSize)
        }
    }

    @inline(__always)
    private func merge<Layout>(_ context: WorkItemContext<Layout>, unit: Int) {
        let (b, kvHead, block) = coordinates(unit: unit)
        context.finalize(
            batch: b, keyValueHead: kvHead, queryBlock: block, states: partials + unit * plan.splits * plan.stateSize,
            count: plan.splits, stride: plan.stateSize)
    }
}

/// Runs every work item of `jobs` in one parallel loop (job order, each job's items in order), then merges the
/// split states of the jobs that have splits, each unit in split order: deterministic for any thread count.
/// Each worker gets `scratchFloats` floats of scratch, at least every job's own need. When a job stages rows
/// (`RowStaging`), the loop hands out groups instead of items: a worker stages a group's rows into its buffer and
/// runs the group's items in order. Returns the bytes of scratch and staging buffers.
package func runTiledJobs(_ jobs: [any TiledJob], threads: Int, scratchFloats: Int) -> Int {
    var firstItems = [0]
    var firstUnits = [0]
    var firstGroups = [0]
    for job in jobs {
        firstItems.append(firstItems[firstItems.count - 1] + job.plan.items)
        firstUnits.append(firstUnits[firstUnits.count - 1] + (job.plan.splits > 1 ? job.plan.units : 0))
        firstGroups.append(firstGroups[firstGroups.count - 1] + job.plan.groups)
    }
    let stagingFloats = jobs.map(\.stagingFloats).max() ?? 0
    let tasks = stagingFloats > 0 ? firstGroups[jobs.count] : firstItems[jobs.count]
    let workers = Parallel.workerCount(items: tasks, threads: threads)
    let perWorker = scratchFloats + stagingFloats
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, workers * perWorker))
    defer { scratch.deallocate() }
    let shared = UncheckedSendable((jobs, firstItems, firstUnits, firstGroups))
    if stagingFloats > 0 {
        Parallel.forEach(items: tasks, threads: threads) { worker, group in
            let (jobs, _, _, firstGroups) = shared.value
            let index = jobs.count == 1 ? 0 : lastIndex(atMost: group, in: firstGroups)
            let (job, local) = (jobs[index], group - firstGroups[index])
            let workerScratch = scratch + worker * perWorker
            let segments = job.stagingFloats > 0 ? job.stage(group: local, into: workerScratch + scratchFloats) : nil
            let itemsPerGroup = job.plan.queryBlocks * job.plan.splits
            for item in (local * itemsPerGroup)..<((local + 1) * itemsPerGroup) {
                job.run(item: item, scratch: workerScratch, segments: segments)
            }
        }
    } else {
        Parallel.forEach(items: tasks, threads: threads) { worker, item in
            let (jobs, firstItems, _, _) = shared.value
            let index = jobs.count == 1 ? 0 : lastIndex(atMost: item, in: firstItems)
            jobs[index].run(item: item - firstItems[index], scratch: scratch + worker * perWorker, segments: nil)
        }
    }
    let bytes = workers * perWorker * MemoryLayout<Float>.size
    guard firstUnits[jobs.count] > 0 else { return bytes }
    Parallel.forEach(items: firstUnits[jobs.count], threads: threads) { _, unit in
        let (jobs, _, firstUnits, _) = shared.value
        let index = lastIndex(atMost: unit, in: firstUnits)
        jobs[index].merge(unit: unit - firstUnits[index])
    }
    return bytes
}

/// The last index i of the sorted `bounds` (bounds[0] = 0 <= value) with bounds[i] <= value and
/// bounds[i + 1] > value: the job that owns item `value`.
private func lastIndex(atMost value: Int, in bounds: [Int]) -> Int {
    var (low, high) = (0, bounds.count - 1)
    while high - low > 1 {
        let middle = (low + high) / 2
        if bounds[middle] <= value { low = middle } else { high = middle }
    }
    return low
}
