// PackedSequences: where each sequence of a packed (variable-length) batch starts, FlashAttention's cu_seqlens.
//
// A packed batch concatenates sequences of different lengths along the token axis, with no padding: queries
// [totalQueries, Hq, Dk], keys [totalKeys, Hkv, Dk], values [totalKeys, Hkv, Dv]. Sequence b owns query tokens
// queryOffsets[b] ..< queryOffsets[b + 1] and key tokens keyOffsets[b] ..< keyOffsets[b + 1], and attends only to
// its own keys. Positions inside a sequence count from its first token, and every mask is aligned to the
// sequence's bottom-right corner (d(i) = i + Nk_b - Nq_b), as in FlashAttention's varlen call: with as many keys
// as queries that is the usual causal mask; with a cached prefix before the queries, the queries are the last
// positions.

/// Sequence boundaries of a packed batch (`packedAttention`): cumulative token offsets for queries and keys,
/// FlashAttention's `cu_seqlens_q` and `cu_seqlens_k`.
///
/// ```swift
/// // Three prompts of 5, 17 and 2 tokens, packed into queries [24, H, d] (self-attention).
/// let sequences = try PackedSequences(lengths: [5, 17, 2])   // offsets [0, 5, 22, 24]
/// ```
public struct PackedSequences: Sendable, Hashable {
    /// B + 1 offsets into the query tokens: 0 first, non-decreasing, the total query count last.
    public let queryOffsets: [Int]
    /// B + 1 offsets into the key (and value) tokens: 0 first, non-decreasing, the total key count last.
    public let keyOffsets: [Int]

    /// Sequences given by cumulative offsets (B + 1 each, starting at 0 and non-decreasing).
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` naming the offending offset.
    public init(queryOffsets: [Int], keyOffsets: [Int]) throws {
        try Self.validate(queryOffsets, "queryOffsets")
        try Self.validate(keyOffsets, "keyOffsets")
        try AttentionError.require(
            keyOffsets.count == queryOffsets.count, "keyOffsets.count",
            expected: "\(queryOffsets.count) (queryOffsets.count: one more than the sequences)",
            actual: "\(keyOffsets.count)")
        self.queryOffsets = queryOffsets
        self.keyOffsets = keyOffsets
    }

    /// Sequences of the given query and key lengths (each >= 0, as many of one as of the other).
    public init(queryLengths: [Int], keyLengths: [Int]) throws {
        try self.init(
            queryOffsets: Self.offsets(queryLengths, "queryLengths"), keyOffsets: Self.offsets(keyLengths, "keyLengths")
        )
    }

    /// Self-attention sequences: each sequence's queries are its keys.
    public init(lengths: [Int]) throws {
        let offsets = try Self.offsets(lengths, "lengths")
        try self.init(queryOffsets: offsets, keyOffsets: offsets)
    }

    /// The number of sequences.
    public var count: Int { queryOffsets.count - 1 }

    /// Sequence b's query tokens. Like `Array`'s subscript, b outside 0..<count is a programming error and traps.
    public func queryRange(_ b: Int) -> Range<Int> {
        precondition(b >= 0 && b < count, "sequence \(b) is out of bounds for \(count) sequences")
        return queryOffsets[b]..<queryOffsets[b + 1]
    }

    /// Sequence b's key tokens (traps for b outside 0..<count, as `queryRange`).
    public func keyRange(_ b: Int) -> Range<Int> {
        precondition(b >= 0 && b < count, "sequence \(b) is out of bounds for \(count) sequences")
        return keyOffsets[b]..<keyOffsets[b + 1]
    }

    private static func offsets(_ lengths: [Int], _ argument: String) throws -> [Int] {
        var offsets = [0]
        for (b, length) in lengths.enumerated() {
            try AttentionError.require(length >= 0, "\(argument)[\(b)]", expected: ">= 0", actual: "\(length)")
            let (sum, overflow) = offsets[b].addingReportingOverflow(length)
            try AttentionError.require(
                !overflow, "\(argument)[\(b)]", expected: "lengths whose sum fits in Int", actual: "\(length)")
            offsets.append(sum)
        }
        return offsets
    }

    private static func validate(_ offsets: [Int], _ argument: String) throws {
        try AttentionError.require(
            offsets.first == 0, "\(argument)[0]", expected: "0 (offsets are cumulative and start at 0)",
            actual: offsets.first.map { "\($0)" } ?? "missing (an empty array)")
        for b in offsets.indices.dropFirst() where offsets[b] < offsets[b - 1] {
            throw AttentionError.invalidValue(
                argument: "\(argument)[\(b)]", expected: ">= \(offsets[b - 1]) (offsets never decrease)",
                actual: "\(offsets[b])")
        }
    }
}
