// AttentionBackward: the gradients of attention with respect to queries, keys, values and learned sink logits,
// by FlashAttention-2's backward. Nothing of size Nq x Nk is ever allocated: each 64 x 128 tile of scores is
// recomputed from Q and K, its probabilities rebuilt from the forward's log-sum-exp, and used at once:
//
//   D = rowsum(dO * O)                      per query row, once
//   S = Q K^T, Z = scores(S) (scale, softcap, ALiBi), P = exp(Z - lse)   (0 where the mask removes a key)
//   dV += P^T dO          dP = dO V^T        dZ = P * (dP - D)
//   dX = dZ * scale * softcap'(S)            dQ += dX K        dK += dX^T Q
//   d sink_h = -sum_rows exp(sink_h - lse) * D        d bias = dZ (summed over the bias's size-1 axes)
//
// Padding (key and query padding) and a -infinity bias remove keys exactly as in the forward: P = 0 there, and a
// NaN or infinity in such a key or value never reaches a gradient. A padding row has zero gradients.
//
// Ownership (determinism): one work item per (batch entry, key/value head) owns every gradient row of that head:
// dK and dV of its keys and dQ of the query heads that read it (PyTorch's CPU flash backward does the same per
// head). It walks key tiles in order, and for each the group's query heads and query tiles in order, so every sum
// is added in one fixed order and the gradients are bitwise identical for every thread count. The cost of the
// choice: at most B * Hkv items run in parallel (a call with fewer key/value heads than threads leaves cores idle),
// and dQ accumulates in a per-worker Float32 buffer of the group's query rows (O(Nq * d), the size of the gradient
// itself). The alternative (one pass for dK/dV per key tile, another for dQ per query tile) parallelizes over
// tiles but computes S and dP twice (seven products per tile instead of five).
//
// Layouts: every row is addressed through `BackwardStrides`, so [B, N, H, d] tensors and a packed batch's
// token-major rows are read and written where they are. K and V tiles are packed per key tile anyway; a work item
// whose Q and dO rows are not consecutive copies its group's rows once into [group, Nq, d] scratch (staging), so
// that the products read them as they read a [B, H, N, d] tensor's.
//
// Storage formats (`attentionGradients` over `StoredTensor`s): Q, K, V and dO are `BackwardRows`, Float32 or
// encoded. An encoded operand is decoded exactly where a Float32 one is copied: K and V tiles as they are packed,
// Q and dO rows into the staging scratch (always staged when encoded), so the products see the same Float32 values
// either way and the gradients are bitwise those of the decoded tensors.
//
// Products are register-blocked (`accumulateProduct`: on AVX-512 4 rows x 64 columns, 16 SIMD16 accumulators, one
// broadcast and four loads per 16 multiply-adds; 2 x 32 for 16-register targets and NEON); K and V tiles are
// transposed once per tile so that every product streams rows. Rows are zero-padded to a multiple of 16, which
// leaves every sum unchanged.

import AttentionPlatform

/// The gradients of one attention call (see `attentionGradients`).
public struct AttentionGradients: Sendable {
    /// dL/dQ, in the shape and layout of the queries passed.
    public var queries: Tensor
    /// dL/dK, in the shape and layout of the keys passed: summed over the query heads of each group.
    public var keys: Tensor
    /// dL/dV, in the shape and layout of the values passed.
    public var values: Tensor
    /// dL/d(sink logit) per query head, when `options.sinkLogits` was given; summed over batch entries and rows.
    public var sinkLogits: [Float]?
    /// dL/d(bias), when `options.bias` was given: the bias's own shape, summed over its size-1 (broadcast) axes;
    /// zero where the bias is -infinity or the mask or padding removes the pair.
    public var bias: Tensor?
    /// Bytes of scratch memory the call allocated (tiles, per-worker dQ rows, the staged query and output-gradient
    /// rows of tensors whose rows are not consecutive or that are `StoredTensor`s and, for a bias that several
    /// (batch, key/value head) work items share, one bias slice per item), excluding the gradients.
    public var workspaceBytes: Int
}

/// The gradients of attention with respect to its queries, keys, values (and learned sink logits), given the
/// forward's inputs and result and the gradient of the loss with respect to the output.
///
/// ```swift
/// let result = try partialAttention(queries: q, keys: k, values: v, mask: .causal)   // keep it
/// let dO = lossGradient(result.output)                                                     // [B, Hq, Nq, Dv]
/// let grads = try attentionGradients(
///     queries: q, keys: k, values: v, result: result, outputGradient: dO, mask: .causal)
/// // grads.queries, grads.keys, grads.values: the shapes of q, k, v
/// ```
///
/// - Parameters:
///   - queries: the forward call's queries.
///   - keys: the forward call's keys.
///   - values: the forward call's values.
///   - mask: the forward call's mask.
///   - options: the forward call's options.
///   - result: the forward's output and log-sum-exp (`partialAttention`); the probabilities are rebuilt
///     from the log-sum-exp, so it must be the one computed with these inputs.
///   - outputGradient: dL/d(output), the output's shape.
/// - Returns: the gradients; rows that saw no key (and padding rows) get zero gradients. Bitwise identical for every
///   thread count. O((Nq + Nk) * d) memory beyond the gradients; 2.5x the forward's multiply-adds. With a bias, its
///   gradient (the bias's size) too; a bias broadcast over the batch (size 1, batch > 1) or over heads (size 1,
///   more than one key/value head) is summed from one partial slice per (batch, key/value head) work item, in item
///   order, so it costs that many bias slices of scratch.
///   With `options.layout` / `outputLayout` `.bnhd`, the inputs, output and output gradient are read in those
///   layouts, at their strides, and the query, key and value gradients written in `options.layout` (no head-major
///   copy of a tensor; a work item copies its group's query rows, and output-gradient rows, once into scratch
///   when they are not consecutive: O(Nq * d) per worker); the gradients of the same values are bitwise those of
///   `.bhnd` tensors.
/// - Throws: ``AttentionError`` as the forward does for the inputs, and a shape mismatch naming `result.output`,
///   `result.logSumExp` or `outputGradient`.
public func attentionGradients(
    queries: Tensor, keys: Tensor, values: Tensor, result: AttentionResult, outputGradient: Tensor,
    mask: AttentionMask = .none, options: AttentionOptions = AttentionOptions()
) throws -> AttentionGradients {
    let problem = try AttentionProblem(queries: queries, keys: keys, values: values, mask: mask, options: options)
    let strides = try BackwardStrides(problem, result: result, outputGradientShape: outputGradient.shape)
    let bias = options.bias ?? Tensor(uncheckedShape: [0], scalars: [])
    return withBaseAddresses([queries, keys, values, result.output, result.logSumExp, outputGradient, bias]) {
        BackwardPass(problem: problem).gradients(
            BackwardInputs(
                q: .float32($0[0]), k: .float32($0[1]), v: .float32($0[2]), o: $0[3], lse: $0[4], dO: .float32($0[5]),
                bias: bias.scalars.isEmpty ? nil : $0[6], strides: strides),
            queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape)
    }
}

