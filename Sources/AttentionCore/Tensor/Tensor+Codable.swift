// Tensor and AttentionResult as Codable values: the unit a ring- or sequence-parallel runtime sends between
// processes (each computes a partial result over its key shard; `mergeAttention` combines them).
//
// Encoded as a keyed container: a tensor as {"shape": [Int], "scalars": [Float]}, a result as {"output": Tensor,
// "logSumExp": Tensor, "workspaceBytes": Int}. Decoding validates what the initializers validate and throws their
// `AttentionError` (naming "shape", "scalars.count" or "logSumExp"), so a corrupt message cannot become a tensor
// whose shape and elements disagree.
//
// Non-finite values: a row that saw no key has log-sum-exp -infinity, and NaN is a legal element. `JSONEncoder`
// refuses both by default; give it `nonConformingFloatEncodingStrategy = .convertToString(...)` (and the decoder
// the matching strategy), or use a binary format such as `PropertyListEncoder` with `.binary`, which keeps every
// Float bit for bit.

extension Tensor: Codable {
    private enum CodingKeys: String, CodingKey {
        case shape, scalars
    }

    /// Decodes `{"shape": [...], "scalars": [...]}`.
    /// - Throws: the decoder's errors, and ``AttentionError`` when the shape is invalid or the element count is not
    ///   the product of the shape.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(
            shape: container.decode([Int].self, forKey: .shape),
            scalars: container.decode([Float].self, forKey: .scalars))
    }

    /// Encodes the shape and the row-major elements.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(shape, forKey: .shape)
        try container.encode(scalars, forKey: .scalars)
    }
}

extension AttentionResult: Codable {
    private enum CodingKeys: String, CodingKey {
        case output, logSumExp, workspaceBytes
    }

    /// Decodes a result another process encoded.
    /// - Throws: the decoder's errors, and ``AttentionError/shapeMismatch(argument:expected:actual:reason:)`` naming
    ///   "logSumExp" when it does not have one entry per output row (the output's shape without its last axis).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let output = try container.decode(Tensor.self, forKey: .output)
        let logSumExp = try container.decode(Tensor.self, forKey: .logSumExp)
        let rows = Array(output.shape.dropLast())
        guard !output.shape.isEmpty, logSumExp.shape == rows else {
            throw AttentionError.shapeMismatch(
                argument: "logSumExp", expected: "\(rows) (the output's axes but the last)",
                actual: logSumExp.shape, reason: "a partial result has one log-sum-exp per output row")
        }
        self.init(
            output: output, logSumExp: logSumExp,
            workspaceBytes: try container.decodeIfPresent(Int.self, forKey: .workspaceBytes) ?? 0)
    }

    /// Encodes the output, the log-sum-exp and the workspace size.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(output, forKey: .output)
        try container.encode(logSumExp, forKey: .logSumExp)
        try container.encode(workspaceBytes, forKey: .workspaceBytes)
    }
}
