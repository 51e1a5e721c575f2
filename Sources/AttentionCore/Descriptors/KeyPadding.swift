// KeyPadding: which keys of each sequence in a padded batch are real tokens.
//
// A padded batch stores sequences of different lengths in one [B, H, N, d] tensor. Key padding hides each
// sequence's padding keys from all of its queries, on top of the call's mask (the two are intersected), with no
// Nq x Nk memory: the kernels turn it into visible key ranges per sequence, skip the key tiles past a sequence's
// real keys and mask only the tiles that straddle a boundary. Positions keep their meaning in the padded tensor:
// structured masks stay aligned to the padded lengths (d(i) = i + Nk - Nq), which for right padding and
// Nq = Nk is the usual top-left causal mask of each sequence.
//
// Query rows: padding does not remove queries. A query row at a padded position is computed like any other row
// (it sees its sequence's real keys through the mask), so it is finite and the caller discards it; a sequence with
// no real keys gives every one of its rows zeros and log-sum-exp -inf (or the row's sink logit), the rule for any
// row that sees no key.

/// Which keys of each batch entry are real tokens rather than padding (`AttentionOptions.keyPadding`).
///
/// ```swift
/// // Two sentences of 12 and 5 tokens, padded to 12: sentence 1's keys 5..<12 are padding.
/// let options = AttentionOptions(keyPadding: .lengths([12, 5]))
/// ```
public enum KeyPadding: Sendable, Hashable {
    /// Sequence b's real keys are `0 ..< lengths[b]` (padding at the end: right padding). One length per batch
    /// entry, each in `0 ... keyLength`.
    case lengths([Int])
    /// Sequence b's real keys are `ranges[b]` (padding before and after: left padding, as for batched generation).
    /// One range per batch entry, inside `0 ..< keyLength` (an empty range hides every key).
    case ranges([Range<Int>])
    /// `realKeys[b * keyLength + j]` is true when key j of sequence b is a real token: a [batch, keyLength] mask in
    /// row-major order, the convention of Hugging Face's `attention_mask` (true or 1 = attend). PyTorch's
    /// `key_padding_mask` is the opposite (true = padding): negate it first.
    case realKeys([Bool])

    /// Sequence `batch`'s real keys as sorted, disjoint, non-empty ranges. Assumes `validate` passed.
    package func keyRuns(batch: Int, keyLength: Int) -> [Range<Int>] {
        switch self {
        case .lengths(let lengths):
            return lengths[batch] > 0 ? [0..<lengths[batch]] : []
        case .ranges(let ranges):
            return ranges[batch].isEmpty ? [] : [ranges[batch]]
        case .realKeys(let realKeys):
            var runs: [Range<Int>] = []
            let row = batch * keyLength
            var j = 0
            while j < keyLength {
                while j < keyLength && !realKeys[row + j] { j += 1 }
                let start = j
                while j < keyLength && realKeys[row + j] { j += 1 }
                if start < j { runs.append(start..<j) }
            }
            return runs
        }
    }

    /// Throws unless the padding describes `batch` sequences of `keyLength` keys.
    package func validate(batch: Int, keyLength: Int) throws {
        switch self {
        case .lengths(let lengths):
            try AttentionError.require(
                lengths.count == batch, "options.keyPadding lengths.count", expected: "\(batch) (one per batch entry)",
                actual: "\(lengths.count)")
            if let bad = lengths.firstIndex(where: { $0 < 0 || $0 > keyLength }) {
                throw AttentionError.invalidValue(
                    argument: "options.keyPadding lengths[\(bad)]", expected: "0...\(keyLength) (the key length)",
                    actual: "\(lengths[bad])")
            }
        case .ranges(let ranges):
            try AttentionError.require(
                ranges.count == batch, "options.keyPadding ranges.count", expected: "\(batch) (one per batch entry)",
                actual: "\(ranges.count)")
            if let bad = ranges.firstIndex(where: { $0.lowerBound < 0 || $0.upperBound > keyLength }) {
                throw AttentionError.invalidValue(
                    argument: "options.keyPadding ranges[\(bad)]", expected: "a range inside 0..<\(keyLength)",
                    actual: "\(ranges[bad])")
            }
        case .realKeys(let realKeys):
            let (expected, overflow) = batch.multipliedReportingOverflow(by: keyLength)
            try AttentionError.require(
                !overflow && realKeys.count == expected, "options.keyPadding realKeys.count",
                expected: "\(batch) x \(keyLength) = \(expected) (batch x keyLength)", actual: "\(realKeys.count)")
        }
    }
}