/// One backward call: the problem's dimensions, padded widths and per-head score parameters.
struct BackwardPass {
    let problem: AttentionProblem
    /// Keys per tile and query rows per tile. 128 keys halve the passes over Q, dO and the dQ rows that 64 took:
    /// on an EPYC Zen 5 VM (2026-12-04, H = 8, N = 4096, one thread) d = 64 went from 171 to 191 GFLOP/s unmasked
    /// and 167 to 174 causal, d = 128 stayed within noise (195 / 190); 128 query rows as well lost 4-17%.
    let keyTile = 128
    let rowTile = 64
    /// Head dimensions rounded up to a multiple of 16.
    let dk: Int
    let dv: Int

    /// The bias's shape [batch or 1, queryHeads or 1, queryLength or 1, keyLength], if there is one, and its size.
    let biasShape: [Int]?
    let biasCount: Int

    init(problem: AttentionProblem) {
        self.problem = problem
        dk = (problem.keyDimension + 15) / 16 * 16
        dv = (problem.valueDimension + 15) / 16 * 16
        biasShape = problem.options.bias?.shape
        biasCount = problem.options.bias?.scalars.count ?? 0
    }

    /// Whether several work items add into one slice of the bias gradient (then each writes a partial of its own).
    var biasShared: Bool {
        guard let shape = biasShape else { return false }
        return (shape[0] == 1 && problem.batch > 1) || (shape[1] == 1 && problem.keyValueHeads > 1)
    }

    /// Floats of one work item's bias-gradient slice: [heads of the item (1 if the bias has one head), Nq or 1, Nk].
    var biasItemFloats: Int {
        guard let shape = biasShape else { return 0 }
        return (shape[1] == 1 ? 1 : problem.groupSize) * shape[2] * shape[3]
    }

    /// Offset of the bias's [Nq or 1, Nk] slice for batch entry `b` and query head `head`.
    func biasSlice(batch b: Int, head: Int) -> Int {
        let shape = biasShape!
        return ((shape[0] == 1 ? 0 : b) * shape[1] + (shape[1] == 1 ? 0 : head)) * shape[2] * shape[3]
    }

    /// Offset, in the bias work buffer (the gradient, then the items' partials), of work item `item`'s partial
    /// slice for query head `h` of its group (one slice for all of them when the bias has one head).
    func biasPartial(item: Int, head h: Int) -> Int {
        let shape = biasShape!
        return biasCount + item * biasItemFloats + (shape[1] == 1 ? 0 : h) * shape[2] * shape[3]
    }

    /// The mask query head `head` sees: the call's, intersected with its head mask if any.
    func mask(head: Int) -> AttentionMask {
        guard let masks = problem.options.headMasks else { return problem.mask }
        return .intersection(problem.mask, masks[head])
    }

    /// Per-worker scratch, in floats.
    func scratchFloats(_ strides: BackwardStrides, encoded: (queries: Bool, outputGradients: Bool) = (false, false))
        -> Int
    {
        let (group, nq) = (problem.groupSize, problem.queryLength)
        let staged = stagedRows(strides, encoded: encoded)
        return 2 * keyTile * dk + 2 * keyTile * dv  // K, K^T, V, V^T
            + keyTile * dk + keyTile * dv  // dK, dV accumulators
            + rowTile * dk + rowTile * dv  // Q, dO rows
            + 3 * rowTile * keyTile  // S / P, dP, dX
            + group * nq * (dk + 2)  // dQ rows, D and lse per row
            + (staged.queries ? group * nq * dk : 0) + (staged.outputGradients ? group * nq * dv : 0)
    }

    /// Whether a work item stages its group's query rows, and its output-gradient rows (see `runItem`): those that
    /// are not consecutive (a [B, N, H, d] or packed tensor) or are encoded (decoded once per item).
    func stagedRows(_ strides: BackwardStrides, encoded: (queries: Bool, outputGradients: Bool) = (false, false))
        -> (queries: Bool, outputGradients: Bool)
    {
        (
            encoded.queries || strides.queries.token != problem.keyDimension,
            encoded.outputGradients || strides.outputs.token != problem.valueDimension
        )
    }

