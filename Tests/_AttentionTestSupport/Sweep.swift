// Sweeps over seeds and shapes that say where they were when something failed.
//
// `withEvery("seed", in: 0..<8) { seed in ... }` runs the body once per value with "seed=3" pushed onto a
// task-local context; tolerance checks and thrown errors carry that context, so every failure message reads
// like "... [seed=3 shape=(113, 203) headDimension=63]".

import AttentionCore

public enum SweepContext {
    @TaskLocal public static var entries: [String] = []

    /// The current sweep position, e.g. "seed=3 queryLength=113".
    public static var description: String { entries.joined(separator: " ") }
}

/// An error thrown inside a sweep, annotated with the sweep position.
public struct SweepFailure: Error, CustomStringConvertible {
    public let context: String
    public let underlying: any Error
    public var description: String { "\(underlying) [\(context)]" }
}

/// Runs `body` for every value, with `name=value` added to `SweepContext` while it runs.
public func withEvery<S: Sequence>(
    _ name: String, in values: S, _ body: (S.Element) throws -> Void
) throws {
    for value in values {
        try SweepContext.$entries.withValue(SweepContext.entries + ["\(name)=\(value)"]) {
            do {
                try body(value)
            } catch let failure as SweepFailure {
                throw failure
            } catch {
                throw SweepFailure(context: SweepContext.description, underlying: error)
            }
        }
    }
}

/// Seeded rank-4 inputs: queries [B, Hq, Nq, Dk], keys [B, Hkv, Nk, Dk], values [B, Hkv, Nk, Dv], standard
/// normal, from three generators derived from `seed`.
public func attentionInputs(
    batch: Int = 1, queryHeads: Int, keyValueHeads: Int? = nil, queryLength: Int, keyLength: Int,
    headDimension: Int, valueDimension: Int? = nil, seed: UInt64
) throws -> (queries: Tensor, keys: Tensor, values: Tensor) {
    let kvHeads = keyValueHeads ?? queryHeads
    let base = seed &* 0x1000_0000
    return (
        try Tensor.randomNormal(
            shape: [batch, queryHeads, queryLength, headDimension], seed: base &+ 1),
        try Tensor.randomNormal(shape: [batch, kvHeads, keyLength, headDimension], seed: base &+ 2),
        try Tensor.randomNormal(
            shape: [batch, kvHeads, keyLength, valueDimension ?? headDimension], seed: base &+ 3)
    )
}

/// The odd shapes from STYLE.md rule 12.
public enum OddShapes {
    public static let headDimensions = [1, 3, 8, 63, 64, 80, 128]
    public static let lengths: [(queries: Int, keys: Int)] = [
        (1, 1), (1, 239), (7, 7), (113, 203), (128, 217), (1023, 1024),
    ]
    public static let blockSizes = [1, 7, 16, 64]
}
