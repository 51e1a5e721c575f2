// Linear attention: o_i = sum_j w_ij (phi(q_i) . phi(k_j)) v_j, optionally divided by sum_j w_ij phi(q_i) . phi(k_j),
// with w_ij = lambda^(i - j) for j <= i (causal, decay lambda, 1 without decay) or w_ij = 1 (non-causal).
//
// Non-causal (Katharopoulos et al., 2020): S = sum_j phi(k_j)^T v_j [d_phi, Dv] and z = sum_j phi(k_j) in one pass
// over the keys, then o_i = phi(q_i) S / phi(q_i) . z in one pass over the queries: O(N d_phi Dv) time, O(d_phi Dv)
// memory per head.
//
// Causal, chunkwise (Lightning Attention): the sequence is cut into chunks of C tokens. For chunk c with state
// (S, z) from the chunks before it,
//   inter:  o_i  = lambda^(i+1) phi(q_i) S                          (i = position within the chunk)
//   intra:  o_i += sum_{j <= i in chunk} lambda^(i-j) (phi(q_i) . phi(k_j)) v_j   (a masked C x C product)
//   state:  S    = lambda^C S + sum_j lambda^(C-1-j) phi(k_j)^T v_j,   z likewise
// so no per-token cumulative sum is stored, and a single token (C = 1) is exactly the recurrent step
// S = lambda S + phi(k)^T v, o = phi(q) S. `LinearAttentionState` carries (S, z) across calls.
//
// Layouts reuse the softmax kernels' micro-kernels: phi(Q) of a chunk is packed stripe-major (rows in lanes) so
// `computeScores` forms the C x C products, and `accumulateValuesFewRows` performs every "rows (+)= weights x
// matrix" product (inter-chunk and non-causal ones set the rows, intra-chunk and state ones add). Work item =
// (batch, query head); query head h reads key/value head h / G.

/// The recurrent state of causal linear attention per (batch, query head): S = sum_j w_j phi(k_j)^T v_j and
/// z = sum_j w_j phi(k_j), with w_j the decay accumulated since token j.
///
/// ```swift
/// var state = try LinearAttentionState(batch: 1, heads: 8, featureDimension: 64, valueDimension: 64)
/// let o = try state.step(query: q, key: k, value: v, options: LinearAttentionOptions(mask: .causal))  // one token
/// ```
public struct LinearAttentionState: Sendable, Equatable {
    /// S: [batch, heads, featureDimension, valueDimension].
    public private(set) var keyValueSum: Tensor
    /// z: [batch, heads, featureDimension].
    public private(set) var keySum: Tensor

    /// Sequences in the batch.
    public var batch: Int { keySum.shape[0] }
    /// Query heads (one state per head).
    public var heads: Int { keySum.shape[1] }
    /// The feature map's output dimension, `featureMap.featureDimension(inputDimension:)`.
    public var featureDimension: Int { keySum.shape[2] }
    /// Values per value row.
    public var valueDimension: Int { keyValueSum.shape[3] }

