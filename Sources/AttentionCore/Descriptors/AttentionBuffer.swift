// AttentionBuffer: a caller's own Float32 memory seen as a rank-4 attention operand, for engines with their own
// tensor type (no copy into a `Tensor`).
//
// A buffer is memory, a shape in the kernels' axis order [batch, heads, tokens, headDimension] and an element stride
// per axis. The head dimension's stride must be 1 (a row's values consecutive); the other strides are free, so one
// description covers [B, H, N, d], [B, N, H, d], a fused QKV projection [B, N, 3, H, d] (three views of one
// buffer, see `fusedProjection`), a slice of a larger tensor, or a broadcast (stride 0). Every element the shape
// and strides reach must lie inside the buffer (checked). The output must not overlap itself or the inputs
// (checked): the kernels write it while they read the inputs.

/// Read-only Float32 memory viewed as [batch, heads, tokens, headDimension] with element strides.
///
/// ```swift
/// // Q, K and V of one fused projection, [B, N, 3, H, d] row-major, read in place:
/// let (q, k, v) = try AttentionBuffer.fusedProjection(
///     qkv, batch: 2, tokens: 128, queryHeads: 8, keyValueHeads: 8, headDimension: 64)
/// ```
public struct AttentionBuffer {
    /// The memory; element (b, h, n, c) is `memory[b * strides[0] + h * strides[1] + n * strides[2] + c]`.
    public let memory: UnsafeBufferPointer<Float>
    /// [batch, heads, tokens, headDimension].
    public let shape: [Int]
    /// Element strides of the four axes; the last is 1.
    public let strides: [Int]

    /// Views `memory` as `shape` ([batch, heads, tokens, headDimension]) with element `strides` (strides[3] == 1,
    /// the others >= 0).
    /// - Throws: ``AttentionError`` unless the shape is rank 4 with sizes >= 0, the strides are valid, and every
    ///   element they reach lies inside `memory`.
    public init(_ memory: UnsafeBufferPointer<Float>, shape: [Int], strides: [Int]) throws {
        try AttentionBuffer.validate(shape: shape, strides: strides, count: memory.count, argument: "buffer")
        self.memory = memory
        self.shape = shape
        self.strides = strides
    }

    /// Views dense memory of `shape` in `layout` (`.bhnd`: [B, H, N, d]; `.bnhd`: [B, N, H, d]); `shape` is given
    /// in the layout's own order.
    public init(_ memory: UnsafeBufferPointer<Float>, shape: [Int], layout: TensorLayout) throws {
        let (canonical, strides) = try AttentionBuffer.dense(shape, layout)
        try self.init(memory, shape: canonical, strides: strides)
    }

    /// The [B, H, N, d] shape and element strides of a dense tensor of `shape` (in `layout`'s order).
    package static func dense(_ shape: [Int], _ layout: TensorLayout) throws -> (shape: [Int], strides: [Int]) {
        guard shape.count == 4 else {
            throw AttentionError.shapeMismatch(
                argument: "shape", expected: "rank 4", actual: shape, reason: "attention operands are rank 4")
        }
        let canonical = layout.canonical(shape)
        let rows = layout.strides(heads: canonical[1], tokens: canonical[2], dimension: canonical[3])
        return (canonical, [rows.batch, rows.head, rows.token, 1])
    }

    /// The query, key and value views of one fused projection laid out [batch, tokens, queryHeads + 2 *
    /// keyValueHeads, headDimension] (for equal head counts, PyTorch's [B, N, 3, H, d]): per token, the query heads,
    /// then the key heads, then the value heads.
    public static func fusedProjection(
        _ memory: UnsafeBufferPointer<Float>, batch: Int, tokens: Int, queryHeads: Int, keyValueHeads: Int,
        headDimension: Int
    ) throws -> (queries: AttentionBuffer, keys: AttentionBuffer, values: AttentionBuffer) {
        for (name, value) in [
            ("batch", batch), ("tokens", tokens), ("queryHeads", queryHeads), ("keyValueHeads", keyValueHeads),
            ("headDimension", headDimension),
        ] {
            try AttentionError.require(value >= 0, name, expected: ">= 0", actual: "\(value)")
        }
        let (width, overflowW) = (queryHeads + 2 * keyValueHeads).multipliedReportingOverflow(by: headDimension)
        let (rows, overflowR) = batch.multipliedReportingOverflow(by: tokens)
        let (count, overflowC) = rows.multipliedReportingOverflow(by: width)
        try AttentionError.require(
            !overflowW && !overflowR && !overflowC && memory.count == count, "memory.count",
            expected: "\(batch) x \(tokens) x (\(queryHeads) + 2 x \(keyValueHeads)) x \(headDimension) = \(count)",
            actual: "\(memory.count)")
        let base = memory.baseAddress
        func view(offset: Int, heads: Int) throws -> AttentionBuffer {
            // The view's memory starts at its first head; the strides reach only its own heads.
            let start = Swift.min(offset, memory.count)
            return try AttentionBuffer(
                UnsafeBufferPointer(start: base.map { $0 + start }, count: memory.count - start),
                shape: [batch, heads, tokens, headDimension],
                strides: [tokens * width, headDimension, width, 1])
        }
        return (
            try view(offset: 0, heads: queryHeads), try view(offset: queryHeads * headDimension, heads: keyValueHeads),
            try view(offset: (queryHeads + keyValueHeads) * headDimension, heads: keyValueHeads)
        )
    }