    /// The gradients of the rows `inputs` addresses (dense [B, H, N, d] or [B, N, H, d]), as Float32 tensors of the
    /// given shapes at the inputs' strides.
    func gradients(_ inputs: BackwardInputs, queryShape: [Int], keyShape: [Int], valueShape: [Int])
        -> AttentionGradients
    {
        let p = problem
        var dQ = [Float](repeating: 0, count: p.batch * p.queryHeads * p.queryLength * p.keyDimension)
        var dK = [Float](repeating: 0, count: p.batch * p.keyValueHeads * p.keyLength * p.keyDimension)
        var dV = [Float](repeating: 0, count: p.batch * p.keyValueHeads * p.keyLength * p.valueDimension)
        let (sinkGradients, biasGradient, workspace) = dQ.withUnsafeMutableBufferPointer { dq in
            dK.withUnsafeMutableBufferPointer { dk in
                dV.withUnsafeMutableBufferPointer { dv in
                    run(inputs, dQ: dq.baseAddress!, dK: dk.baseAddress!, dV: dv.baseAddress!)
                }
            }
        }
        return AttentionGradients(
            queries: Tensor(uncheckedShape: queryShape, scalars: dQ),
            keys: Tensor(uncheckedShape: keyShape, scalars: dK),
            values: Tensor(uncheckedShape: valueShape, scalars: dV), sinkLogits: sinkGradients, bias: biasGradient,
            workspaceBytes: workspace)
    }

    /// Runs every work item over `inputs`, writing dQ, dK and dV rows at the inputs' query, key and value strides.
    /// Every dQ row is written; the dK and dV rows of a key tile that no query row sees are not (zero them first).
    /// Returns the sink-logit gradients (per query head, summed over the batch), the bias gradient and the bytes
    /// of scratch.
    func run(
        _ inputs: BackwardInputs, dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>,
        dV: UnsafeMutablePointer<Float>
    ) -> (sinkLogits: [Float]?, bias: Tensor?, workspaceBytes: Int) {
        let p = problem
        let items = p.batch * p.keyValueHeads
        let workers = Parallel.workerCount(items: items, threads: p.threads)
        // Each item's sink-logit gradients, summed in item order afterwards.
        var sinkParts = [Float](repeating: 0, count: items * p.groupSize)
        let perWorker = scratchFloats(inputs.strides, encoded: (inputs.q.isEncoded, inputs.dO.isEncoded))
        var scratch = [Float](repeating: 0, count: workers * perWorker)
        // The bias gradient, then (if items share its slices) one partial slice per item, summed in item order.
        var biasWork = [Float](repeating: 0, count: biasCount + (biasShared ? items * biasItemFloats : 0))
        sinkParts.withUnsafeMutableBufferPointer { sinks in
            scratch.withUnsafeMutableBufferPointer { work in
                biasWork.withUnsafeMutableBufferPointer { biasWork in
                    // Disjoint writes: item i writes only its own heads' rows, its sink slots, its bias slices (or
                    // partial) and its worker's scratch.
                    let targets = UncheckedSendable(
                        (dQ, dK, dV, sinks.baseAddress!, work.baseAddress!, biasWork.baseAddress!))
                    Parallel.forEach(items: items, threads: p.threads) { worker, item in
                        let (dq, dk, dv, sinks, work, biasWork) = targets.value
                        runItem(
                            item, inputs, dQ: dq, dK: dk, dV: dv, sinkGradients: sinks + item * p.groupSize,
                            biasGradient: biasWork, scratch: work + worker * perWorker)
                    }
                }
            }
        }
        var biasGradient: Tensor? = nil
        if let shape = biasShape {
            if biasShared {
                // Item order, then each item's heads in order: the same sums for every thread count.
                let slice = shape[2] * shape[3]
                for item in 0..<items {
                    let (b, g) = (item / p.keyValueHeads, item % p.keyValueHeads)
                    for local in 0..<(shape[1] == 1 ? 1 : p.groupSize) {
                        let target = biasSlice(batch: b, head: g * p.groupSize + local)
                        let source = biasPartial(item: item, head: local)
                        for e in 0..<slice { biasWork[target + e] += biasWork[source + e] }
                    }
                }
                biasWork.removeLast(biasWork.count - biasCount)
            }
            biasGradient = Tensor(uncheckedShape: shape, scalars: biasWork)
        }
        var sinkGradients: [Float]? = nil
        if p.options.sinkLogits != nil {
            var sums = [Float](repeating: 0, count: p.queryHeads)
            for b in 0..<p.batch {
                for head in 0..<p.queryHeads {
                    let g = p.keyValueHead(of: head)
                    sums[head] += sinkParts[(b * p.keyValueHeads + g) * p.groupSize + head - g * p.groupSize]
                }
            }
            sinkGradients = sums
        }
        return (
            sinkGradients, biasGradient,
            (scratch.count + (biasShared ? items * biasItemFloats : 0)) * MemoryLayout<Float>.size
        )
    }
}

/// The base addresses of the tensors' scalars, valid inside `body`.
func withBaseAddresses<R>(_ tensors: [Tensor], _ body: ([UnsafePointer<Float>]) -> R) -> R {
    func nest(_ index: Int, _ addresses: [UnsafePointer<Float>]) -> R {
        if index == tensors.count { return body(addresses) }
        return tensors[index].withUnsafeBufferPointer { nest(index + 1, addresses + [$0.baseAddress!]) }
    }
    return nest(0, [])
}

/// Where the rows of a backward call's tensors live, in floats (`RowStrides`): queries (and dQ), keys (and dK),
/// values (and dV), the output and its gradient dO, and the log-sum-exp (one float per row: `token` is the stride
/// between a head's rows).
struct BackwardStrides {
    let queries: RowStrides
    let keys: RowStrides
    let values: RowStrides
    let outputs: RowStrides
    let logSumExp: RowStrides

    /// The problem's query, output and log-sum-exp strides (the forward's), and the keys' and values'.
    init(_ problem: AttentionProblem, keys: RowStrides, values: RowStrides) {
        (queries, outputs, logSumExp) = (problem.queryStrides, problem.outputStrides, problem.logSumExpStrides)
        (self.keys, self.values) = (keys, values)
    }

