// Naive scaled dot-product attention: the quadratic baseline.
//
// Textbook order, per (batch, query head), with every intermediate materialized:
//   S = scale * Q K^T                 the whole [Nq, Nk] score matrix, every entry computed (masked ones too)
//   S = softcap / ALiBi / bias        (AttentionOptions.swift)
//   S[i, j] = -inf where masked       overwrites whatever was computed, so NaN in a masked key never survives
//   P = softmax(S) row by row         (Softmax.swift), sink logit in the denominator
//   O = P V                           keys with P[i, j] == 0 are skipped, so their values are never read
//
// Legend: B batch, Hq/Hkv query/key-value heads, Nq/Nk query/key lengths, Dk/Dv key/value head dimensions,
// Nk16 = Nk rounded up to a multiple of 16 (the padded row stride of S and K^T, so rows load as whole vectors).
//
// Memory: the score tensor [B, Hq, Nq, Nk16] Floats (the quantity `naiveMemoryBudget` limits), plus per worker
// K^T [Dk, Nk16], a padded copy of V [Nk, Dv16] and one output row. Vectorized 16 lanes wide; one
// (batch, query head) pair per work item.

/// Bytes of the score tensor the naive kernel would allocate for `problem`, or nil if that overflows Int.
package func naiveScoreBytes(_ problem: AttentionProblem) -> Int? {
    var total = MemoryLayout<Float>.size
    for factor in [
        problem.batch, problem.queryHeads, problem.queryLength, roundUp16(problem.keyLength),
    ] {
        let (product, overflow) = total.multipliedReportingOverflow(by: factor)
        if overflow { return nil }
        total = product
    }
    return total
}

@inline(__always) package func roundUp16(_ n: Int) -> Int { (n + 15) & ~15 }

package func naiveAttention(
    _ problem: AttentionProblem, queries: Tensor, keys: Tensor, values: Tensor
) throws -> AttentionResult {
    let budget = problem.options.naiveMemoryBudget
    guard let scoreBytes = naiveScoreBytes(problem), scoreBytes <= budget else {
        throw AttentionError.memoryBudgetExceeded(
            argument: "options.naiveMemoryBudget", requiredBytes: naiveScoreBytes(problem) ?? Int.max,
            budgetBytes: budget)
    }
    let (nq, nk, dk, dv) = (
        problem.queryLength, problem.keyLength, problem.keyDimension, problem.valueDimension
    )
    let nk16 = roundUp16(nk)
    let dv16 = roundUp16(dv)
    let items = problem.batch * problem.queryHeads
    let workers = Parallel.workerCount(items: items, threads: problem.threads)
    let scratchPerWorker = dk * nk16 + nk * dv16 + dv16
    let workspaceBytes = scoreBytes + workers * scratchPerWorker * MemoryLayout<Float>.size

    let scores = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(1, scoreBytes / 4))
    defer { scores.deallocate() }
    let scratch = UnsafeMutablePointer<Float>.allocate(
        capacity: Swift.max(1, workers * scratchPerWorker))
    defer { scratch.deallocate() }

    var output = [Float](repeating: 0, count: items * nq * dv)
    var logSumExp = [Float](repeating: 0, count: items * nq)
    let bias = problem.options.bias
    let biasScalars = bias?.scalars ?? []
    queries.withUnsafeBufferPointer { q in
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                biasScalars.withUnsafeBufferPointer { biasPointer in
                    output.withUnsafeMutableBufferPointer { o in
                        logSumExp.withUnsafeMutableBufferPointer { lse in
                            let pointers = UncheckedSendable(
                                (
                                    q: q.baseAddress, k: k.baseAddress, v: v.baseAddress,
                                    bias: biasPointer.baseAddress,
                                    o: o.baseAddress, lse: lse.baseAddress
                                ))
                            Parallel.forEach(items: items, threads: problem.threads) { worker, item in
                                let p = pointers.value
                                let (b, h) = item.quotientAndRemainder(dividingBy: problem.queryHeads)
                                let kvItem = b * problem.keyValueHeads + problem.keyValueHead(of: h)
                                var biasRows: UnsafePointer<Float>? = nil
                                if let bias, let base = p.bias {
                                    let bb = bias.shape[0] == 1 ? 0 : b
                                    let bh = bias.shape[1] == 1 ? 0 : h
                                    biasRows = base + (bb * bias.shape[1] + bh) * nq * nk
                                }
                                naiveHead(
                                    problem, head: h,
                                    queries: p.q.map { $0 + item * nq * dk },
                                    keys: p.k.map { $0 + kvItem * nk * dk },
                                    values: p.v.map { $0 + kvItem * nk * dv },
                                    bias: biasRows,
                                    scores: scores + item * nq * nk16,
                                    scratch: scratch + worker * scratchPerWorker,
                                    output: p.o.map { $0 + item * nq * dv },
                                    logSumExp: p.lse.map { $0 + item * nq })
                            }
                        }
                    }
                }
            }
        }
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: problem.outputShape, scalars: output),
        logSumExp: Tensor(uncheckedShape: [problem.batch, problem.queryHeads, nq], scalars: logSumExp),
        workspaceBytes: workspaceBytes)
}

