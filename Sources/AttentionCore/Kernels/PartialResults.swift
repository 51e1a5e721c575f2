// Merging partial attention results: the primitive behind split-KV decode, sequence-parallel (ring) attention and
// caches whose keys live in separate buffers.
//
// Two results over disjoint key sets K1 and K2, for the same queries, combine exactly into the result over K1 + K2:
//   m = max(lse1, lse2),  w1 = exp(lse1 - m),  w2 = exp(lse2 - m)
//   O = (w1 * O1 + w2 * O2) / (w1 + w2),  lse = m + log(w1 + w2)
// because each O_i is its softmax-weighted average and exp(lse_i) its denominator. A row with lse = -inf (it saw no
// key) has weight 0; when both are -inf the merged row is zeros with lse = -inf, without evaluating -inf - -inf.

/// Combines two attention results computed for the same queries over disjoint sets of keys.
///
/// - Parameters:
///   - first: a result over keys K1 (output [B, Hq, Nq, Dv], logSumExp [B, Hq, Nq]; or a packed batch's output
///     [tokens, Hq, Dv] and logSumExp [tokens, Hq]: any output whose last axis is Dv, one log-sum-exp per row).
///   - second: a result over keys K2, disjoint from K1, with the same shapes.
/// - Returns: the result over K1 and K2 together, equal to a single call over all keys up to float rounding.
///   `workspaceBytes` is the larger of the two inputs' (they ran one after the other).
/// - Throws: ``AttentionError/shapeMismatch(argument:expected:actual:reason:)`` when the shapes differ or do not belong
///   together.
/// - Complexity: O(B * Hq * Nq * Dv). The merge is deterministic (a fixed formula per row); merging in a different
///   order can differ in the last bits.
///
/// Learned sink logits (``AttentionOptions/sinkLogits``) belong in exactly one of the two calls: each call adds its
/// sink to its own denominator, so setting it in both would count it twice.
///
/// ```swift
/// let left = try partialAttention(queries: q, keys: k1, values: v1)
/// let right = try partialAttention(queries: q, keys: k2, values: v2)
/// let both = try mergeAttention(left, right)   // == attention over the concatenated keys
/// ```
public func mergeAttention(_ first: AttentionResult, _ second: AttentionResult) throws -> AttentionResult {
    let shape = first.output.shape
    guard shape.count >= 2, first.logSumExp.shape == Array(shape.dropLast()) else {
        throw AttentionError.shapeMismatch(
            argument: "first.logSumExp", expected: "\(Array(shape.dropLast())) (the output's axes but the last)",
            actual: first.logSumExp.shape, reason: "a partial result's log-sum-exp has one entry per output row")
    }
    guard second.output.shape == shape else {
        throw AttentionError.shapeMismatch(
            argument: "second.output", expected: "\(shape)", actual: second.output.shape,
            reason: "both partial results must be for the same queries")
    }
    guard second.logSumExp.shape == first.logSumExp.shape else {
        throw AttentionError.shapeMismatch(
            argument: "second.logSumExp", expected: "\(first.logSumExp.shape)", actual: second.logSumExp.shape,
            reason: "both partial results must be for the same queries")
    }
    let rows = first.logSumExp.count
    let width = shape[shape.count - 1]
    var output = zeroedScalars(count: rows * width)
    var logSumExp = [Float](repeating: -.infinity, count: rows)
    let (o1, o2) = (first.output.scalars, second.output.scalars)
    let (l1, l2) = (first.logSumExp.scalars, second.logSumExp.scalars)
    for row in 0..<rows {
        let m = Swift.max(l1[row], l2[row])
        if l1[row].isNaN || l2[row].isNaN {
            logSumExp[row] = .nan
            for c in 0..<width { output[row * width + c] = .nan }
            continue
        }
        guard m > -.infinity else { continue }
        let w1 = l1[row] == -.infinity ? 0 : _exp(l1[row] - m)
        let w2 = l2[row] == -.infinity ? 0 : _exp(l2[row] - m)
        let total = w1 + w2
        let (a, b) = (w1 / total, w2 / total)
        for c in 0..<width {
            let index = row * width + c
            // A side with weight 0 contributes nothing, even if its output holds NaN from its own poisoned rows.
            output[index] = (a == 0 ? 0 : a * o1[index]) + (b == 0 ? 0 : b * o2[index])
        }
        logSumExp[row] = m + _log(total)
    }
    return AttentionResult(
        output: Tensor(uncheckedShape: shape, scalars: output),
        logSumExp: Tensor(uncheckedShape: first.logSumExp.shape, scalars: logSumExp),
        workspaceBytes: Swift.max(first.workspaceBytes, second.workspaceBytes))
}