    /// The strides of a dense call in `problem.options.layout` (keys, values, the gradients) and `outputLayout`
    /// (output, output gradient), after checking that the forward's result and the output gradient have the shapes
    /// the problem's output has.
    init(_ problem: AttentionProblem, result: AttentionResult, outputGradientShape: [Int]) throws {
        let p = problem
        let (layout, outputLayout) = (p.options.layout, p.options.outputLayout ?? p.options.layout)
        let outputShape = outputLayout.shape(
            batch: p.batch, heads: p.queryHeads, tokens: p.queryLength, dimension: p.valueDimension)
        let lseShape = [p.batch, p.queryHeads, p.queryLength]
        guard result.output.shape == outputShape else {
            throw AttentionError.shapeMismatch(
                argument: "result.output", expected: "\(outputShape)", actual: result.output.shape,
                reason: "the forward's output for these queries and values")
        }
        guard result.logSumExp.shape == lseShape else {
            throw AttentionError.shapeMismatch(
                argument: "result.logSumExp", expected: "\(lseShape)",
                actual: result.logSumExp.shape, reason: "one log-sum-exp per query row")
        }
        guard outputGradientShape == outputShape else {
            throw AttentionError.shapeMismatch(
                argument: "outputGradient", expected: "\(outputShape)", actual: outputGradientShape,
                reason: "the gradient of the loss with respect to the output has the output's shape")
        }
        // Rows are read and the gradients written at the layouts' strides: no head-major copy.
        self.init(
            problem, keys: layout.strides(heads: p.keyValueHeads, tokens: p.keyLength, dimension: p.keyDimension),
            values: layout.strides(heads: p.keyValueHeads, tokens: p.keyLength, dimension: p.valueDimension))
    }
}

/// Where one input's rows live: Float32 scalars, or rows encoded in a storage format (a `StoredTensor`'s). Offsets
/// are in floats either way, as if the tensor were Float32: every row starts at a multiple of its width, and the
/// row at float offset o of an encoded tensor is at byte o / width * rowBytes.
enum BackwardRows {
    case float32(UnsafePointer<Float>)
    case encoded(UnsafeRawPointer, RowCodec)

    var isEncoded: Bool {
        if case .encoded = self { return true }
        return false
    }

    /// The rows from float offset `floats` on (a multiple of the row width).
    func advanced(by floats: Int) -> BackwardRows {
        switch self {
        case .float32(let scalars): return .float32(scalars + floats)
        case .encoded(let base, let codec): return .encoded(base + floats / codec.dimension * codec.rowBytes, codec)
        }
    }

    /// The `rows` rows starting at float offset `offset`, `stride` floats apart, as rows of `padded` floats at
    /// `target` (copied, or decoded: exactly the values the format holds), zeros in the padding and in rows
    /// `rows ..< tileRows`.
    func pack(
        at offset: Int, rows: Int, stride: Int, width: Int, into target: UnsafeMutablePointer<Float>, padded: Int,
        tileRows: Int
    ) {
        target.update(repeating: 0, count: tileRows * padded)
        switch self {
        case .float32(let scalars):
            for r in 0..<rows { (target + r * padded).update(from: scalars + offset + r * stride, count: width) }
        case .encoded(let base, let codec):
            let first = base + offset / width * codec.rowBytes
            if padded == width {
                codec.decode(first, rows: rows, rowStride: stride / width * codec.rowBytes, into: target)
            } else {
                for r in 0..<rows {
                    codec.decode(first + r * (stride / width) * codec.rowBytes, rows: 1, into: target + r * padded)
                }
            }
        }
    }
}

/// The read-only inputs of a backward call, their rows at `strides`: queries, keys, values and the output gradient
/// in any format (`BackwardRows`), the forward's output and log-sum-exp in Float32.
struct BackwardInputs: @unchecked Sendable {
    let q: BackwardRows
    let k: BackwardRows
    let v: BackwardRows
    let o: UnsafePointer<Float>
    let lse: UnsafePointer<Float>
    let dO: BackwardRows
    /// [B or 1, Hq or 1, Nq or 1, Nk], when the call has a bias.
    let bias: UnsafePointer<Float>?
    let strides: BackwardStrides
}