    /// The zero state (no token seen).
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` for a size below 1.
    public init(batch: Int, heads: Int, featureDimension: Int, valueDimension: Int) throws {
        for (name, value) in [
            ("batch", batch), ("heads", heads), ("featureDimension", featureDimension),
            ("valueDimension", valueDimension),
        ] {
            try AttentionError.require(value >= 1, name, expected: ">= 1", actual: "\(value)")
        }
        keyValueSum = try Tensor(zeros: [batch, heads, featureDimension, valueDimension])
        keySum = try Tensor(zeros: [batch, heads, featureDimension])
    }

    init(keyValueSum: Tensor, keySum: Tensor) {
        self.keyValueSum = keyValueSum
        self.keySum = keySum
    }

    /// One token of causal linear attention: S = lambda S + phi(k)^T v, z = lambda z + phi(k), o = phi(q) S
    /// (/ phi(q) . z when normalizing). The same kernel as the chunkwise form with one token, so stepping through
    /// a sequence equals running it at once up to float rounding.
    /// - Parameters: query [batch, heads, 1, Dk], key and value [batch, Hkv, 1, Dk | Dv]; `options.mask` is
    ///   `.causal` whatever it was.
    /// - Returns: [batch, heads, 1, valueDimension].
    public mutating func step(
        query: Tensor, key: Tensor, value: Tensor, options: LinearAttentionOptions = LinearAttentionOptions()
    ) throws -> Tensor {
        var options = options
        options.mask = .causal
        return try attend(queries: query, keys: key, values: value, options: options)
    }

    /// Linear attention over the next tokens of a sequence, continuing from this state, which then holds every key
    /// seen so far: a long sequence processed in pieces gives the same output as one call (up to float rounding).
    /// For non-causal options the state's keys are seen by every query of this call.
    ///
    /// ```swift
    /// var state = try LinearAttentionState(batch: 1, heads: 8, featureDimension: 64, valueDimension: 64)
    /// let first = try state.attend(queries: q1, keys: k1, values: v1, options: LinearAttentionOptions(mask: .causal))
    /// let next = try state.attend(queries: q2, keys: k2, values: v2, options: LinearAttentionOptions(mask: .causal))
    /// ```
    /// - Parameters: as in ``linearAttention(queries:keys:values:options:)``; the queries' batch and heads, the
    ///   feature map's dimension and the values' dimension must be the state's.
    /// - Returns: [batch, heads, Nq, valueDimension].
    /// - Throws: ``AttentionError`` for anything `linearAttention` rejects and for inputs that do not fit the state
    ///   (naming "initialState"); the state is unchanged when it throws.
    public mutating func attend(
        queries: Tensor, keys: Tensor, values: Tensor, options: LinearAttentionOptions = LinearAttentionOptions()
    ) throws -> Tensor {
        let result = try linearAttentionAndState(
            queries: queries, keys: keys, values: values, initialState: self, options: options)
        self = result.state
        return result.output
    }
}

/// Linear attention, causal or not, with a feature map, optional normalization and optional decay.
///
/// - Parameters:
///   - queries: [batch, queryHeads, Nq, Dk]; queryHeads must be a multiple of keyValueHeads.
///   - keys: [batch, keyValueHeads, Nk, Dk]; a causal mask needs Nq == Nk.
///   - values: [batch, keyValueHeads, Nk, Dv].
///   - options: the feature map, mask, normalization, decay, chunk size and threads.
/// - Returns: [batch, queryHeads, Nq, Dv].
/// - Throws: ``AttentionError`` for mismatched shapes, a decay that is not finite or outside (0, 1] (or set without
///   `mask: .causal`), a chunk size below 1, or a custom feature dimension below 1.
/// - Complexity: O(B * Hq * N * d_phi * Dv) time (plus O(N * C * d_phi) for the causal chunks' products), and
///   O(threads * (C * (d_phi + C) + d_phi * Dv)) scratch: linear in N.
public func linearAttention(
    queries: Tensor, keys: Tensor, values: Tensor, options: LinearAttentionOptions = LinearAttentionOptions()
) throws -> Tensor {
    try linearAttentionAndState(queries: queries, keys: keys, values: values, initialState: nil, options: options)
        .output
}

/// `linearAttention` writing into `output` instead of returning a new tensor, for callers that run it repeatedly
/// (every layer of every step) and keep one output buffer. A new result tensor's memory is fresh pages that the
/// operating system maps and zeroes on first write (the README gives the measured cost); writing into a tensor that
/// has been written before skips it. Every element of `output` is overwritten (its old contents do not matter); if its
/// storage is shared with another tensor it is copied first, as for any mutation of a ``Tensor``.
///
/// ```swift
/// var output = try Tensor(zeros: [1, 8, 4096, 64])
/// for layer in layers { try linearAttention(queries: q[layer], keys: k[layer], values: v[layer], into: &output) }
/// ```
/// - Throws: what `linearAttention` throws, and ``AttentionError/shapeMismatch(argument:expected:actual:reason:)``
///   unless `output.shape` is [batch, queryHeads, Nq, Dv]; `output` is untouched when it throws.
public func linearAttention(
    queries: Tensor, keys: Tensor, values: Tensor, options: LinearAttentionOptions = LinearAttentionOptions(),
    into output: inout Tensor
) throws {
    _ = try runLinearAttention(
        queries: queries, keys: keys, values: values, initialState: nil, options: options, output: &output,
        allocateOutput: false)
}

