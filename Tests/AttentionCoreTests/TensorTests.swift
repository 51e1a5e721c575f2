import AttentionCore
import XCTest
import _AttentionTestSupport

final class TensorTests: XCTestCase {
    func testInitFromScalarsKeepsShapeAndOrder() throws {
        let t = try Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(t.shape, [2, 3])
        XCTAssertEqual(t.rank, 2)
        XCTAssertEqual(t.count, 6)
        XCTAssertEqual(t[0, 2], 3)
        XCTAssertEqual(t[1, 0], 4)
        XCTAssertEqual(t.offset(of: [1, 2]), 5)
    }

    func testElementCountMismatchThrowsNamingTheArgument() {
        XCTAssertThrowsError(try Tensor(shape: [2, 3], scalars: [1, 2, 3])) { error in
            XCTAssertEqual(
                error as? AttentionError,
                .invalidValue(
                    argument: "scalars.count", expected: "6 (the product of shape [2, 3])", actual: "3"))
            XCTAssertTrue("\(error)".contains("scalars.count is 3 but expected 6"), "\(error)")
        }
    }

    func testNegativeDimensionThrows() {
        XCTAssertThrowsError(try Tensor(zeros: [2, -1])) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "shape")
            XCTAssertTrue("\(error)".contains("[2, -1]"), "\(error)")
        }
        XCTAssertThrowsError(try Tensor.randomNormal(shape: [-3], seed: 0))
    }

    func testOverflowingShapeThrows() {
        XCTAssertThrowsError(try Tensor(zeros: [Int.max, 3])) { error in
            XCTAssertTrue("\(error)".contains("fits in Int"), "\(error)")
        }
    }

    func testZerosRepeatingAndEmpty() throws {
        XCTAssertEqual(try Tensor(zeros: [2, 2]).scalars, [0, 0, 0, 0])
        XCTAssertEqual(try Tensor(shape: [3], repeating: 1.5).scalars, [1.5, 1.5, 1.5])
        let empty = try Tensor(zeros: [4, 0, 2])
        XCTAssertEqual(empty.count, 0)
        let scalar = try Tensor(zeros: [])
        XCTAssertEqual(scalar.count, 1)
    }

    func testClosureInitVisitsRowMajorIndices() throws {
        let t = try Tensor(shape: [2, 3, 4]) { index in Float(index[0] * 100 + index[1] * 10 + index[2])
        }
        XCTAssertEqual(t[1, 2, 3], 123)
        XCTAssertEqual(t[0, 1, 0], 10)
        XCTAssertEqual(t.scalars[5], 11)  // [0, 1, 1]
        XCTAssertEqual(
            try Tensor(shape: [3, 3]) { $0[0] == $0[1] ? 1 : 0 }.scalars, [1, 0, 0, 0, 1, 0, 0, 0, 1])
    }

    func testRandomTensorsAreReproducibleAndDocumented() throws {
        let a = try Tensor.randomNormal(shape: [3, 5], seed: 7)
        let b = try Tensor.randomNormal(shape: [3, 5], seed: 7)
        let c = try Tensor.randomNormal(shape: [3, 5], seed: 8)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
        // The documented recipe: element k is the k-th SplitMix64 Box-Muller draw.
        var generator = SplitMix64(seed: 7)
        let first = Float(generator.nextStandardNormal())
        let second = Float(generator.nextStandardNormal())
        XCTAssertEqual(a.scalars[0], first)
        XCTAssertEqual(a.scalars[1], second)

        var uniformGenerator = SplitMix64(seed: 3)
        let u = try Tensor.randomUniform(shape: [4], in: 2...6, seed: 3)
        XCTAssertEqual(u.scalars[0], Float(2 + 4 * uniformGenerator.nextUnitDouble()))
    }

    func testSplitMix64KnownSequence() {
        // SplitMix64 seeded with 0, computed independently with Python integers (the widely published first outputs).
        var generator = SplitMix64(seed: 0)
        XCTAssertEqual(generator.next(), 0xE220_A839_7B1D_CDAF)
        XCTAssertEqual(generator.next(), 0x6E78_9E6A_A1B9_65F4)
        XCTAssertEqual(generator.next(), 0x06C4_5D18_8009_454F)
    }

    func testRandomDistributionsHaveTheRightMoments() throws {
        let n = try Tensor.randomNormal(shape: [20000], mean: 2, standardDeviation: 3, seed: 11)
        let mean = n.scalars.reduce(0.0) { $0 + Double($1) } / 20000
        let variance = n.scalars.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / 20000
        // Standard error of the mean is 3 / sqrt(20000) = 0.021; of the std about 0.015.
        XCTAssertEqual(mean, 2, accuracy: 0.1)
        XCTAssertEqual(variance.squareRoot(), 3, accuracy: 0.08)
        let u = try Tensor.randomUniform(shape: [20000], in: -1...1, seed: 12)
        XCTAssertTrue(u.scalars.allSatisfy { $0 >= -1 && $0 <= 1 })
        XCTAssertEqual(u.scalars.reduce(0.0) { $0 + Double($1) } / 20000, 0, accuracy: 0.03)
    }

    func testValueSemantics() throws {
        var a = try Tensor(shape: [2], scalars: [1, 2])
        let b = a
        a[1] = 9
        XCTAssertEqual(b[1], 2)
        XCTAssertEqual(a[1], 9)
        a.withUnsafeMutableBufferPointer { $0[0] = 5 }
        XCTAssertEqual(a.scalars, [5, 9])
        XCTAssertEqual(b.scalars, [1, 2])
    }

    func testDescriptionIsShortForLargeTensors() throws {
        let big = try Tensor(zeros: [1000, 1000])
        XCTAssertLessThan(big.description.count, 120, big.description)
        XCTAssertTrue(big.description.hasPrefix("Tensor([1000, 1000]:"), big.description)
        XCTAssertEqual(try Tensor(shape: [2], scalars: [1, 2]).description, "Tensor([2]: 1.0, 2.0)")
    }

    func testInvalidRandomParametersThrow() {
        XCTAssertThrowsError(try Tensor.randomNormal(shape: [2], standardDeviation: -1, seed: 0)) {
            error in
            XCTAssertEqual((error as? AttentionError)?.argument, "standardDeviation")
        }
        XCTAssertThrowsError(try Tensor.randomUniform(shape: [2], in: -Float.infinity...0, seed: 0)) {
            error in
            XCTAssertEqual((error as? AttentionError)?.argument, "range")
        }
    }

    func testZeroedScalarsArePositiveZerosOfTheRequestedCountOnBothSidesOfTheHugePageThreshold() {
        // 4 MiB = 1 << 20 floats is where the storage is first marked for huge pages (on Linux).
        for count in [0, 1, 17, (1 << 20) - 1, 1 << 20, 3_000_001] {
            let scalars = zeroedScalars(count: count)
            XCTAssertEqual(scalars.count, count)
            XCTAssertNil(scalars.firstIndex { $0.bitPattern != 0 }, "count \(count)")
        }
    }
}