extension BackwardPass {
    /// Work item `item` = (batch entry, key/value head): all gradients of that head (see the file's legend).
    func runItem(
        _ item: Int, _ inputs: BackwardInputs, dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>,
        dV: UnsafeMutablePointer<Float>, sinkGradients: UnsafeMutablePointer<Float>,
        biasGradient: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        let p = problem
        let (b, g) = (item / p.keyValueHeads, item % p.keyValueHeads)
        let (nq, nk, kd, vd, group) = (p.queryLength, p.keyLength, p.keyDimension, p.valueDimension, p.groupSize)
        // Scratch layout.
        let kTile = scratch
        let kT = kTile + keyTile * dk
        let vTile = kT + keyTile * dk
        let vT = vTile + keyTile * dv
        let dKTile = vT + keyTile * dv
        let dVTile = dKTile + keyTile * dk
        let qPacked = dVTile + keyTile * dv
        let dOPacked = qPacked + rowTile * dk
        let probabilities = dOPacked + rowTile * dv
        let dP = probabilities + rowTile * keyTile
        let dX = dP + rowTile * keyTile
        let dQRows = dX + rowTile * keyTile  // [group, nq, dk]
        let rowD = dQRows + group * nq * dk  // [group, nq]
        let rowLSE = rowD + group * nq  // [group, nq], -inf for a row that sees nothing
        let firstHead = g * group
        let strides = inputs.strides
        (dQRows).update(repeating: 0, count: group * nq * dk)
        // Rows of other heads in between (a [B, N, H, d] or packed tensor): the group's Q rows, and its dO rows, are
        // copied once into [group, nq, d] (padded to dk / dv), so that every key tile reads them consecutively, as it
        // reads a [B, H, N, d] tensor's (packing them per key tile instead cost 6% of a packed batch's backward,
        // Zen 3). Encoded rows are decoded there, once per item, whatever their layout.
        let staging = stagedRows(strides, encoded: (inputs.q.isEncoded, inputs.dO.isEncoded))
        // The group's rows of `source` (at `rows`) copied into [group, nq, padded] at `target`, once per item.
        func stage(
            _ source: BackwardRows, _ rows: RowStrides, width: Int, padded: Int,
            into target: UnsafeMutablePointer<Float>
        ) -> UnsafeMutablePointer<Float> {
            for h in 0..<group {
                source.pack(
                    at: rows.offset(batch: b, head: firstHead + h, token: 0), rows: nq, stride: rows.token,
                    width: width, into: target + h * nq * padded, padded: padded, tileRows: nq)
            }
            return target
        }
        let stagedQueries =
            staging.queries ? stage(inputs.q, strides.queries, width: kd, padded: dk, into: rowLSE + group * nq) : nil
        let stagedOutputGradients =
            staging.outputGradients
            ? stage(
                inputs.dO, strides.outputs, width: vd, padded: dv,
                into: rowLSE + group * nq + (staging.queries ? group * nq * dk : 0)) : nil

        // Row r of query head h of the group in the output gradient (at float offset `offset` in the tensor).
        func outputGradientRow(_ h: Int, _ r: Int, _ offset: Int) -> UnsafePointer<Float> {
            if let staged = stagedOutputGradients { return UnsafePointer(staged + (h * nq + r) * dv) }
            guard case .float32(let scalars) = inputs.dO else { preconditionFailure("encoded rows are staged") }
            return scalars + offset
        }
        // D = rowsum(dO * O) per row, the row's log-sum-exp, and the sink-logit gradients.
        for h in 0..<group {
            let head = firstHead + h
            var sinkGradient: Float = 0
            for r in 0..<nq {
                let row = strides.outputs.offset(batch: b, head: head, token: r)
                let o = inputs.o + row
                let dO = outputGradientRow(h, r, row)
                var d: Float = 0
                for c in 0..<vd { d += dO[c] * o[c] }
                rowD[h * nq + r] = d
                let lse = inputs.lse[strides.logSumExp.offset(batch: b, head: head, token: r)]
                rowLSE[h * nq + r] = lse
                if let sinks = p.options.sinkLogits, lse.isFinite {
                    sinkGradient -= VectorMath.exp(SIMD16(repeating: sinks[head] - lse))[0] * d
                }
            }
            sinkGradients[h] = sinkGradient
        }

        // Each (head, row tile)'s visible key spans, computed once and asked about every key tile (O(1) for the
        // tiles a causal or windowed row block sees whole).
        // Padding enters here: the spans are intersected with the entry's real keys, and padding rows see none.
        let masks = (0..<group).map { self.mask(head: firstHead + $0) }
        let rowTiles = (nq + rowTile - 1) / rowTile
        let rowSpans = (0..<group * rowTiles).map { index in
            let rowStart = (index % rowTiles) * rowTile
            return MaskRowSpans(
                mask: masks[index / rowTiles], queries: rowStart..<Swift.min(nq, rowStart + rowTile),
                queryLength: nq, keyLength: nk, keyRuns: p.keyRuns?[b], queryRuns: p.queryRuns?[b])
        }
        // The bias gradient's [Nq or 1, Nk] slice of query head h of the group: in the item's own partial when
        // items share slices, else in the gradient itself.
        let biasRowStride = (biasShape?[2] ?? 1) == 1 ? 0 : nk
        func biasGradientSlice(_ h: Int) -> UnsafeMutablePointer<Float> {
            biasGradient + (biasShared ? biasPartial(item: item, head: h) : biasSlice(batch: b, head: firstHead + h))
        }
        var visits: [(h: Int, rows: Range<Int>, coverage: TileCoverage, spans: Int)] = []
        visits.reserveCapacity(group * rowTiles)
        for keyStart in stride(from: 0, to: nk, by: keyTile) {
            let keys = keyStart..<Swift.min(nk, keyStart + keyTile)
            // Which (head, row tile) pairs see this key tile at all.
            visits.removeAll(keepingCapacity: true)
            for h in 0..<group {
                for t in 0..<rowTiles {
                    let coverage = rowSpans[h * rowTiles + t].coverage(keys: keys)
                    let rows = t * rowTile..<Swift.min(nq, (t + 1) * rowTile)
                    if coverage != .empty { visits.append((h, rows, coverage, h * rowTiles + t)) }
                }
            }
            if visits.isEmpty { continue }
            inputs.k.pack(
                at: strides.keys.offset(batch: b, head: g, token: keys.lowerBound), rows: keys.count,
                stride: strides.keys.token, width: kd, into: kTile, padded: dk, tileRows: keyTile)
            inputs.v.pack(
                at: strides.values.offset(batch: b, head: g, token: keys.lowerBound), rows: keys.count,
                stride: strides.values.token, width: vd, into: vTile, padded: dv, tileRows: keyTile)
            transpose(kTile, rows: keyTile, width: dk, into: kT)
            transpose(vTile, rows: keyTile, width: dv, into: vT)
            let keysFinite = allFinite(kTile, count: keyTile * dk)
            dKTile.update(repeating: 0, count: keyTile * dk)
            dVTile.update(repeating: 0, count: keyTile * dv)
            for visit in visits {
                let head = firstHead + visit.h
                let rows = visit.rows
                // Query and output-gradient rows: staged, or in place when their width is already a multiple of 16,
                // else packed.
                let qRows =
                    stagedQueries.map { UnsafePointer($0 + (visit.h * nq + rows.lowerBound) * dk) }
                    ?? paddedRows(
                        inputs.q, at: strides.queries.offset(batch: b, head: head, token: rows.lowerBound),
                        rows: rows.count, width: kd, padded: dk, buffer: qPacked)
                let dORows =
                    stagedOutputGradients.map { UnsafePointer($0 + (visit.h * nq + rows.lowerBound) * dv) }
                    ?? paddedRows(
                        inputs.dO, at: strides.outputs.offset(batch: b, head: head, token: rows.lowerBound),
                        rows: rows.count, width: vd, padded: dv, buffer: dOPacked)
                // S = Q K^T, then P (probabilities) in place; dX keeps scale * softcap'(s) for now.
                accumulateProduct(
                    into: probabilities, ldc: keyTile, a: qRows, am: dk, ak: 1, b: kT, ldb: keyTile, rows: rows.count,
                    depth: dk, width: keyTile, accumulate: false)
                probabilitiesInPlace(
                    probabilities, derivative: dX, head: head, rows: rows, keys: keys, mask: masks[visit.h],
                    spans: rowSpans[visit.spans], coverage: visit.coverage, lse: rowLSE + visit.h * nq,
                    bias: inputs.bias.map { $0 + biasSlice(batch: b, head: head) }, biasRowStride: biasRowStride)
                // dV += P^T dO.
                accumulateProduct(
                    into: dVTile, ldc: dv, a: probabilities, am: 1, ak: keyTile, b: dORows, ldb: dv, rows: keyTile,
                    depth: rows.count, width: dv, accumulate: true)
                // dP = dO V^T, then dZ = P * (dP - D) (the bias gradient) and dX = dZ * scale * softcap'.
                accumulateProduct(
                    into: dP, ldc: keyTile, a: dORows, am: dv, ak: 1, b: vT, ldb: keyTile, rows: rows.count,
                    depth: dv, width: keyTile, accumulate: false)
                for r in 0..<rows.count {
                    let d = SIMD16<Float>(repeating: rowD[visit.h * nq + rows.lowerBound + r])
                    for chunk in stride(from: r * keyTile, to: (r + 1) * keyTile, by: 16) {
                        let pr = UnsafeRawPointer(probabilities + chunk).loadUnaligned(as: SIMD16<Float>.self)
                        let dp = UnsafeRawPointer(dP + chunk).loadUnaligned(as: SIMD16<Float>.self)
                        let f = UnsafeRawPointer(dX + chunk).loadUnaligned(as: SIMD16<Float>.self)
                        // A removed key has P = 0 exactly; select, so that a NaN in its value (in dP) stays out.
                        let dz = (pr * (dp - d)).replacing(with: 0, where: pr .== 0)
                        UnsafeMutableRawPointer(dP + chunk).storeBytes(of: dz, as: SIMD16<Float>.self)
                        UnsafeMutableRawPointer(dX + chunk).storeBytes(of: dz * f, as: SIMD16<Float>.self)
                    }
                }
                if inputs.bias != nil {
                    // d bias += dZ (now in dP); rows of a bias broadcast over queries add into one row, in order.
                    let target = biasGradientSlice(visit.h) + keys.lowerBound
                    for r in 0..<rows.count {
                        let biasRow = target + (rows.lowerBound + r) * biasRowStride
                        for c in 0..<keys.count { biasRow[c] += dP[r * keyTile + c] }
                    }
                }
                // dK += dX^T Q.
                accumulateProduct(
                    into: dKTile, ldc: dk, a: dX, am: 1, ak: keyTile, b: qRows, ldb: dk, rows: keyTile,
                    depth: rows.count, width: dk, accumulate: true)
                // dQ += dX K: a key the mask removes has dX = 0 but may hold NaN; if the tile has any non-finite
                // key, skip the zero terms one by one rather than multiply them.
                let dq = dQRows + (visit.h * nq + rows.lowerBound) * dk
                if keysFinite {
                    accumulateProduct(
                        into: dq, ldc: dk, a: dX, am: keyTile, ak: 1, b: kTile, ldb: dk, rows: rows.count,
                        depth: keyTile, width: dk, accumulate: true)
                } else {
                    for r in 0..<rows.count {
                        for c in 0..<keyTile where dX[r * keyTile + c] != 0 {
                            let x = dX[r * keyTile + c]
                            for e in 0..<dk { dq[r * dk + e] += x * kTile[c * dk + e] }
                        }
                    }
                }
            }
            for (t, key) in keys.enumerated() {
                let kOut = dK + strides.keys.offset(batch: b, head: g, token: key)
                let vOut = dV + strides.values.offset(batch: b, head: g, token: key)
                for e in 0..<kd { kOut[e] = dKTile[t * dk + e] }
                for e in 0..<vd { vOut[e] = dVTile[t * dv + e] }
            }
        }
        for h in 0..<group {
            for r in 0..<nq {
                let out = dQ + strides.queries.offset(batch: b, head: firstHead + h, token: r)
                for e in 0..<kd { out[e] = dQRows[(h * nq + r) * dk + e] }
            }
        }
    }

