// The tolerance rule (STYLE.md, rule 10): a kernel's max error against the Float64 reference must be at most
// twice the max error of the plain Float32 loop on the same inputs, plus a small absolute floor.
//
// The floor is 8 Float ulps of the largest reference magnitude (at least 1): it only matters where the plain
// loop happens to be exact (a single visible key, head dimension 1) and the kernel legitimately rounds once more.

import AttentionCore

/// The maximum absolute difference; a NaN or infinity where the other side differs counts as infinite error.
/// Equal non-finite values (NaN and NaN, +inf and +inf) count as agreement.
public func maxAbsoluteError<A: BinaryFloatingPoint, B: BinaryFloatingPoint>(
    _ actual: [A], _ expected: [B]
) -> Double {
    precondition(
        actual.count == expected.count, "comparing \(actual.count) values with \(expected.count)")
    var worst = 0.0
    for (a, e) in zip(actual, expected) {
        let a = Double(a)
        let e = Double(e)
        if a.isNaN && e.isNaN || a == e { continue }
        let difference = abs(a - e)
        worst = Swift.max(worst, difference.isNaN ? .infinity : difference)
    }
    return worst
}

/// The verdict of the tolerance rule for one comparison.
public struct ToleranceCheck: CustomStringConvertible {
    public let kernelError: Double
    public let plainError: Double
    public let bound: Double
    public let context: String
    /// Within the bound, and the bound finite: where the plain loop overflows (an infinite or NaN error where the
    /// reference is finite) the rule gives no bound, and the check fails rather than accept anything.
    public var passes: Bool { kernelError <= bound && bound.isFinite }

    public var description: String {
        "max |kernel - float64| = \(kernelError) vs bound \(bound) (2 x plain float32 error \(plainError) + floor)"
            + " [\(context)]"
    }
}

/// Applies the rule to a kernel's values against the reference and the plain Float32 loop.
public func toleranceCheck(
    kernel: [Float], reference: [Double], plain: [Float], context: String = SweepContext.description
) -> ToleranceCheck {
    let largest = reference.lazy.filter(\.isFinite).map(abs).max() ?? 0
    let floor = 8 * Double(Float.ulpOfOne) * Swift.max(1, largest)
    let plainError = maxAbsoluteError(plain, reference)
    return ToleranceCheck(
        kernelError: maxAbsoluteError(kernel, reference), plainError: plainError,
        bound: 2 * plainError + floor,
        context: context)
}

/// Runs `partialAttention` and checks its output and log-sum-exp against the Float64 reference with the
/// tolerance rule. Throws whatever the kernel throws.
public func checkAttention(
    queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask = .none,
    options: AttentionOptions = AttentionOptions()
) throws -> (output: ToleranceCheck, logSumExp: ToleranceCheck) {
    let result = try partialAttention(
        queries: queries, keys: keys, values: values, mask: mask, options: options)
    let reference = referenceAttention(
        queries: queries, keys: keys, values: values, mask: mask, options: options)
    let plain = plainFloat32Attention(
        queries: queries, keys: keys, values: values, mask: mask, options: options)
    let context =
        SweepContext.description + " q\(queries.shape) k\(keys.shape) v\(values.shape) mask=\(mask)"
    return (
        toleranceCheck(
            kernel: result.output.scalars, reference: reference.output, plain: plain.output,
            context: context + " (output)"),
        toleranceCheck(
            kernel: result.logSumExp.scalars, reference: reference.logSumExp, plain: plain.logSumExp,
            context: context + " (logSumExp)")
    )
}