/// Like `linearAttention`, starting from `initialState` (`nil` is the zero state) and returning the state after
/// these keys: what ``LinearAttentionState/attend(queries:keys:values:options:)`` runs.
package func linearAttentionAndState(
    queries: Tensor, keys: Tensor, values: Tensor, initialState: LinearAttentionState? = nil,
    options: LinearAttentionOptions = LinearAttentionOptions()
) throws -> (output: Tensor, state: LinearAttentionState) {
    var output = Tensor(uncheckedShape: [0], scalars: [])
    let state = try runLinearAttention(
        queries: queries, keys: keys, values: values, initialState: initialState, options: options, output: &output,
        allocateOutput: true)
    return (output, state)
}

/// Validates, then runs linear attention into `output`: a new uninitialized tensor when `allocateOutput`, else the
/// caller's, which must have the output's shape. Returns the state after the keys.
private func runLinearAttention(
    queries: Tensor, keys: Tensor, values: Tensor, initialState: LinearAttentionState?,
    options: LinearAttentionOptions, output: inout Tensor, allocateOutput: Bool
) throws -> LinearAttentionState {
    let (shapes, dPhi) = try validateLinearAttention(queries: queries, keys: keys, values: values, options: options)
    let (b, hq, nq, nk, dk, dv) = (
        shapes.batch, shapes.queryHeads, shapes.queryLength, shapes.keyLength, shapes.keyDimension,
        shapes.valueDimension
    )
    if let state = initialState {
        guard state.keyValueSum.shape == [b, hq, dPhi, dv] else {
            throw AttentionError.shapeMismatch(
                argument: "initialState",
                expected: "[\(b), \(hq), \(dPhi), \(dv)] (batch, query heads, feature "
                    + "dimension of the map, value dimension)", actual: state.keyValueSum.shape,
                reason: "the state must come from the same heads, feature map and value dimension")
        }
    }

    let tiling = LinearTiling(
        chunk: Swift.max(
            1, Swift.min(options.chunkSize ?? LinearTiling.defaultChunk(causal: options.isCausal), Swift.max(nq, nk))))
    // An empty batch gets an empty state (the public initializer insists on batch >= 1).
    let state =
        try initialState
        ?? (b == 0
            ? LinearAttentionState(
                keyValueSum: Tensor(uncheckedShape: [0, hq, dPhi, dv], scalars: []),
                keySum: Tensor(uncheckedShape: [0, hq, dPhi], scalars: []))
            : LinearAttentionState(batch: b, heads: hq, featureDimension: dPhi, valueDimension: dv))
    var keyValueSum = state.keyValueSum.scalars
    var keySum = state.keySum.scalars
    // Every element is written by the kernel (each chunk's rows are set by their first product, then accumulate),
    // so the output is not zero-filled up front: that pass over N * Dv floats measured ~5% of a non-causal call at
    // N = 16384.
    if allocateOutput {
        output = Tensor(
            uncheckedShape: [b, hq, nq, dv],
            scalars: [Float](unsafeUninitializedCapacity: b * hq * nq * dv) { _, count in count = b * hq * nq * dv })
    } else if output.shape != [b, hq, nq, dv] {
        throw AttentionError.shapeMismatch(
            argument: "output", expected: "[\(b), \(hq), \(nq), \(dv)] (batch, query heads, queries, value dimension)",
            actual: output.shape, reason: "the result is written into it")
    }
    let scratchFloats = tiling.scratchFloats(featureDimension: dPhi, inputDimension: dk)
    let items = b * hq
    let workers = Parallel.workerCount(items: items, threads: shapes.threads)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, workers * scratchFloats))
    defer { scratch.deallocate() }
    queries.withUnsafeBufferPointer { q in
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                output.withUnsafeMutableBufferPointer { o in
                    keyValueSum.withUnsafeMutableBufferPointer { s in
                        keySum.withUnsafeMutableBufferPointer { z in
                            let context = UncheckedSendable(
                                LinearContext(
                                    shapes: shapes, options: options, tiling: tiling, featureDimension: dPhi,
                                    queries: q.baseAddress, keys: k.baseAddress, values: v.baseAddress,
                                    output: o.baseAddress, keyValueSum: s.baseAddress!, keySum: z.baseAddress!))
                            Parallel.forEach(items: items, threads: shapes.threads) { worker, item in
                                context.value.run(
                                    batch: item / hq, head: item % hq, scratch: scratch + worker * scratchFloats)
                            }
                        }
                    }
                }
            }
        }
    }
    return LinearAttentionState(
        keyValueSum: Tensor(uncheckedShape: [b, hq, dPhi, dv], scalars: keyValueSum),
        keySum: Tensor(uncheckedShape: [b, hq, dPhi], scalars: keySum))
}