    /// Turns the scores S of `rows` x `keys` (stride keyTile) into probabilities P = exp(Z - lse), Z the forward's
    /// score pipeline (scale, softcap, ALiBi); P = 0 for removed keys, padding columns and rows that see nothing.
    /// Writes dZ/dS's factor (scale, times softcap's derivative 1 - tanh^2) into `derivative`.
    /// `bias` is the head's [Nq or 1, Nk] bias slice (row stride `biasRowStride`, 0 when broadcast over queries);
    /// a -infinity entry gives P = 0 whatever the score (NaN or infinite keys included).
    func probabilitiesInPlace(
        _ s: UnsafeMutablePointer<Float>, derivative: UnsafeMutablePointer<Float>, head: Int, rows: Range<Int>,
        keys: Range<Int>, mask: AttentionMask, spans: MaskRowSpans, coverage: TileCoverage,
        lse: UnsafePointer<Float>, bias: UnsafePointer<Float>?, biasRowStride: Int
    ) {
        let p = problem
        let scale = p.scale
        let softcap = p.options.softcap
        let slope = p.options.alibiSlopes?[head]
        let diagonalOffset = p.keyLength - p.queryLength
        let hasPredicate = spans.hasPredicate
        for r in 0..<rows.count {
            let query = rows.lowerBound + r
            let rowLSE = lse[query]
            let row = s + r * keyTile
            let factor = derivative + r * keyTile
            guard rowLSE.isFinite else {
                row.update(repeating: 0, count: keyTile)
                factor.update(repeating: 0, count: keyTile)
                continue
            }
            for chunk in stride(from: 0, to: keyTile, by: 16) {
                var x = UnsafeRawPointer(row + chunk).loadUnaligned(as: SIMD16<Float>.self) * scale
                var f = SIMD16<Float>(repeating: scale)
                if let softcap {
                    let t = VectorMath.tanh(x / softcap)
                    x = t * softcap
                    f = f * (1 - t * t)
                }
                if let slope {
                    var distance = SIMD16<Float>()
                    for lane in 0..<16 {
                        distance[lane] = Float(abs(query + diagonalOffset - (keys.lowerBound + chunk + lane)))
                    }
                    x = x - slope * distance
                }
                var removed: SIMDMask<SIMD16<Int32>>? = nil
                if let bias {
                    // Only the tile's real keys are read (the columns past them are zeroed below).
                    let row = bias + query * biasRowStride + keys.lowerBound + chunk
                    var added = SIMD16<Float>()
                    if chunk + 16 <= keys.count {
                        added = UnsafeRawPointer(row).loadUnaligned(as: SIMD16<Float>.self)
                    } else {
                        for lane in 0..<Swift.max(0, keys.count - chunk) { added[lane] = row[lane] }
                    }
                    x = x + added
                    removed = added .== -.infinity
                }
                var e = VectorMath.exp(x - rowLSE)
                if let removed { e.replace(with: 0, where: removed) }
                UnsafeMutableRawPointer(row + chunk).storeBytes(of: e, as: SIMD16<Float>.self)
                UnsafeMutableRawPointer(factor + chunk).storeBytes(of: f, as: SIMD16<Float>.self)
            }
            // Zero the removed keys: in a partial tile by the mask, in the last tile the columns past the keys.
            if coverage == .full {
                for c in keys.count..<keyTile { row[c] = 0 }
            } else {
                // The row's visible spans (exact for structured masks): zero the gaps between them, and test the
                // predicate (if any) inside them.
                var next = keys.lowerBound  // the first key not yet decided
                for span in spans.spans[r] {
                    let lower = Swift.min(Swift.max(span.lowerBound, next), keys.upperBound)
                    let upper = Swift.max(lower, Swift.min(span.upperBound, keys.upperBound))
                    for key in next..<lower { row[key - keys.lowerBound] = 0 }
                    if hasPredicate {
                        for key in lower..<upper
                        where !mask.allows(
                            query: query, key: key, queryLength: p.queryLength, keyLength: p.keyLength)
                        {
                            row[key - keys.lowerBound] = 0
                        }
                    }
                    next = upper
                }
                for c in (next - keys.lowerBound)..<keyTile { row[c] = 0 }
            }
        }
    }

