import AttentionCore
import XCTest
import _AttentionTestSupport

/// Rotary position embedding against its textbook definition in Float64 (test support), both pairings, partial
/// rotary dimensions, both scalings, large positions; the relative-position property; and the errors.
final class RotaryEmbeddingTests: XCTestCase {
    /// Each output element may differ from the Float64 rotation by the rounding of cos and sin (once each) and of
    /// the two products and their sum: at most 4 half-ulps of |x| + |y|, element by element.
    func assertMatchesReference(
        _ rope: RotaryEmbedding, _ input: Tensor, positions: [Int], layout: TensorLayout = .bhnd,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let output = try rope.apply(to: input, positions: positions, layout: layout)
        let s = layout.canonical(input.shape)
        let (batch, heads, tokens, d) = (s[0], s[1], s[2], s[3])
        let r = rope.rotaryDimension ?? d - d % 2
        var (linear, ntk) = (1.0, 1.0)
        var yarn: YarnReference? = nil
        switch rope.scaling {
        case .none: break
        case .linear(let factor): linear = Double(factor)
        case .ntkAware(let factor): ntk = Double(factor)
        case .yarn(let factor, let length, let fast, let slow, let m):
            yarn = YarnReference(
                factor: Double(factor), originalContextLength: length, betaFast: Double(fast), betaSlow: Double(slow),
                attentionFactor: m.map(Double.init))
        }
        // YaRN scales the rotated values by m, and their rounding with them.
        let m = yarn.map { $0.attentionFactor ?? 0.1 * log($0.factor) + 1 } ?? 1
        for b in 0..<batch {
            for h in 0..<heads {
                for n in 0..<tokens {
                    let index = { (c: Int) in layout == .bhnd ? [b, h, n, c] : [b, n, h, c] }
                    let row = (0..<d).map { Double(input[index($0)[0], index($0)[1], index($0)[2], index($0)[3]]) }
                    let position = positions.count == tokens ? positions[n] : positions[b * tokens + n]
                    let expected = referenceRotary(
                        row, position: position, interleaved: rope.pairing == .interleaved, base: Double(rope.base),
                        rotaryDimension: r, linearFactor: linear, ntkFactor: ntk, yarn: yarn)
                    for c in 0..<d {
                        let partner = rope.pairing == .interleaved ? c ^ 1 : (c < r / 2 ? c + r / 2 : c - r / 2)
                        let magnitude = c < r ? (abs(row[c]) + abs(row[partner])) * m : 0
                        let bound = 4 * Double(Float.ulpOfOne) / 2 * magnitude
                        let actual = Double(output[index(c)[0], index(c)[1], index(c)[2], index(c)[3]])
                        let error = abs(actual - expected[c])
                        XCTAssertLessThanOrEqual(
                            error, bound, "b\(b) h\(h) n\(n) c\(c) \(rope)", file: file, line: line)
                    }
                }
            }
        }
    }

    func testBothPairingsMatchTheTextbookRotation() throws {
        let input = try Tensor.randomNormal(shape: [2, 3, 5, 10], seed: 61)
        let positions = [0, 1, 7, 4095, 100_000]
        for pairing in [RotaryEmbedding.Pairing.interleaved, .halves] {
            for (base, dimension) in [(Float(10_000), nil), (500_000, 6), (10_000, 2)] as [(Float, Int?)] {
                for scaling in [
                    RotaryEmbedding.Scaling.none, .linear(factor: 4), .ntkAware(factor: 8),
                    .yarn(factor: 16, originalContextLength: 4096),
                    .yarn(factor: 4, originalContextLength: 8192, betaFast: 16, betaSlow: 2, attentionFactor: 1.5),
                ] {
                    let rope = try RotaryEmbedding(
                        pairing: pairing, base: base, rotaryDimension: dimension, scaling: scaling)
                    try assertMatchesReference(rope, input, positions: positions)
                }
            }
        }
    }

