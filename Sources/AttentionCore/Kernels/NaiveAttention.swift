// Naive scaled dot-product attention: the quadratic baseline.
//
// Textbook order, with the whole score matrix materialized:
//   S = scale * Q K^T        every entry computed, masked ones too, for all B * Hq * Nq * Nk pairs at once
//   S = softcap / ALiBi / bias, then S = -inf where masked (overwriting whatever was computed)
//   P = softmax(S) row by row (one pass for the maximum, one for the exponentials)
//   O = P V
//
// It runs the blockwise kernel's code (BlockwiseAttention.swift) with a single tile per (batch, key/value head):
// Br = Nq and Bc = Nk, and the scores kept in one tensor instead of a per-worker tile. With one tile the online
// softmax *is* the two-pass textbook softmax, nothing is skipped, and nothing differs from the blockwise kernel
// but the memory: the score tensor holds B * Hkv * Nk * (G * Nq rounded up to 16) floats (G = Hq / Hkv), i.e.
// B * Hq * Nq * Nk up to padding. That is the quantity `AttentionOptions.naiveMemoryBudget` limits. Sharing the
// micro-kernels makes the baseline an honest unfused implementation (two matrix products and a softmax at
// matrix-product speed), so the blockwise kernel's speedup over it measures fusion and tiling, not code quality.

/// Bytes of the score tensor the naive kernel would allocate for `problem`, or nil if that overflows Int.
package func naiveScoreBytes(_ problem: AttentionProblem) -> Int? {
    materializedScoreFloats(problem, naiveTiling(problem)).flatMap {
        let (bytes, overflow) = $0.multipliedReportingOverflow(by: MemoryLayout<Float>.size)
        return overflow ? nil : bytes
    }
}

private func naiveTiling(_ problem: AttentionProblem) -> BlockwiseTiling {
    BlockwiseTiling(queryBlock: Swift.max(1, problem.queryLength), keyBlock: Swift.max(1, problem.keyLength))
}

/// Throws `memoryBudgetExceeded` unless the naive kernel's score tensor fits `options.naiveMemoryBudget`.
package func checkNaiveBudget(_ problem: AttentionProblem) throws {
    let budget = problem.options.naiveMemoryBudget
    let required = naiveScoreBytes(problem)
    guard let required, required <= budget else {
        throw AttentionError.memoryBudgetExceeded(
            argument: "options.naiveMemoryBudget", requiredBytes: required ?? Int.max, budgetBytes: budget)
    }
}

/// The naive kernel on raw memory (see `tiledAttention`); the budget is already checked.
package func naiveAttention(
    _ problem: AttentionProblem, queries: UnsafePointer<Float>?, segments: [KeyValueSegment],
    output: UnsafeMutablePointer<Float>?, logSumExp: UnsafeMutablePointer<Float>?
) -> Int {
    tiledAttention(
        problem, queries: queries, segments: segments, tiling: naiveTiling(problem), scoreStorage: .materialized,
        output: output, logSumExp: logSumExp)
}
