// Row-wise, numerically stable softmax and log-sum-exp over the last axis of a tensor.
//
// For a row x (masked entries removed): m = max x, s = sum exp(x - m), softmax = exp(x - m) / s,
// logSumExp = m + log s. Subtracting the maximum keeps every exponent <= 0, so inputs like 1e30 stay finite.
// A fully masked row (or an empty one) has no maximum: its softmax is all zeros and its log-sum-exp is -infinity,
// and exp is never evaluated at -inf - (-inf).

/// Softmax along the last axis of `tensor`.
///
/// - Parameters:
///   - tensor: any rank >= 1; each slice along the last axis is one row.
///   - mask: optional, `tensor.count` Booleans in the same row-major order; `false` excludes an element
///     (its output is 0). A row with no `true` element outputs zeros.
/// - Returns: a tensor of `tensor`'s shape whose unmasked entries in every non-empty row sum to 1.
/// - Complexity: O(tensor.count), vectorized 16 lanes at a time.
///
/// ```swift
/// let p = try softmax(try Tensor(shape: [1, 3], scalars: [1, 2, 3]))   // [0.090, 0.245, 0.665]
/// ```
package func softmax(_ tensor: Tensor, mask: [Bool]? = nil) throws -> Tensor {
    let (rows, width) = try rowLayout(tensor, mask: mask)
    var output = applyMask(tensor.scalars, mask)
    output.withUnsafeMutableBufferPointer { buffer in
        for row in 0..<rows {
            _ = softmaxRow(buffer.baseAddress! + row * width, count: width)
        }
    }
    return Tensor(uncheckedShape: tensor.shape, scalars: output)
}

/// Log-sum-exp along the last axis of `tensor`: `log(sum(exp(x)))` per row, computed stably.
///
/// - Parameters:
///   - tensor: any rank >= 1.
///   - mask: optional, as in `softmax(_:mask:)`. A row with no unmasked element gives -infinity.
/// - Returns: a tensor of `tensor`'s shape without its last axis.
/// - Complexity: O(tensor.count).
package func logSumExp(_ tensor: Tensor, mask: [Bool]? = nil) throws -> Tensor {
    let (rows, width) = try rowLayout(tensor, mask: mask)
    var scratch = applyMask(tensor.scalars, mask)
    var result = [Float](repeating: 0, count: rows)
    scratch.withUnsafeMutableBufferPointer { buffer in
        for row in 0..<rows {
            result[row] = softmaxRow(buffer.baseAddress! + row * width, count: width).logSumExp
        }
    }
    return Tensor(uncheckedShape: Array(tensor.shape.dropLast()), scalars: result)
}

private func rowLayout(_ tensor: Tensor, mask: [Bool]?) throws -> (rows: Int, width: Int) {
    guard tensor.rank >= 1 else {
        throw AttentionError.shapeMismatch(
            argument: "tensor", expected: "rank >= 1", actual: tensor.shape,
            reason: "softmax runs along the last axis")
    }
    if let mask {
        try AttentionError.require(
            mask.count == tensor.count, "mask.count",
            expected: "\(tensor.count) (one per element of \(tensor.shape))",
            actual: "\(mask.count)")
    }
    let width = tensor.shape[tensor.rank - 1]
    return (tensor.shape.dropLast().reduce(1, *), width)
}

/// Masked entries become -infinity, which `softmaxRow` turns into exact zeros without evaluating -inf - -inf.
private func applyMask(_ scalars: [Float], _ mask: [Bool]?) -> [Float] {
    guard let mask else { return scalars }
    return zip(scalars, mask).map { $1 ? $0 : -.infinity }
}

/// The state one softmax row leaves behind: its maximum and the sum of exp(x - maximum).
package struct SoftmaxRowStatistics {
    package var maximum: Float
    package var sum: Float
    /// -infinity for an empty or fully masked row; NaN when a NaN entered the row.
    package var logSumExp: Float { sum > 0 || sum.isNaN ? maximum + _log(sum) : -.infinity }
}

/// Replaces `row[0..<count]` by its softmax in place. Entries equal to -infinity are excluded (output 0).
///
/// - Returns: the row maximum and the denominator. If the row has no finite-or-+inf entry, the row is zero-filled
///   and the sum is 0 (so `logSumExp` is -infinity).
@discardableResult
package func softmaxRow(
    _ row: UnsafeMutablePointer<Float>, count: Int
) -> SoftmaxRowStatistics {
    var maxVector = SIMD16<Float>(repeating: -.infinity)
    var sawNaN = false
    var i = 0
    while i + 16 <= count {
        let x = load16(row, i)
        maxVector = vectorMax(maxVector, x)
        sawNaN = sawNaN || any(x .!= x)
        i += 16
    }
    var maximum = horizontalMax(maxVector)
    while i < count {
        maximum = Swift.max(maximum, row[i])
        sawNaN = sawNaN || row[i].isNaN
        i += 1
    }
    if sawNaN {
        // NaN is not a masked entry: the whole row is undefined, and says so.
        row.update(repeating: .nan, count: count)
        return SoftmaxRowStatistics(maximum: .nan, sum: .nan)
    }
    guard maximum > -.infinity else {
        row.update(repeating: 0, count: count)
        return SoftmaxRowStatistics(maximum: -.infinity, sum: 0)
    }
    let shift = SIMD16<Float>(repeating: maximum)
    var sumVector = SIMD16<Float>()
    i = 0
    while i + 16 <= count {
        let e = vectorExp(load16(row, i) - shift)
        sumVector += e
        store16(e, row, i)
        i += 16
    }
    if i < count {
        // The tail goes through the same vector exp so every element sees identical rounding.
        var tail = SIMD16<Float>(repeating: -.infinity)
        for lane in 0..<(count - i) { tail[lane] = row[i + lane] }
        let e = vectorExp(tail - shift)
        for lane in 0..<(count - i) { row[i + lane] = e[lane] }
        sumVector += e
    }
    let sum = horizontalSum(sumVector)
    let inverse = SIMD16<Float>(repeating: 1 / sum)
    i = 0
    while i + 16 <= count {
        store16(load16(row, i) * inverse, row, i)
        i += 16
    }
    while i < count {
        row[i] *= inverse[0]
        i += 1
    }
    return SoftmaxRowStatistics(maximum: maximum, sum: sum)
}