/// One (batch, query head): scores, softmax and P V for all Nq rows. Pointers may be nil only for empty tensors.
private func naiveHead(
    _ problem: AttentionProblem, head: Int, queries: UnsafePointer<Float>?,
    keys: UnsafePointer<Float>?,
    values: UnsafePointer<Float>?, bias: UnsafePointer<Float>?, scores: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>?,
    logSumExp: UnsafeMutablePointer<Float>?
) {
    let (nq, nk, dk, dv) = (
        problem.queryLength, problem.keyLength, problem.keyDimension, problem.valueDimension
    )
    guard nq > 0, let output, let logSumExp else { return }
    let nk16 = roundUp16(nk)
    let dv16 = roundUp16(dv)
    let sinkLogit = problem.options.sinkLogits?[head] ?? -.infinity
    guard nk > 0, let queries, let keys, let values else {
        // No keys: every row is fully masked. Output zeros (already), LSE = the sink logit or -inf.
        logSumExp.update(repeating: sinkLogit, count: nq)
        return
    }
    // K^T [Dk, Nk16] and V [Nk, Dv16], zero-padded so every load is a whole vector.
    let keysT = scratch
    let paddedValues = scratch + dk * nk16
    let outputRow = paddedValues + nk * dv16
    keysT.update(repeating: 0, count: dk * nk16)
    for j in 0..<nk {
        for c in 0..<dk { keysT[c * nk16 + j] = keys[j * dk + c] }
    }
    paddedValues.update(repeating: 0, count: nk * dv16)
    for j in 0..<nk {
        (paddedValues + j * dv16).update(from: values + j * dv, count: dv)
    }
    let scale = SIMD16<Float>(repeating: problem.scale)
    let softcap = problem.options.softcap
    let slope = problem.options.alibiSlopes?[head]
    let mask = problem.mask
    let hasPredicate = mask.hasPredicate

    for i in 0..<nq {
        let row = scores + i * nk16
        let q = queries + i * dk
        // S[i, :] = scale * q . K^T, 64 keys at a time: broadcast one q entry, stream one row of K^T.
        var j = 0
        while j < nk16 {
            if j + 64 <= nk16 {
                var a0 = SIMD16<Float>()
                var a1 = SIMD16<Float>()
                var a2 = SIMD16<Float>()
                var a3 = SIMD16<Float>()
                for c in 0..<dk {
                    let qc = SIMD16<Float>(repeating: q[c])
                    let kt = keysT + c * nk16 + j
                    a0 += qc * load16(kt, 0)
                    a1 += qc * load16(kt, 16)
                    a2 += qc * load16(kt, 32)
                    a3 += qc * load16(kt, 48)
                }
                store16(a0 * scale, row, j)
                store16(a1 * scale, row, j + 16)
                store16(a2 * scale, row, j + 32)
                store16(a3 * scale, row, j + 48)
                j += 64
            } else {
                var a0 = SIMD16<Float>()
                for c in 0..<dk {
                    a0 += SIMD16<Float>(repeating: q[c]) * load16(keysT + c * nk16, j)
                }
                store16(a0 * scale, row, j)
                j += 16
            }
        }
        if let softcap {
            for j in 0..<nk { row[j] = softcap * _tanh(row[j] / softcap) }
        }
        let diagonal = i + nk - nq
        if let slope {
            for j in 0..<nk { row[j] -= slope * Float(abs(diagonal - j)) }
        }
        if let bias {
            let biasRow = bias + i * nk
            for j in 0..<nk { row[j] += biasRow[j] }
        }
        // Mask: -inf outside the visible spans (and where the predicate says no). Padding is always masked.
        var visibleFrom = 0
        for span in mask.visibleSpans(query: i, queryLength: nq, keyLength: nk) {
            for j in visibleFrom..<span.lowerBound { row[j] = -.infinity }
            if hasPredicate {
                for j in span where !mask.allows(query: i, key: j, queryLength: nq, keyLength: nk) {
                    row[j] = -.infinity
                }
            }
            visibleFrom = span.upperBound
        }
        for j in visibleFrom..<nk16 { row[j] = -.infinity }

        let statistics = softmaxRow(row, count: nk16, extraLogit: sinkLogit)
        logSumExp[i] = statistics.logSumExp

        // O[i, :] = sum over keys with nonzero weight of P[i, j] * V[j, :].
        outputRow.update(repeating: 0, count: dv16)
        for j in 0..<nk where row[j] != 0 {
            let pj = SIMD16<Float>(repeating: row[j])
            let vRow = paddedValues + j * dv16
            var c = 0
            while c < dv16 {
                store16(load16(outputRow, c) + pj * load16(vRow, c), outputRow, c)
                c += 16
            }
        }
        (output + i * dv).update(from: outputRow, count: dv)
    }
}