    /// `rows` consecutive rows of `width` floats at float offset `offset` of `source` as rows of `padded` floats:
    /// in place when they are Float32 and the width is already a multiple of 16, else packed into `buffer`.
    func paddedRows(
        _ source: BackwardRows, at offset: Int, rows: Int, width: Int, padded: Int,
        buffer: UnsafeMutablePointer<Float>
    ) -> UnsafePointer<Float> {
        if case .float32(let scalars) = source, width == padded { return scalars + offset }
        source.pack(at: offset, rows: rows, stride: width, width: width, into: buffer, padded: padded, tileRows: rows)
        return UnsafePointer(buffer)
    }
}

/// target[c * rows + r] = source[r * width + c]: a tile's columns as rows.
private func transpose(
    _ source: UnsafePointer<Float>, rows: Int, width: Int, into target: UnsafeMutablePointer<Float>
) {
    for r in 0..<rows {
        for c in 0..<width { target[c * rows + r] = source[r * width + c] }
    }
}

/// Whether every one of `count` floats is finite.
private func allFinite(_ values: UnsafePointer<Float>, count: Int) -> Bool {
    var sum: Float = 0
    for i in 0..<count { sum += values[i] * 0 }
    return sum == 0
}

/// C[m, 0..<width] (+)= sum over k < depth of A[m * am + k * ak] * B[k * ldb, 0..<width], m < rows; width a
/// multiple of 16. The register blocking follows the build target's register file: 4 rows x 4 vectors (16 SIMD16
/// accumulators) where a SIMD16 is one of 32 registers (AVX-512), 2 rows x 2 vectors (4 accumulators, 8 chains of
/// 256 or 16 of 128 bits) elsewhere (AVX2's 16 ymm, SSE2, arm64 NEON), where the 4 x 4 block spills. Both compute
/// every element as the same chain over k, so the blocking never changes a result. Rows and columns past the last
/// whole block run one row and one vector at a time.
@inline(__always)
private func accumulateProduct(
    into c: UnsafeMutablePointer<Float>, ldc: Int, a: UnsafePointer<Float>, am: Int, ak: Int,
    b: UnsafePointer<Float>, ldb: Int, rows: Int, depth: Int, width: Int, accumulate: Bool
) {
    let x = ProductOperands(c: c, ldc: ldc, a: a, am: am, ak: ak, b: b, ldb: ldb, depth: depth, accumulate: accumulate)
    let wide = swift_attention_target_has_avx512() != 0
    let (blockRows, blockColumns) = wide ? (4, 64) : (2, 32)
    var column = 0
    while column + blockColumns <= width {
        var m = 0
        while m + blockRows <= rows {
            if wide { x.block4x64(m: m, column: column) } else { x.block2x32(m: m, column: column) }
            m += blockRows
        }
        if m < rows { x.tail(rows: m..<rows, columns: column..<(column + blockColumns)) }
        column += blockColumns
    }
    if column < width { x.tail(rows: 0..<rows, columns: column..<width) }
}