    /// The row strides, in floats.
    package var rowStrides: RowStrides { RowStrides(batch: strides[0], head: strides[1], token: strides[2]) }

    /// The elements the view reaches: from `memory.baseAddress` up to (excluding) this offset; 0 when empty.
    package var extent: Int { AttentionBuffer.extent(shape: shape, strides: strides) }

    package static func extent(shape: [Int], strides: [Int]) -> Int {
        if shape.contains(0) { return 0 }
        return zip(shape, strides).reduce(1) { $0 + ($1.0 - 1) * $1.1 }
    }

    package static func validate(shape: [Int], strides: [Int], count: Int, argument: String) throws {
        guard shape.count == 4, shape.allSatisfy({ $0 >= 0 }) else {
            throw AttentionError.shapeMismatch(
                argument: "\(argument).shape", expected: "[batch, heads, tokens, headDimension], sizes >= 0",
                actual: shape, reason: "attention operands are rank 4")
        }
        try AttentionError.require(
            strides.count == 4 && strides[3] == 1 && strides.allSatisfy({ $0 >= 0 }), "\(argument).strides",
            expected: "4 element strides >= 0, the last 1 (a row's values consecutive)", actual: "\(strides)")
        // Every reachable element inside the memory (no overflow: each term is bounded by the check before it).
        var last = 0
        for axis in 0..<4 where shape[axis] > 1 {
            let (term, overflow) = (shape[axis] - 1).multipliedReportingOverflow(by: strides[axis])
            let (sum, overflowSum) = last.addingReportingOverflow(term)
            try AttentionError.require(
                !overflow && !overflowSum, "\(argument).strides", expected: "offsets that fit in Int",
                actual: "\(strides)")
            last = sum
        }
        if !shape.contains(0) {
            try AttentionError.require(
                last < count, "\(argument).memory.count",
                expected: "> \(last) (the last element the shape \(shape) and strides \(strides) reach)",
                actual: "\(count)")
        }
    }
}

/// Writable Float32 memory viewed as [batch, heads, tokens, headDimension] with element strides: where an attention
/// call on buffers writes its output.
public struct MutableAttentionBuffer {
    /// The memory the output is written to; the caller keeps it alive for the duration of the call.
    public let memory: UnsafeMutableBufferPointer<Float>
    /// [batch, heads, tokens, headDimension], in that order whatever the memory layout.
    public let shape: [Int]
    /// Element (not byte) strides for the four axes of `shape`; the last is 1.
    public let strides: [Int]

    /// Views `memory` as `shape` with element `strides`, as ``AttentionBuffer/init(_:shape:strides:)``; no two
    /// elements may share memory (checked).
    public init(_ memory: UnsafeMutableBufferPointer<Float>, shape: [Int], strides: [Int]) throws {
        try AttentionBuffer.validate(shape: shape, strides: strides, count: memory.count, argument: "output")
        // Distinct elements never overlap: taken by increasing stride, each axis steps past everything the axes
        // before it span (a sufficient condition; axes of size 1 never step).
        var span = 1
        for axis in (0..<4).filter({ shape[$0] > 1 }).sorted(by: { strides[$0] < strides[$1] }) {
            try AttentionError.require(
                strides[axis] >= span, "output.strides",
                expected: "strides under which no two output elements share memory", actual: "\(strides)")
            span += (shape[axis] - 1) * strides[axis]
        }
        self.memory = memory
        self.shape = shape
        self.strides = strides
    }

    /// Views dense memory of `shape` in `layout` (given in the layout's own order).
    public init(_ memory: UnsafeMutableBufferPointer<Float>, shape: [Int], layout: TensorLayout) throws {
        let (canonical, strides) = try AttentionBuffer.dense(shape, layout)
        try self.init(memory, shape: canonical, strides: strides)
    }

    package var rowStrides: RowStrides { RowStrides(batch: strides[0], head: strides[1], token: strides[2]) }
    package var extent: Int { AttentionBuffer.extent(shape: shape, strides: strides) }
}