/// The chunk length of the causal algorithm and the scratch it needs.
package struct LinearTiling: Sendable {
    /// C: tokens per chunk.
    package var chunk: Int

    package init(chunk: Int) { self.chunk = chunk }

    /// The default chunk. Causal: 16 tokens, one 16-row stripe. Measured 2026-11-23 (elu+1, H = 8, N = 4096, d = 64,
    /// one thread, median of 15, two rounds): C = 8: 52-54 ms, 16: 48-50 ms, 24: 51-55, 32: 51-57, 64: 57-58,
    /// 128: 62-69, 256: 85-91; smaller chunks spend less on the masked C x C products, and below 16 the per-chunk
    /// state update dominates. Non-causal (no C x C products; the chunk only batches the state updates): 64 tokens,
    /// measured with the identity map at 11-15 ms against 12-16 for C = 16 and 12-17 for C = 128 or 256.
    package static func defaultChunk(causal: Bool) -> Int { causal ? 16 : 64 }

    /// Cp: the chunk rounded up to whole 16-row stripes.
    package var paddedChunk: Int { (chunk + 15) & ~15 }

    /// Per worker: phi(Q)^T [d_phi, Cp], phi(K) and decayed phi(K) [C, d_phi], the C x Cp products, the row
    /// denominators [Cp], decay powers [C + 1], one input row's features [d_phi + d] for the map, and one float that
    /// the read-ahead passes store their sums to.
    package func scratchFloats(featureDimension dPhi: Int, inputDimension d: Int) -> Int {
        dPhi * paddedChunk + 2 * chunk * dPhi + chunk * paddedChunk + paddedChunk + chunk + 1 + dPhi + d + 1
    }
}

private struct LinearContext {
    let shapes: AttentionProblem
    let options: LinearAttentionOptions
    let tiling: LinearTiling
    let featureDimension: Int
    let queries: UnsafePointer<Float>?
    let keys: UnsafePointer<Float>?
    let values: UnsafePointer<Float>?
    let output: UnsafeMutablePointer<Float>?
    let keyValueSum: UnsafeMutablePointer<Float>
    let keySum: UnsafeMutablePointer<Float>

