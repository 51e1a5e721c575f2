// AttentionProblem: the validated description of one attention call, shared by every kernel.
//
// Shapes: queries [B, Hq, Nq, Dk], keys [B, Hkv, Nk, Dk], values [B, Hkv, Nk, Dv], output [B, Hq, Nq, Dv],
// log-sum-exp [B, Hq, Nq]. Hq must be a multiple of Hkv; query head h reads key/value head h / (Hq / Hkv).

/// A validated attention call: dimensions, the resolved scale and the per-head options.
package struct AttentionProblem: Sendable {
    package let batch: Int
    package let queryHeads: Int
    package let keyValueHeads: Int
    package let queryLength: Int
    package let keyLength: Int
    package let keyDimension: Int
    package let valueDimension: Int
    package let scale: Float
    package let mask: AttentionMask
    package let options: AttentionOptions
    package let threads: Int
    /// Each batch entry's real keys (`options.keyPadding`) as sorted, disjoint ranges; nil without key padding.
    package let keyRuns: [[Range<Int>]]?
    /// Each batch entry's real query rows (`options.queryPadding`); nil without query padding.
    package let queryRuns: [[Range<Int>]]?
    /// Where the query rows and the output rows live in their tensors (or caller buffers), in floats.
    package var queryStrides: RowStrides
    package var outputStrides: RowStrides
    /// Where each row's log-sum-exp lives (the `token` stride between rows of a head), in floats: [B, Hq, Nq] dense
    /// unless a packed batch writes [tokens, Hq].
    package var logSumExpStrides: RowStrides
    /// The output tensor's layout (`options.outputLayout`, else `options.layout`).
    package var outputLayout: TensorLayout

    /// Query heads per key/value head.
    package var groupSize: Int { queryHeads / keyValueHeads }

    /// The key/value head that query head `head` reads.
    package func keyValueHead(of head: Int) -> Int { head / groupSize }

    /// The output's shape in its layout.
    package var outputShape: [Int] {
        outputLayout.shape(batch: batch, heads: queryHeads, tokens: queryLength, dimension: valueDimension)
    }

    /// Validates shapes (in `options.layout`) and options and resolves defaults. Throws ``AttentionError`` naming the
    /// first bad argument; with the [B, N, H, d] layout, shapes in its messages are shown as [B, H, N, d].
    package init(
        queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask, options: AttentionOptions
    ) throws {
        try self.init(
            shapesInLayout: queries.shape, keys.shape, values.shape, mask: mask, options: options)
    }

    /// Validates queries, keys and values of the given shapes, in `options.layout`, held in any storage format (the
    /// tensor init above, and stored tensors).
    package init(
        shapesInLayout queryShape: [Int], _ keyShape: [Int], _ valueShape: [Int], mask: AttentionMask,
        options: AttentionOptions
    ) throws {
        let layout = options.layout
        do {
            try self.init(
                queryShape: layout.canonical(queryShape), keyShape: layout.canonical(keyShape),
                valueShape: layout.canonical(valueShape), mask: mask, options: options, layoutAware: true)
        } catch AttentionError.shapeMismatch(let argument, let expected, let actual, let reason) where layout != .bhnd {
            throw AttentionError.shapeMismatch(
                argument: argument, expected: expected, actual: actual,
                reason: reason + " (options.layout is .bnhd: shapes shown as [batch, heads, tokens, headDimension])")
        }
        queryStrides = layout.strides(heads: queryHeads, tokens: queryLength, dimension: keyDimension)
        outputStrides = outputLayout.strides(heads: queryHeads, tokens: queryLength, dimension: valueDimension)
    }

    private init(
        queryShape: [Int], keyShape: [Int], valueShape: [Int], mask: AttentionMask, options: AttentionOptions,
        layoutAware: Bool
    ) throws {
        for (name, shape) in [("queries", queryShape), ("keys", keyShape), ("values", valueShape)]
        where shape.count != 4 {
            throw AttentionError.shapeMismatch(
                argument: name, expected: "rank 4 [batch, heads, sequence, headDimension]", actual: shape,
                reason: "attention takes rank-4 tensors")
        }
        try Self.validateQueries(shape: queryShape)
        let (b, hq, dk) = (queryShape[0], queryShape[1], queryShape[3])
        let (hkv, nk, dv) = (keyShape[1], keyShape[2], valueShape[3])
        guard keyShape[0] == b, hkv >= 1, hq % hkv == 0, keyShape[3] == dk else {
            throw AttentionError.shapeMismatch(
                argument: "keys", expected: "[\(b), H, N, \(dk)] with H >= 1 dividing \(hq)",
                actual: keyShape,
                reason:
                    "keys must match the queries' batch and head dimension, and their head count must divide "
                    + "the query head count \(hq)")
        }
        guard valueShape[0] == b, valueShape[1] == hkv, valueShape[2] == nk, dv >= 1 else {
            throw AttentionError.shapeMismatch(
                argument: "values", expected: "[\(b), \(hkv), \(nk), D] with D >= 1", actual: valueShape,
                reason: "keys and values must have the same batch, head count and sequence length")
        }
        try self.init(
            queryShape: queryShape, keyValueHeads: hkv, keyLength: nk, valueDimension: dv, mask: mask,
            options: options, layoutAware: layoutAware)
    }

    /// Validates shapes given as [B, H, N, d] for operands whose strides the caller sets afterwards (buffers).
    package init(
        queryShape: [Int], keyShape: [Int], valueShape: [Int], mask: AttentionMask, options: AttentionOptions
    ) throws {
        try self.init(
            queryShape: queryShape, keyShape: keyShape, valueShape: valueShape, mask: mask, options: options,
            layoutAware: false)
    }

    /// Validates queries against keys held in a cache with the given dimensions: the batch and key dimension must
    /// match the queries', and the key/value heads must divide the query heads.
    package init(
        queries: Tensor, cacheBatch: Int, keyValueHeads hkv: Int, keyLength nk: Int, keyDimension dk: Int,
        valueDimension dv: Int, mask: AttentionMask, options: AttentionOptions
    ) throws {
        try Self.validateQueries(shape: queries.shape)
        guard queries.shape[0] == cacheBatch, queries.shape[3] == dk else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "[\(cacheBatch), H, N, \(dk)]", actual: queries.shape,
                reason: "queries must have the cache's batch size and key dimension")
        }
        try self.init(
            queryShape: queries.shape, keyValueHeads: hkv, keyLength: nk, valueDimension: dv, mask: mask,
            options: options, layoutAware: false)
    }

    /// Validates one sequence of a packed batch (`packedAttention`): Nq queries and Nk keys whose rows are token
    /// major, [tokens, heads, d], read from pointers the caller places at the sequence's first token. Its mask
    /// and options are checked against the sequence's own lengths.
    package init(
        packedSequenceOf hq: Int, keyValueHeads hkv: Int, queryLength nq: Int, keyLength nk: Int,
        keyDimension dk: Int, valueDimension dv: Int, mask: AttentionMask, options: AttentionOptions
    ) throws {
        try self.init(
            queryShape: [1, hq, nq, dk], keyValueHeads: hkv, keyLength: nk, valueDimension: dv, mask: mask,
            options: options, layoutAware: false)
        queryStrides = RowStrides(batch: 0, head: dk, token: hq * dk)
        outputStrides = RowStrides(batch: 0, head: dv, token: hq * dv)
        logSumExpStrides = RowStrides(batch: 0, head: 1, token: hq)
        outputLayout = .bnhd
    }

    /// Checks the queries alone: rank 4 with at least one head and a head dimension >= 1.
    package static func validateQueries(shape: [Int]) throws {
        guard shape.count == 4 else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "rank 4 [batch, heads, sequence, headDimension]",
                actual: shape, reason: "attention takes rank-4 tensors")
        }
        guard shape[1] >= 1 else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "at least 1 head (axis 1)", actual: shape,
                reason: "attention needs a head")
        }
        guard shape[3] >= 1 else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "headDimension (axis 3) >= 1", actual: shape,
                reason: "an empty head dimension has no scores")
        }
    }

    /// Validates options for queries against keys described by their dimensions, whose batch and key dimension the
    /// caller has already checked against the queries. `keyValueHeads` must divide the query heads.
    private init(
        queryShape: [Int], keyValueHeads hkv: Int, keyLength nk: Int, valueDimension dv: Int, mask: AttentionMask,
        options: AttentionOptions, layoutAware: Bool
    ) throws {
        try Self.validateQueries(shape: queryShape)
        let (b, hq, nq, dk) = (queryShape[0], queryShape[1], queryShape[2], queryShape[3])
        if !layoutAware {
            for (name, layout) in [("options.layout", options.layout), ("options.outputLayout", options.outputLayout)]
            where layout != nil && layout != .bhnd {
                throw AttentionError.invalidValue(
                    argument: name, expected: ".bhnd (caches hold [batch, heads, tokens, d])",
                    actual: ".bnhd")
            }
        }
        guard hkv >= 1, hq % hkv == 0 else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "[\(b), H, \(nq), \(dk)] with H a multiple of \(hkv)",
                actual: queryShape,
                reason: "the query head count must be a multiple of the key/value head count \(hkv)")
        }
        try mask.validate()
        try mask.validate(queryLength: nq, keyLength: nk)
        if let scale = options.scale {
            try AttentionError.require(
                scale.isFinite, "options.scale", expected: "a finite number", actual: "\(scale)")
        }
        if let softcap = options.softcap {
            try AttentionError.require(
                softcap.isFinite && softcap > 0, "options.softcap", expected: "a finite number > 0",
                actual: "\(softcap)")
        }
        try Self.validatePerHead(options.alibiSlopes, "options.alibiSlopes", heads: hq)
        try Self.validatePerHead(options.sinkLogits, "options.sinkLogits", heads: hq)
        if let bias = options.bias {
            let fits =
                bias.rank == 4 && (bias.shape[0] == b || bias.shape[0] == 1)
                && (bias.shape[1] == hq || bias.shape[1] == 1) && (bias.shape[2] == nq || bias.shape[2] == 1)
                && bias.shape[3] == nk
            guard fits else {
                throw AttentionError.shapeMismatch(
                    argument: "options.bias", expected: "[\(b) or 1, \(hq) or 1, \(nq) or 1, \(nk)]",
                    actual: bias.shape,
                    reason: "the bias adds to the [batch, queryHeads, queryLength, keyLength] scores")
            }
        }
        try options.keyPadding?.validate("options.keyPadding", batch: b, length: nk, lengthName: "key length")
        try options.queryPadding?.validate("options.queryPadding", batch: b, length: nq, lengthName: "query length")
        if case .blockwise(let queryBlock, let keyBlock) = options.kernel {
            if let queryBlock {
                try AttentionError.require(
                    queryBlock >= 1, "options.kernel queryBlock", expected: ">= 1", actual: "\(queryBlock)")
            }
            if let keyBlock {
                try AttentionError.require(
                    keyBlock >= 1, "options.kernel keyBlock", expected: ">= 1", actual: "\(keyBlock)")
            }
        }
        if case .decode(let keysPerSplit) = options.kernel {
            if let keysPerSplit {
                try AttentionError.require(
                    keysPerSplit >= 1, "options.kernel keysPerSplit", expected: ">= 1", actual: "\(keysPerSplit)")
            }
            try AttentionError.require(
                hq / hkv * nq <= 16, "options.kernel",
                expected: ".decode only for (queryHeads / keyValueHeads) * queryLength <= 16",
                actual: ".decode with \(hq / hkv) * \(nq) = \(hq / hkv * nq) rows per key/value head")
        }
        if let headMasks = options.headMasks {
            try AttentionError.require(
                headMasks.count == hq, "options.headMasks.count", expected: "\(hq) (one per query head)",
                actual: "\(headMasks.count)")
            for (head, headMask) in headMasks.enumerated() {
                try headMask.validate(argument: "options.headMasks[\(head)]")
                try headMask.validate(argument: "options.headMasks[\(head)]", queryLength: nq, keyLength: nk)
            }
        }
        if let threads = options.threads {
            try AttentionError.require(
                threads >= 1, "options.threads", expected: ">= 1", actual: "\(threads)")
        }
        try AttentionError.require(
            options.naiveMemoryBudget >= 0, "options.naiveMemoryBudget", expected: ">= 0",
            actual: "\(options.naiveMemoryBudget)")

        batch = b
        queryHeads = hq
        keyValueHeads = hkv
        queryLength = nq
        keyLength = nk
        keyDimension = dk
        valueDimension = dv
        scale = options.scale ?? 1 / Float(dk).squareRoot()
        self.mask = mask
        self.options = options
        threads = options.threads ?? Parallel.defaultThreadCount
        outputLayout = options.outputLayout ?? options.layout
        queryStrides = TensorLayout.bhnd.strides(heads: hq, tokens: nq, dimension: dk)
        outputStrides = TensorLayout.bhnd.strides(heads: hq, tokens: nq, dimension: dv)
        logSumExpStrides = TensorLayout.bhnd.strides(heads: hq, tokens: nq, dimension: 1)
        keyRuns = options.keyPadding.map { padding in (0..<b).map { padding.runs(batch: $0, length: nk) } }
        queryRuns = options.queryPadding.map { padding in (0..<b).map { padding.runs(batch: $0, length: nq) } }
    }

    private static func validatePerHead(_ values: [Float]?, _ argument: String, heads: Int) throws {
        guard let values else { return }
        try AttentionError.require(
            values.count == heads, "\(argument).count", expected: "\(heads) (one per query head)",
            actual: "\(values.count)")
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw AttentionError.invalidValue(
                argument: "\(argument)[\(bad)]", expected: "a finite number", actual: "\(values[bad])")
        }
    }
}

/// Checks that `queries` and `keys` (rank 4) have the head counts a variant descriptor promises; the variant
/// modules call it before the core kernel, so a tensor with the wrong head count is reported against the
/// descriptor rather than as a generic grouping error.
package func requireHeadCounts(queries: Tensor, keys: Tensor, queryHeads: Int, keyValueHeads: Int) throws {
    guard queries.rank == 4, queries.shape[1] == queryHeads else {
        throw AttentionError.shapeMismatch(
            argument: "queries", expected: "[batch, \(queryHeads), sequence, headDimension]", actual: queries.shape,
            reason: "the descriptor has \(queryHeads) query heads")
    }
    guard keys.rank == 4, keys.shape[1] == keyValueHeads else {
        throw AttentionError.shapeMismatch(
            argument: "keys", expected: "[batch, \(keyValueHeads), sequence, headDimension]", actual: keys.shape,
            reason: "the descriptor has \(keyValueHeads) key/value heads")
    }
}
