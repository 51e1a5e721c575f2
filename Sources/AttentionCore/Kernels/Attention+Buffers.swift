// Attention on a caller's own memory (`AttentionBuffer`): the same kernels as on tensors, reading queries, keys
// and values and writing the output where the buffers' strides say, with no copy in or out.

/// Scaled dot-product attention from and into caller-owned buffers:
/// ``attention(queries:keys:values:mask:options:)-(Tensor,_,_,_,_)`` with every operand described by memory, shape and
/// strides (see ``AttentionBuffer``), so an engine with its own tensor type, or a fused QKV projection
/// (``AttentionBuffer/fusedProjection(_:batch:tokens:queryHeads:keyValueHeads:headDimension:)``), needs no copy.
///
/// - Parameters:
///   - queries: [B, Hq, Nq, Dk] in the kernels' axis order, at any strides.
///   - keys: [B, Hkv, Nk, Dk], at any strides; it may share memory with the others (one fused buffer).
///   - values: [B, Hkv, Nk, Dv], at any strides.
///   - output: [B, Hq, Nq, Dv] at any non-overlapping strides, disjoint from the inputs; every element is written.
///   - logSumExp: nil, or memory for [B, Hq, Nq] log-sum-exp values (dense), disjoint from the rest.
///   - mask: as for tensors.
///   - options: as for tensors, except `layout` and `outputLayout`, which the strides replace (they must be left
///     at their defaults).
/// - Throws: ``AttentionError`` for shapes that do not fit together, overlapping output memory, or invalid options;
///   nothing is written then. The buffers' own bounds are checked when they are made.
///
/// ```swift
/// try qkv.withUnsafeBufferPointer { memory in          // [B, N, 3, H, d] from one projection
///     try out.withUnsafeMutableBufferPointer { o in    // [B, N, H, d]
///         let (q, k, v) = try AttentionBuffer.fusedProjection(
///             memory, batch: 1, tokens: 128, queryHeads: 8, keyValueHeads: 8, headDimension: 64)
///         let output = try MutableAttentionBuffer(o, shape: [1, 128, 8, 64], layout: .bnhd)
///         try attention(queries: q, keys: k, values: v, output: output, mask: .causal)
///     }
/// }
/// ```
public func attention(
    queries: AttentionBuffer, keys: AttentionBuffer, values: AttentionBuffer, output: MutableAttentionBuffer,
    logSumExp: UnsafeMutableBufferPointer<Float>? = nil, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws {
    for (name, set) in [
        ("options.layout", options.layout != .bhnd), ("options.outputLayout", options.outputLayout != nil),
    ]
    where set {
        throw AttentionError.invalidValue(
            argument: name, expected: "the default (a buffer's strides give its layout)", actual: "set")
    }
    var problem = try AttentionProblem(
        queryShape: queries.shape, keyShape: keys.shape, valueShape: values.shape, mask: mask, options: options)
    guard output.shape == problem.outputShape else {
        throw AttentionError.shapeMismatch(
            argument: "output", expected: "\(problem.outputShape) (batch, query heads, queries, value dimension)",
            actual: output.shape, reason: "the result is written into it")
    }
    let rows = problem.batch * problem.queryHeads * problem.queryLength
    if let logSumExp {
        try AttentionError.require(
            logSumExp.count == rows, "logSumExp.count", expected: "\(rows) (batch x query heads x queries)",
            actual: "\(logSumExp.count)")
    }
    // The output (and log-sum-exp) must not share memory with anything the kernels read or with each other.
    let outputRange = addressRange(output.memory.baseAddress, output.extent)
    let lseRange = addressRange(logSumExp?.baseAddress, logSumExp?.count ?? 0)
    for (name, range) in [
        ("queries", addressRange(queries.memory.baseAddress, queries.extent)),
        ("keys", addressRange(keys.memory.baseAddress, keys.extent)),
        ("values", addressRange(values.memory.baseAddress, values.extent)),
    ] where range.overlaps(outputRange) || range.overlaps(lseRange) {
        throw AttentionError.invalidValue(
            argument: "output", expected: "memory disjoint from \(name) (the kernels read it while writing)",
            actual: "overlapping")
    }
    try AttentionError.require(
        !outputRange.overlaps(lseRange), "logSumExp", expected: "memory disjoint from output", actual: "overlapping")
    let kernel = problem.options.kernel.resolved(for: problem)
    if kernel == .naive { try checkNaiveBudget(problem) }

    problem.queryStrides = queries.rowStrides
    problem.outputStrides = output.rowStrides
    let float = MemoryLayout<Float>.stride
    var segments: [KeyValueSegment] = []
    if let k = keys.memory.baseAddress, let v = values.memory.baseAddress, problem.keyLength > 0 {
        let (ks, vs) = (keys.rowStrides, values.rowStrides)
        segments.append(
            KeyValueSegment(
                keys: UnsafeRawPointer(k), values: UnsafeRawPointer(v),
                keyCodec: RowCodec(.float32, dimension: problem.keyDimension),
                valueCodec: RowCodec(.float32, dimension: problem.valueDimension),
                keyStrides: (ks.batch * float, ks.head * float, ks.token * float),
                valueStrides: (vs.batch * float, vs.head * float, vs.token * float), start: 0,
                count: problem.keyLength))
    }
    var discarded: [Float] = logSumExp == nil ? [Float](repeating: 0, count: rows) : []
    discarded.withUnsafeMutableBufferPointer { scratch in
        _ = runAttention(
            problem, kernel: kernel, queries: queries.memory.baseAddress, segments: segments,
            output: output.memory.baseAddress, logSumExp: logSumExp?.baseAddress ?? scratch.baseAddress)
    }
}

/// The addresses `[base, base + count)` floats cover, empty for no memory.
private func addressRange(_ base: UnsafePointer<Float>?, _ count: Int) -> Range<UInt> {
    guard let base, count > 0 else { return 0..<0 }
    let start = UInt(bitPattern: base)
    return start..<(start + UInt(count * MemoryLayout<Float>.stride))
}

private func addressRange(_ base: UnsafeMutablePointer<Float>?, _ count: Int) -> Range<UInt> {
    addressRange(base.map { UnsafePointer($0) }, count)
}