    func run(batch b: Int, head h: Int, scratch: UnsafeMutablePointer<Float>) {
        let p = shapes
        let (nq, nk, dk, dv, dPhi) = (p.queryLength, p.keyLength, p.keyDimension, p.valueDimension, featureDimension)
        let (c, cp) = (tiling.chunk, tiling.paddedChunk)
        let kvHead = p.keyValueHead(of: h)
        let qT = scratch
        let phiK = qT + dPhi * cp
        let weightedK = phiK + c * dPhi
        let products = weightedK + c * dPhi
        let denominators = products + c * cp
        let powers = denominators + cp
        let rowFeatures = powers + c + 1
        let readAheadSink = rowFeatures + dPhi + dk
        let s = keyValueSum + (b * p.queryHeads + h) * dPhi * dv
        let z = keySum + (b * p.queryHeads + h) * dPhi
        let lambda = options.decay?[h] ?? 1
        // lambda^k for k = 0...C, in Double so that the powers are correctly rounded.
        var power = 1.0
        for index in 0...c {
            powers[index] = Float(power)
            power *= Double(lambda)
        }
        let queryBase = queries.map { $0 + (b * p.queryHeads + h) * nq * dk }
        let keyBase = keys.map { $0 + (b * p.keyValueHeads + kvHead) * nk * dk }
        let valueBase = values.map { $0 + (b * p.keyValueHeads + kvHead) * nk * dv }
        let outputBase = output.map { $0 + (b * p.queryHeads + h) * nq * dv }

        if options.isCausal {
            guard let queryBase, let keyBase, let valueBase, let outputBase else { return }
            var start = 0
            while start < nq {
                let n = Swift.min(c, nq - start)
                let out = outputBase + start * dv
                let chunkValues = valueBase + start * dv
                packQueries(queryBase + start * dk, count: n, into: qT, rowFeatures: rowFeatures)
                // Inter-chunk: o_i = lambda^(i+1) phi(q_i) S, d_i = lambda^(i+1) phi(q_i) . z. (This sets the rows;
                // the intra-chunk terms add to them.)
                setQueriesTimesState(qT, count: n, state: s, output: out)
                queriesDotKeySum(qT, count: n, keySum: z, into: denominators)
                if lambda != 1 {
                    for i in 0..<n {
                        denominators[i] *= powers[i + 1]
                        let row = out + i * dv
                        for col in 0..<dv { row[col] *= powers[i + 1] }
                    }
                }
                // Intra-chunk: A^T[j, i] = phi(q_i) . phi(k_j) * lambda^(i - j) for j <= i, 0 above the diagonal.
                let keyFeatures = featureRows(keyBase + start * dk, count: n, buffer: phiK)
                computeScores(qT: qT, rowCount: cp, keys: keyFeatures, keyCount: n, depth: dPhi, scores: products)
                var stripe = 0
                while stripe * 16 < n {
                    let tile = products + stripe * n * 16
                    let rows = Swift.min(16, n - stripe * 16)
                    // Entries above the diagonal are replaced by 0, not multiplied by it: a product that overflowed
                    // (or a NaN in a later key) must not turn an earlier query's row into NaN.
                    for j in 0..<n where lambda != 1 || j > stripe * 16 {
                        for lane in 0..<16 {
                            let i = stripe * 16 + lane
                            tile[j * 16 + lane] = i >= j && i < n ? tile[j * 16 + lane] * powers[i - j] : 0
                        }
                    }
                    if options.normalize {
                        var sum = load16(denominators, stripe * 16)
                        for j in 0..<n { sum += load16(tile, j * 16) }
                        store16(sum, denominators, stripe * 16)
                    }
                    accumulateValuesFewRows(
                        weights: tile, weightStride: 16, rowCount: rows, keyCount: n, values: chunkValues,
                        valueDimension: dv, output: out + stripe * 16 * dv)
                    stripe += 1
                }
                normalize(out, count: n, denominators: denominators)
                // State: S = lambda^n S + sum_j lambda^(n-1-j) phi(k_j)^T v_j, z likewise.
                var keyWeights = keyFeatures
                if lambda != 1 {
                    for a in 0..<(dPhi * dv) { s[a] *= powers[n] }
                    for a in 0..<dPhi { z[a] *= powers[n] }
                    for j in 0..<n {
                        for a in 0..<dPhi { weightedK[j * dPhi + a] = keyFeatures[j * dPhi + a] * powers[n - 1 - j] }
                    }
                    keyWeights = UnsafePointer(weightedK)
                }
                addKeysTimesValues(keyWeights, count: n, values: chunkValues, state: s, keySum: z)
                start += n
            }
        } else {
            // Keys first: the state over every key; then each query chunk reads it.
            if let keyBase, let valueBase {
                var start = 0
                while start < nk {
                    let n = Swift.min(c, nk - start)
                    // Read the next chunk's keys and values ahead: a pass with one add per 16 floats keeps many cache
                    // misses in flight, where the compute kernels, with tens of instructions per cache line, wait for
                    // one line after another (Swift has no prefetch instruction). The sum is stored so the loads stay.
                    let next = Swift.min(c, nk - start - n)
                    readAheadSink[0] =
                        streamingSum(keyBase + (start + n) * dk, count: next * dk)
                        + streamingSum(valueBase + (start + n) * dv, count: next * dv)
                    let features = featureRows(keyBase + start * dk, count: n, buffer: phiK)
                    addKeysTimesValues(features, count: n, values: valueBase + start * dv, state: s, keySum: z)
                    start += n
                }
            }
            guard let queryBase, let outputBase else { return }
            var start = 0
            while start < nq {
                let n = Swift.min(c, nq - start)
                let out = outputBase + start * dv
                readAheadSink[0] = streamingSum(
                    queryBase + (start + n) * dk, count: Swift.min(c, nq - start - n) * dk)
                // o_i = phi(q_i) S straight from the row-major features (no transpose, no zero fill first).
                let features = featureRows(queryBase + start * dk, count: n, buffer: qT)
                accumulateValuesFewRows(
                    weights: features, weightStride: 1, rowStride: dPhi, rowCount: n, keyCount: dPhi, values: s,
                    valueDimension: dv, output: out, overwrite: true)
                if options.normalize {
                    for i in 0..<n { denominators[i] = dotProduct(features + i * dPhi, z, count: dPhi) }
                    normalize(out, count: n, denominators: denominators)
                }
                start += n
            }
        }
    }

