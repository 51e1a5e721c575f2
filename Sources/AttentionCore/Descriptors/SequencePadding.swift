// SequencePadding: which positions of each sequence in a padded batch are real tokens.
//
// A padded batch stores sequences of different lengths in one [B, H, N, d] tensor. `AttentionOptions.keyPadding`
// hides each sequence's padding keys from all of its queries, on top of the call's mask (the two are intersected);
// `AttentionOptions.queryPadding` marks padding query rows, which are then not computed. Neither costs Nq x Nk
// memory: the kernels turn padding into visible key ranges per sequence, skip the key tiles past a sequence's real
// keys and the query blocks past its real queries, and mask only the tiles that straddle a boundary. Positions keep
// their meaning in the padded tensor: structured masks stay aligned to the padded lengths (d(i) = i + Nk - Nq), which
// for right padding and Nq = Nk is the usual top-left causal mask of each sequence.
//
// Answers for rows that see nothing:
// - a padding query row (`queryPadding`) is treated as a row that sees no key: zeros, and log-sum-exp -infinity (or
//   the row's learned sink logit, `AttentionOptions.sinkLogits`); it costs no key tile;
// - without `queryPadding`, a query row at a padded position is computed like any other row (it sees its sequence's
//   real keys through the mask), so it is finite and the caller discards it;
// - a sequence with no real keys gives every one of its rows zeros and log-sum-exp -infinity (or the sink logit).

/// Which positions of each batch entry are real tokens rather than padding (``AttentionOptions/keyPadding``,
/// ``AttentionOptions/queryPadding``).
///
/// ```swift
/// // Sentences of 12, 8, 43 and 4 tokens padded to 43 (self-attention: the same padding for queries and keys).
/// let padding = SequencePadding.lengths([12, 8, 43, 4])
/// let options = AttentionOptions(keyPadding: padding, queryPadding: padding)
/// ```
public enum SequencePadding: Sendable, Hashable {
    /// Sequence b's real positions are `0 ..< lengths[b]` (padding at the end: right padding). One length per batch
    /// entry, each in `0 ... length` (the padded length along the axis the padding applies to).
    case lengths([Int])
    /// Sequence b's real positions are `ranges[b]` (padding before and after: left padding, as for batched
    /// generation). One range per batch entry, inside `0 ..< length` (an empty range has no real position).
    case ranges([Range<Int>])
    /// `realTokens[b * length + j]` is true when position j of sequence b is a real token: a [batch, length] mask in
    /// row-major order, the convention of Hugging Face's `attention_mask` (true or 1 = attend). PyTorch's
    /// `key_padding_mask` is the opposite (true = padding): negate it first.
    case realTokens([Bool])

    /// Sequence `batch`'s real positions as sorted, disjoint, non-empty ranges. Assumes `validate` passed.
    package func runs(batch: Int, length: Int) -> [Range<Int>] {
        switch self {
        case .lengths(let lengths):
            return lengths[batch] > 0 ? [0..<lengths[batch]] : []
        case .ranges(let ranges):
            return ranges[batch].isEmpty ? [] : [ranges[batch]]
        case .realTokens(let realTokens):
            var runs: [Range<Int>] = []
            let row = batch * length
            var j = 0
            while j < length {
                while j < length && !realTokens[row + j] { j += 1 }
                let start = j
                while j < length && realTokens[row + j] { j += 1 }
                if start < j { runs.append(start..<j) }
            }
            return runs
        }
    }

    /// Throws unless the padding describes `batch` sequences of `length` positions; errors name `argument`.
    package func validate(_ argument: String, batch: Int, length: Int, lengthName: String) throws {
        switch self {
        case .lengths(let lengths):
            try AttentionError.require(
                lengths.count == batch, "\(argument) lengths.count", expected: "\(batch) (one per batch entry)",
                actual: "\(lengths.count)")
            if let bad = lengths.firstIndex(where: { $0 < 0 || $0 > length }) {
                throw AttentionError.invalidValue(
                    argument: "\(argument) lengths[\(bad)]", expected: "0...\(length) (the \(lengthName))",
                    actual: "\(lengths[bad])")
            }
        case .ranges(let ranges):
            try AttentionError.require(
                ranges.count == batch, "\(argument) ranges.count", expected: "\(batch) (one per batch entry)",
                actual: "\(ranges.count)")
            if let bad = ranges.firstIndex(where: { $0.lowerBound < 0 || $0.upperBound > length }) {
                throw AttentionError.invalidValue(
                    argument: "\(argument) ranges[\(bad)]",
                    expected: "a range inside 0..<\(length) (the \(lengthName))",
                    actual: "\(ranges[bad])")
            }
        case .realTokens(let realTokens):
            let (expected, overflow) = batch.multipliedReportingOverflow(by: length)
            try AttentionError.require(
                !overflow && realTokens.count == expected, "\(argument) realTokens.count",
                expected: "\(batch) x \(length) = \(expected) (batch x \(lengthName))", actual: "\(realTokens.count)")
        }
    }
}
