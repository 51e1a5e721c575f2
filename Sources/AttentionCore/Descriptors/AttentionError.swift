// AttentionError: the one error type every public entry point throws.
//
// Every message names the argument, the value that was expected and the value that was received, so a caller
// can fix the call from the message alone, e.g.
// `values has shape [1, 8, 99, 64] but expected [1, 8, 100, 64]: keys and values must have the same batch,
// head count and sequence length`.

/// An invalid argument to an attention kernel, tensor initializer, mask or option.
///
/// Kernels validate every input before they touch memory; no throwing function in this package traps, hangs or
/// silently returns a wrong answer on bad input. (Index accessors, such as `Tensor`'s subscript,
/// `PackedSequences.queryRange(_:)` and `BlockSparseLayout.keyBlocks(head:queryBlock:)`, trap on an index out of
/// range, as `Array`'s subscript does.) Switch on the case to react programmatically, or print the error: its
/// `description` is a complete sentence naming the argument.
public enum AttentionError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A tensor argument has the wrong rank or dimensions.
    /// - Parameters:
    ///   - argument: the argument's name, e.g. `"values"`.
    ///   - expected: the expected shape, written out (e.g. `"[1, 8, 100, 64]"` or `"rank 4"`).
    ///   - actual: the shape that was passed.
    ///   - reason: why the shape must be so.
    case shapeMismatch(argument: String, expected: String, actual: [Int], reason: String)

    /// A scalar or collection argument is out of range (negative size, NaN scale, wrong count, ...).
    case invalidValue(argument: String, expected: String, actual: String)

    /// Naive attention would materialize a score matrix larger than the caller's budget.
    case memoryBudgetExceeded(argument: String, requiredBytes: Int, budgetBytes: Int)

    /// The name of the offending argument.
    public var argument: String {
        switch self {
        case .shapeMismatch(let argument, _, _, _), .invalidValue(let argument, _, _),
            .memoryBudgetExceeded(let argument, _, _):
            return argument
        }
    }

    /// One sentence naming the argument, what was expected and what was given.
    public var description: String {
        switch self {
        case .shapeMismatch(let argument, let expected, let actual, let reason):
            return "\(argument) has shape \(actual) but expected \(expected): \(reason)"
        case .invalidValue(let argument, let expected, let actual):
            return "\(argument) is \(actual) but expected \(expected)"
        case .memoryBudgetExceeded(let argument, let requiredBytes, let budgetBytes):
            return
                "\(argument) is \(budgetBytes) bytes but naive attention needs \(requiredBytes) bytes for its "
                + "score matrix [batch, queryHeads, queryLength, keyLength]; use the blockwise kernel or raise "
                + "\(argument)"
        }
    }
}

extension AttentionError {
    /// The same error with `context` appended to the argument's name, e.g. "mask (sequence 3)".
    package func naming(_ context: String) -> AttentionError {
        switch self {
        case .shapeMismatch(let argument, let expected, let actual, let reason):
            return .shapeMismatch(
                argument: "\(argument) (\(context))", expected: expected, actual: actual, reason: reason)
        case .invalidValue(let argument, let expected, let actual):
            return .invalidValue(argument: "\(argument) (\(context))", expected: expected, actual: actual)
        case .memoryBudgetExceeded(let argument, let requiredBytes, let budgetBytes):
            return .memoryBudgetExceeded(
                argument: "\(argument) (\(context))", requiredBytes: requiredBytes, budgetBytes: budgetBytes)
        }
    }

    /// Throws `.invalidValue` unless `condition` holds.
    @inline(__always)
    package static func require(
        _ condition: Bool, _ argument: @autoclosure () -> String, expected: @autoclosure () -> String,
        actual: @autoclosure () -> String
    ) throws {
        if !condition {
            throw AttentionError.invalidValue(
                argument: argument(), expected: expected(), actual: actual())
        }
    }
}