    /// phi of `count` input rows as a row-major [count, d_phi] matrix: the rows themselves for the identity map
    /// (no copy), else the map's output written to `buffer`.
    private func featureRows(
        _ rows: UnsafePointer<Float>, count n: Int, buffer: UnsafeMutablePointer<Float>
    ) -> UnsafePointer<Float> {
        if case .identity = options.featureMap { return rows }
        let (dk, dPhi) = (shapes.keyDimension, featureDimension)
        for i in 0..<n { options.featureMap.apply(rows + i * dk, count: dk, into: buffer + i * dPhi) }
        return UnsafePointer(buffer)
    }

    /// phi of `count` query rows into the stripe-major phi(Q)^T [d_phi, Cp], zero beyond `count`.
    private func packQueries(
        _ rows: UnsafePointer<Float>, count n: Int, into qT: UnsafeMutablePointer<Float>,
        rowFeatures: UnsafeMutablePointer<Float>
    ) {
        let (dk, dPhi) = (shapes.keyDimension, featureDimension)
        qT.update(repeating: 0, count: dPhi * tiling.paddedChunk)
        for i in 0..<n {
            let features = featureRows(rows + i * dk, count: 1, buffer: rowFeatures)
            let target = qT + stripeRowStart(i, columns: dPhi)
            for a in 0..<dPhi { target[a &* 16] = features[a] }
        }
    }

    /// out[i, :] = phi(q_i) S for the chunk's `count` rows, one 16-row stripe of phi(Q)^T at a time.
    private func setQueriesTimesState(
        _ qT: UnsafePointer<Float>, count n: Int, state s: UnsafePointer<Float>, output out: UnsafeMutablePointer<Float>
    ) {
        let (dv, dPhi) = (shapes.valueDimension, featureDimension)
        var stripe = 0
        while stripe * 16 < n {
            accumulateValuesFewRows(
                weights: qT + stripe * dPhi * 16, weightStride: 16, rowCount: Swift.min(16, n - stripe * 16),
                keyCount: dPhi, values: s, valueDimension: dv, output: out + stripe * 16 * dv, overwrite: true)
            stripe += 1
        }
    }