/// The operands of one `accumulateProduct` call.
private struct ProductOperands {
    typealias V = SIMD16<Float>
    /// C, rows `ldc` floats apart.
    let c: UnsafeMutablePointer<Float>, ldc: Int
    /// A, element (m, k) at m * am + k * ak (a transposed operand has am = 1).
    let a: UnsafePointer<Float>, am: Int, ak: Int
    /// B, rows `ldb` floats apart.
    let b: UnsafePointer<Float>, ldb: Int
    /// The length of each sum, and whether it adds to C's values (else overwrites them).
    let depth: Int, accumulate: Bool

    @inline(__always) func load(_ pointer: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(pointer).loadUnaligned(as: V.self)
    }

    @inline(__always) func store(_ value: V, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: V.self)
    }

    /// Rows m, m + 1 x columns column ..< column + 32: 4 accumulators, for 16 vector registers.
    @inline(__always) func block2x32(m: Int, column: Int) {
        let base = c + m * ldc + column
        var c00 = V(), c01 = V(), c10 = V(), c11 = V()
        if accumulate {
            c00 = load(base); c01 = load(base + 16); c10 = load(base + ldc); c11 = load(base + ldc + 16)
        }
        var a0 = a + m * am, a1 = a0 + am
        var bRow = b + column
        for _ in 0..<depth {
            let b0 = load(bRow), b1 = load(bRow + 16)
            let x0 = V(repeating: a0.pointee), x1 = V(repeating: a1.pointee)
            c00 = multiplyAdd(x0, b0, c00); c01 = multiplyAdd(x0, b1, c01)
            c10 = multiplyAdd(x1, b0, c10); c11 = multiplyAdd(x1, b1, c11)
            a0 += ak; a1 += ak
            bRow += ldb
        }
        store(c00, base); store(c01, base + 16); store(c10, base + ldc); store(c11, base + ldc + 16)
    }

    /// Rows m ..< m + 4 x columns column ..< column + 64: 16 accumulators, for 32 registers of 16 floats.
    @inline(__always) func block4x64(m: Int, column: Int) {
        var c00 = V(), c01 = V(), c02 = V(), c03 = V()
        var c10 = V(), c11 = V(), c12 = V(), c13 = V()
        var c20 = V(), c21 = V(), c22 = V(), c23 = V()
        var c30 = V(), c31 = V(), c32 = V(), c33 = V()
        let base = c + m * ldc + column
        if accumulate {
            c00 = load(base); c01 = load(base + 16); c02 = load(base + 32); c03 = load(base + 48)
            c10 = load(base + ldc); c11 = load(base + ldc + 16); c12 = load(base + ldc + 32)
            c13 = load(base + ldc + 48)
            c20 = load(base + 2 * ldc); c21 = load(base + 2 * ldc + 16); c22 = load(base + 2 * ldc + 32)
            c23 = load(base + 2 * ldc + 48)
            c30 = load(base + 3 * ldc); c31 = load(base + 3 * ldc + 16); c32 = load(base + 3 * ldc + 32)
            c33 = load(base + 3 * ldc + 48)
        }
        var a0 = a + m * am, a1 = a0 + am, a2 = a1 + am, a3 = a2 + am
        var bRow = b + column
        for _ in 0..<depth {
            let b0 = load(bRow), b1 = load(bRow + 16), b2 = load(bRow + 32), b3 = load(bRow + 48)
            let x0 = V(repeating: a0.pointee), x1 = V(repeating: a1.pointee)
            let x2 = V(repeating: a2.pointee), x3 = V(repeating: a3.pointee)
            c00 = multiplyAdd(x0, b0, c00); c01 = multiplyAdd(x0, b1, c01)
            c02 = multiplyAdd(x0, b2, c02); c03 = multiplyAdd(x0, b3, c03)
            c10 = multiplyAdd(x1, b0, c10); c11 = multiplyAdd(x1, b1, c11)
            c12 = multiplyAdd(x1, b2, c12); c13 = multiplyAdd(x1, b3, c13)
            c20 = multiplyAdd(x2, b0, c20); c21 = multiplyAdd(x2, b1, c21)
            c22 = multiplyAdd(x2, b2, c22); c23 = multiplyAdd(x2, b3, c23)
            c30 = multiplyAdd(x3, b0, c30); c31 = multiplyAdd(x3, b1, c31)
            c32 = multiplyAdd(x3, b2, c32); c33 = multiplyAdd(x3, b3, c33)
            a0 += ak; a1 += ak; a2 += ak; a3 += ak
            bRow += ldb
        }
        store(c00, base); store(c01, base + 16); store(c02, base + 32); store(c03, base + 48)
        store(c10, base + ldc); store(c11, base + ldc + 16); store(c12, base + ldc + 32)
        store(c13, base + ldc + 48)
        store(c20, base + 2 * ldc); store(c21, base + 2 * ldc + 16); store(c22, base + 2 * ldc + 32)
        store(c23, base + 2 * ldc + 48)
        store(c30, base + 3 * ldc); store(c31, base + 3 * ldc + 16); store(c32, base + 3 * ldc + 32)
        store(c33, base + 3 * ldc + 48)
    }

    /// The rows and columns (a multiple of 16) the blocks leave: one row and one vector at a time.
    func tail(rows: Range<Int>, columns: Range<Int>) {
        for m in rows {
            for column in stride(from: columns.lowerBound, to: columns.upperBound, by: 16) {
                let target = c + m * ldc + column
                var acc = accumulate ? load(target) : V()
                for k in 0..<depth {
                    acc = multiplyAdd(V(repeating: a[m * am + k * ak]), load(b + k * ldb + column), acc)
                }
                store(acc, target)
            }
        }
    }
}