    func testPerBatchPositionsAndTokenMajorLayout() throws {
        // Left-padded generation: each batch entry has its own positions. The [B, N, H, d] layout rotates the same
        // rows as [B, H, N, d].
        let input = try Tensor.randomNormal(shape: [2, 4, 3, 8], seed: 62)
        let rope = try RotaryEmbedding(pairing: .halves)
        try assertMatchesReference(rope, input, positions: [0, 1, 2, 9, 10, 11])
        let tokenMajor = try Tensor(shape: [2, 3, 4, 8]) { i in input[i[0], i[2], i[1], i[3]] }
        let positions = [5, 6, 7, 20, 21, 22]
        let rotated = try rope.apply(to: tokenMajor, positions: positions, layout: .bnhd)
        let headMajor = try rope.apply(to: input, positions: positions)
        XCTAssertEqual(try Tensor(shape: [2, 4, 3, 8]) { i in rotated[i[0], i[2], i[1], i[3]] }, headMajor)
    }

    func testScoresDependOnlyOnThePositionDifference() throws {
        // q at p and k at p' give the same q . k as q at p + s and k at p' + s (up to rounding).
        let q = try Tensor.randomNormal(shape: [1, 1, 1, 64], seed: 63)
        let k = try Tensor.randomNormal(shape: [1, 1, 1, 64], seed: 64)
        for pairing in [RotaryEmbedding.Pairing.interleaved, .halves] {
            let rope = try RotaryEmbedding(pairing: pairing)
            func score(_ p: Int, _ pk: Int) throws -> Double {
                let (a, b) = (try rope.apply(to: q, positions: [p]), try rope.apply(to: k, positions: [pk]))
                return zip(a.scalars, b.scalars).reduce(0) { $0 + Double($1.0) * Double($1.1) }
            }
            let near = try score(10, 3)
            XCTAssertEqual(try score(1010, 1003), near, accuracy: 1e-4)
            XCTAssertEqual(try score(50_010, 50_003), near, accuracy: 1e-3)
            XCTAssertNotEqual(try score(10, 4), near, accuracy: 1e-3)
        }
    }

    func testAUnitVectorTurnsByThePosition() throws {
        // d = 2: (1, 0) at position 3 becomes (cos 3, sin 3) with either pairing (one pair, theta_0 = 1).
        let x = try Tensor(shape: [1, 1, 1, 2], scalars: [1, 0])
        for pairing in [RotaryEmbedding.Pairing.interleaved, .halves] {
            let y = try RotaryEmbedding(pairing: pairing).apply(to: x, positions: [3])
            XCTAssertEqual(y.scalars, [Float(cos(3.0)), Float(sin(3.0))])
        }
    }

    func testInvalidRotaryArgumentsThrowNamingTheArgument() throws {
        func argument(_ body: () throws -> Void) -> String? {
            do { try body() } catch let error as AttentionError { return error.argument } catch { return "\(error)" }
            return nil
        }
        XCTAssertEqual(argument { _ = try RotaryEmbedding(pairing: .halves, base: 1) }, "base")
        XCTAssertEqual(argument { _ = try RotaryEmbedding(pairing: .halves, rotaryDimension: 5) }, "rotaryDimension")
        XCTAssertEqual(
            argument { _ = try RotaryEmbedding(pairing: .halves, scaling: .linear(factor: 0)) }, "scaling factor")
        let x = try Tensor(zeros: [1, 2, 3, 4])
        let rope = try RotaryEmbedding(pairing: .interleaved, rotaryDimension: 6)
        XCTAssertEqual(argument { _ = try rope.apply(to: x, positions: [0, 1, 2]) }, "rotaryDimension")
        let full = try RotaryEmbedding(pairing: .interleaved)
        XCTAssertEqual(argument { _ = try full.apply(to: x, positions: [0, 1]) }, "positions.count")
        XCTAssertEqual(argument { _ = try full.apply(to: x, positions: [0, -1, 2]) }, "positions[1]")
        XCTAssertEqual(argument { _ = try full.apply(to: try Tensor(zeros: [3, 4]), positions: [0]) }, "tensor")
        XCTAssertEqual(
            argument { _ = try full.apply(to: x, positions: [0, 1, RotaryEmbedding.maximumPosition + 1]) },
            "positions[2]")
        XCTAssertEqual(
            argument {
                _ = try RotaryEmbedding(pairing: .halves, scaling: .yarn(factor: 4, originalContextLength: 0))
            }, "originalContextLength")
        XCTAssertEqual(
            argument {
                _ = try RotaryEmbedding(
                    pairing: .halves, scaling: .yarn(factor: 4, originalContextLength: 64, attentionFactor: -1))
            }, "attentionFactor")
    }
}