    /// S += sum_j w_j^T v_j and z += sum_j w_j for `count` feature rows w_j ([count, d_phi]).
    private func addKeysTimesValues(
        _ weights: UnsafePointer<Float>, count n: Int, values: UnsafePointer<Float>,
        state s: UnsafeMutablePointer<Float>,
        keySum z: UnsafeMutablePointer<Float>
    ) {
        let (dv, dPhi) = (shapes.valueDimension, featureDimension)
        accumulateValuesFewRows(
            weights: weights, weightStride: dPhi, rowCount: dPhi, keyCount: n, values: values, valueDimension: dv,
            output: s)
        // z is kept even when not normalizing: the returned state must be valid for any later call.
        var a = 0
        while a + 16 <= dPhi {
            var sum = load16(z, a)
            for j in 0..<n { sum += load16(weights, j * dPhi + a) }
            store16(sum, z, a)
            a += 16
        }
        while a < dPhi {
            for j in 0..<n { z[a] += weights[j * dPhi + a] }
            a += 1
        }
    }

    /// denominators[i] = phi(q_i) . z for the chunk's rows, 16 rows (one stripe of phi(Q)^T) per vector; nothing
    /// when not normalizing.
    private func queriesDotKeySum(
        _ qT: UnsafePointer<Float>, count n: Int, keySum z: UnsafePointer<Float>,
        into denominators: UnsafeMutablePointer<Float>
    ) {
        guard options.normalize else { return }
        let dPhi = featureDimension
        var stripe = 0
        while stripe * 16 < n {
            let base = qT + stripe * dPhi * 16
            var sum = SIMD16<Float>()
            for a in 0..<dPhi { sum = multiplyAdd(SIMD16<Float>(repeating: z[a]), load16(base, a * 16), sum) }
            store16(sum, denominators, stripe * 16)
            stripe += 1
        }
    }

    /// Divides each row by its denominator when normalizing; a zero denominator gives a zero row.
    private func normalize(_ out: UnsafeMutablePointer<Float>, count n: Int, denominators: UnsafePointer<Float>) {
        guard options.normalize else { return }
        let dv = shapes.valueDimension
        for i in 0..<n {
            let inverse: Float = denominators[i] == 0 ? 0 : 1 / denominators[i]
            let row = out + i * dv
            for col in 0..<dv { row[col] *= inverse }
        }
    }
}

/// The checks every linear attention entry makes (shapes, feature map, causal pairing, decay, chunk size); returns
/// the shapes and the feature dimension.
package func validateLinearAttention(
    queries: Tensor, keys: Tensor, values: Tensor, options: LinearAttentionOptions
) throws -> (shapes: AttentionProblem, featureDimension: Int) {
    let shapes = try AttentionProblem(
        queries: queries, keys: keys, values: values, mask: .none, options: AttentionOptions(threads: options.threads))
    let (b, hq, nq, nk, dk) = (
        shapes.batch, shapes.queryHeads, shapes.queryLength, shapes.keyLength, shapes.keyDimension
    )
    if case .custom(let outputDimension, _) = options.featureMap {
        try AttentionError.require(
            outputDimension >= 1, "options.featureMap outputDimension", expected: ">= 1", actual: "\(outputDimension)")
    }
    let dPhi = options.featureMap.featureDimension(inputDimension: dk)
    if options.isCausal {
        guard nq == nk else {
            throw AttentionError.shapeMismatch(
                argument: "queries", expected: "[\(b), \(hq), \(nk), \(dk)] (one query per key)", actual: queries.shape,
                reason: "causal linear attention pairs query i with key i")
        }
    }
    if let decay = options.decay {
        try AttentionError.require(
            options.isCausal, "options.decay",
            expected: "nil unless options.mask is .causal (decay is over earlier tokens)",
            actual: "\(decay.count) values")
        try AttentionError.require(
            decay.count == hq, "options.decay.count", expected: "\(hq) (one per query head)", actual: "\(decay.count)")
        if let bad = decay.firstIndex(where: { !($0.isFinite && $0 > 0 && $0 <= 1) }) {
            throw AttentionError.invalidValue(
                argument: "options.decay[\(bad)]", expected: "a finite number in (0, 1]", actual: "\(decay[bad])")
        }
    }
    if let chunk = options.chunkSize {
        try AttentionError.require(chunk >= 1, "options.chunkSize", expected: ">= 1", actual: "\(chunk)")
    }
    return (shapes, dPhi)
}
