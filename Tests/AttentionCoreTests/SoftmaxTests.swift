import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

final class SoftmaxTests: XCTestCase {
    private func doubleSoftmax(_ row: [Float]) -> [Double] {
        let m = row.map(Double.init).max()!
        let e = row.map { Foundation.exp(Double($0) - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    func testRowsSumToOneAndMatchDouble() throws {
        try withEvery("width", in: [1, 5, 16, 17, 100, 239]) { width in
            let x = try Tensor.randomNormal(
                shape: [3, 4, width], standardDeviation: 4, seed: UInt64(width))
            let p = try softmax(x)
            XCTAssertEqual(p.shape, x.shape)
            for row in 0..<12 {
                let slice = Array(p.scalars[(row * width)..<((row + 1) * width)])
                let sum = slice.reduce(0.0) { $0 + Double($1) }
                XCTAssertEqual(sum, 1, accuracy: Double(width) * 1e-7 + 1e-6, SweepContext.description)
                let exact = doubleSoftmax(Array(x.scalars[(row * width)..<((row + 1) * width)]))
                XCTAssertLessThanOrEqual(maxAbsoluteError(slice, exact), 1e-6, SweepContext.description)
            }
        }
    }

    func testShiftInvariance() throws {
        let x = try Tensor.randomNormal(shape: [4, 33], seed: 5)
        let shifted = try Tensor(shape: x.shape, scalars: x.scalars.map { $0 + 1000 })
        let a = try softmax(x).scalars
        let b = try softmax(shifted).scalars
        // Adding 1000 rounds each input by up to half an ulp of 1000 (3e-5), which moves p by about p * 3e-5.
        XCTAssertLessThanOrEqual(maxAbsoluteError(a, b.map(Double.init)), 4e-5)
    }

    func testMaskedEntriesAndFullyMaskedRowsAreZero() throws {
        let x = try Tensor(shape: [2, 3], scalars: [1, .nan, 3, 4, 5, 6])
        let mask = [true, false, true, false, false, false]
        let p = try softmax(x, mask: mask)
        XCTAssertEqual(p[0, 1], 0, "a masked NaN must not leak")
        XCTAssertEqual(Double(p[0, 0] + p[0, 2]), 1, accuracy: 1e-6)
        XCTAssertEqual(Array(p.scalars[3...]), [0, 0, 0])
        XCTAssertFalse(p.scalars.contains { $0.isNaN })
        let lse = try logSumExp(x, mask: mask)
        XCTAssertEqual(lse.shape, [2])
        XCTAssertEqual(
            Double(lse[0]), Foundation.log(Foundation.exp(1.0) + Foundation.exp(3.0)), accuracy: 1e-6)
        XCTAssertEqual(lse[1], -.infinity)
    }

    func testExtremeInputsStayFinite() throws {
        let x = try Tensor(
            shape: [3, 4], scalars: [1e30, -1e30, 0, 1e30, -1e30, -1e30, -1e30, -1e30, 3e38, -3e38, 1, 2])
        let p = try softmax(x)
        XCTAssertTrue(p.scalars.allSatisfy(\.isFinite), "\(p.scalars)")
        XCTAssertEqual(p[0, 0], 0.5)
        XCTAssertEqual(p[0, 3], 0.5)
        XCTAssertEqual(p[0, 1], 0)
        XCTAssertEqual(p[1, 0], 0.25)
        XCTAssertEqual(p[2, 0], 1)
        let lse = try logSumExp(x)
        XCTAssertEqual(Double(lse[0]), 1e30, accuracy: 1e24)
        XCTAssertEqual(Double(lse[1]), -1e30 + Foundation.log(4.0), accuracy: 1e24)
        XCTAssertTrue(lse.scalars.allSatisfy(\.isFinite))
    }

    func testLogSumExpMatchesDouble() throws {
        let x = try Tensor.randomNormal(shape: [5, 70], standardDeviation: 10, seed: 9)
        let lse = try logSumExp(x)
        for row in 0..<5 {
            let slice = x.scalars[(row * 70)..<((row + 1) * 70)].map(Double.init)
            let m = slice.max()!
            let exact = m + Foundation.log(slice.reduce(0) { $0 + Foundation.exp($1 - m) })
            XCTAssertEqual(Double(lse[row]), exact, accuracy: abs(exact) * 4e-7 + 1e-6)
        }
    }

    func testEmptyRowsAndBadArguments() throws {
        XCTAssertEqual(try softmax(try Tensor(zeros: [2, 0])).count, 0)
        XCTAssertEqual(try logSumExp(try Tensor(zeros: [2, 0])).scalars, [-.infinity, -.infinity])
        XCTAssertThrowsError(try softmax(try Tensor(zeros: []))) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "tensor")
            XCTAssertTrue("\(error)".contains("rank >= 1"), "\(error)")
        }
        XCTAssertThrowsError(try softmax(try Tensor(zeros: [2, 2]), mask: [true])) { error in
            XCTAssertEqual(
                error as? AttentionError,
                .invalidValue(
                    argument: "mask.count", expected: "4 (one per element of [2, 2])", actual: "1"))
        }
    }
}

extension SoftmaxTests {
    func testNaNRowsAreNaNNotZero() throws {
        let x = try Tensor(
            shape: [2, 17], scalars: [Float.nan] + [Float](repeating: 1, count: 16) + [Float](repeating: 2, count: 17))
        let p = try softmax(x)
        XCTAssertTrue(p.scalars[0..<17].allSatisfy(\.isNaN))
        XCTAssertTrue(p.scalars[17...].allSatisfy(\.isFinite))
        XCTAssertTrue(try logSumExp(try Tensor(shape: [1], scalars: [.nan])).scalars[0].isNaN)
        // A masked NaN is still just masked.
        XCTAssertEqual(try softmax(try Tensor(shape: [2], scalars: [.nan, 0]), mask: [false, true]).scalars, [0, 1])
    }
}
