import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

final class VectorMathTests: XCTestCase {
    /// Error in units in the last place of the correctly rounded Float result.
    private func ulpError(_ actual: Float, _ exact: Double) -> Double {
        let rounded = Float(exact)
        if actual == rounded { return 0 }
        return abs(Double(actual) - exact) / Double(rounded.ulp)
    }

    /// Evaluates `function` 16 lanes at a time over `count` evenly spaced points of `range` (plus both ends) and
    /// returns the max ulp error against `exact` and where it happened.
    private func maxUlpError(
        _ function: (SIMD16<Float>) -> SIMD16<Float>, _ exact: (Double) -> Double,
        over range: ClosedRange<Float>,
        count: Int
    ) -> (ulp: Double, at: Float) {
        var worst = (ulp: 0.0, at: range.lowerBound)
        let step = (Double(range.upperBound) - Double(range.lowerBound)) / Double(count)
        var inputs = (0...count).map { Float(Double(range.lowerBound) + Double($0) * step) }
        inputs = inputs.map { Swift.min(Swift.max($0, range.lowerBound), range.upperBound) }
        var start = 0
        while start < inputs.count {
            var x = SIMD16<Float>(repeating: range.lowerBound)
            for lane in 0..<16 where start + lane < inputs.count { x[lane] = inputs[start + lane] }
            let y = function(x)
            for lane in 0..<16 {
                let error = ulpError(y[lane], exact(Double(x[lane])))
                if error > worst.ulp { worst = (error, x[lane]) }
            }
            start += 16
        }
        return worst
    }

    func testExpIsWithinTwoUlpOverItsNormalRange() {
        let wide = maxUlpError(VectorMath.exp, Foundation.exp, over: -87.33...88.72, count: 400_000)
        let softmaxRange = maxUlpError(VectorMath.exp, Foundation.exp, over: -20...0, count: 400_000)
        print(
            "exp max ulp error: \(wide.ulp) at \(wide.at) over [-87.33, 88.72]; \(softmaxRange.ulp) over [-20, 0]"
        )
        XCTAssertLessThanOrEqual(wide.ulp, 2, "at x = \(wide.at)")
        XCTAssertLessThanOrEqual(softmaxRange.ulp, 2, "at x = \(softmaxRange.at)")
    }

    func testExp2IsWithinTwoUlpOverItsNormalRange() {
        let worst = maxUlpError(VectorMath.exp2, Foundation.exp2, over: -126...127.99, count: 400_000)
        print("exp2 max ulp error: \(worst.ulp) at \(worst.at) over [-126, 128)")
        XCTAssertLessThanOrEqual(worst.ulp, 2, "at x = \(worst.at)")
    }

    func testSoftmaxExp2IsWithinTwoUlpAndFlushesOnlyBelowTheNormalRange() {
        // The softmax's 2^x for x <= 0: as accurate as exp2 down to -126 (2^-126 is the smallest normal float).
        let worst = maxUlpError(vectorExp2OfNonPositive, Foundation.exp2, over: -126...0, count: 400_000)
        print("softmax exp2 max ulp error: \(worst.ulp) at \(worst.at) over [-126, 0]")
        XCTAssertLessThanOrEqual(worst.ulp, 2, "at x = \(worst.at)")
        var x = SIMD16<Float>(repeating: 0)
        let specials: [Float] = [-.infinity, .nan, -126, -126.4, -126.6, -127, -127.5, -1e30, -0.0, -0.5, -1]
        for (lane, value) in specials.enumerated() { x[lane] = value }
        let y = vectorExp2OfNonPositive(x)
        // +0.0 exactly (the softmax marks masked keys with -0.0 and must tell them from underflow).
        XCTAssertEqual(y[0].bitPattern, 0)
        XCTAssertTrue(y[1].isNaN)
        XCTAssertEqual(y[2], exp2f(-126))
        // Between -126.5 and -126 the (subnormal) result is still computed.
        XCTAssertEqual(Double(y[3]), Foundation.exp2(Double(x[3])), accuracy: Foundation.exp2(-126.0) * 1e-6)
        // Below -126.5 the result is flushed to exactly +0.0 (the true values are subnormal).
        for lane in 4...7 { XCTAssertEqual(y[lane].bitPattern, 0, "lane \(lane)") }
        XCTAssertEqual(y[8], 1)
        XCTAssertEqual(Double(y[9]), Foundation.exp2(-0.5), accuracy: Double(Float(0.7).ulp))
        XCTAssertEqual(y[10], 0.5)
        XCTAssertEqual(y[11], 1, "padding lanes of 0 give 1")
    }

    func testSpecialValues() {
        var x = SIMD16<Float>(repeating: 0)
        let specials: [Float] = [
            -.infinity, .infinity, .nan, -100, 100, 0, -0.0, 1, -1e30, 1e30, -87.4, 88.8,
        ]
        for (lane, value) in specials.enumerated() { x[lane] = value }
        let e = VectorMath.exp(x)
        XCTAssertEqual(e[0], 0)
        XCTAssertEqual(e[1], .infinity)
        XCTAssertTrue(e[2].isNaN)
        XCTAssertEqual(e[3], 0, "subnormal results flush to zero")
        XCTAssertEqual(e[4], .infinity)
        XCTAssertEqual(e[5], 1)
        XCTAssertEqual(e[6], 1)
        XCTAssertEqual(e[7], Float(M_E), accuracy: Float(M_E).ulp * 2)
        XCTAssertEqual(e[8], 0)
        XCTAssertEqual(e[9], .infinity)
        XCTAssertEqual(e[10], 0)
        XCTAssertEqual(e[11], .infinity)
        let e2 = VectorMath.exp2(x)
        XCTAssertEqual(e2[0], 0)
        XCTAssertEqual(e2[1], .infinity)
        XCTAssertTrue(e2[2].isNaN)
        XCTAssertEqual(e2[3], exp2f(-100))
        XCTAssertEqual(e2[5], 1)
        XCTAssertEqual(e2[8], 0)
        XCTAssertEqual(e2[9], .infinity)
    }

    func testDotMatchesDoubleOnAwkwardLengths() throws {
        try withEvery("count", in: [0, 1, 15, 16, 17, 63, 64, 65, 130, 1000]) { count in
            let x = try Tensor.randomNormal(shape: [count], seed: 1).scalars
            let y = try Tensor.randomNormal(shape: [count], seed: 2).scalars
            let exact = zip(x, y).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            let plainFloat = zip(x, y).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            let magnitude = zip(x, y).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
            let got = try VectorMath.dot(x, y)
            // Any summation order has error <= count * eps * sum |x y|; compare against that bound and the plain loop.
            let bound = Swift.max(
                2 * abs(Double(plainFloat) - exact), Double(count) * Double(Float.ulpOfOne) * magnitude)
            XCTAssertLessThanOrEqual(abs(Double(got) - exact), bound + 1e-30, SweepContext.description)
        }
    }

    func testDotRejectsMismatchedLengths() {
        XCTAssertThrowsError(try VectorMath.dot([1, 2], [1])) { error in
            XCTAssertEqual(
                error as? AttentionError,
                .invalidValue(argument: "y.count", expected: "2 (x.count)", actual: "1"))
        }
    }
}

extension VectorMathTests {
    func testTanhIsWithinTwoUlp() {
        var worst = (ulp: 0.0, at: Float(0))
        var inputs: [Float] = (0...200_000).map { Float(-12 + 24 * Double($0) / 200_000) }
        inputs += (0...20_000).map { Float(-0.001 + 0.002 * Double($0) / 20_000) }
        var start = 0
        while start < inputs.count {
            var x = SIMD16<Float>(repeating: 0)
            for lane in 0..<16 where start + lane < inputs.count { x[lane] = inputs[start + lane] }
            let y = VectorMath.tanh(x)
            for lane in 0..<16 {
                let exact = Foundation.tanh(Double(x[lane]))
                let rounded = Float(exact)
                let error = y[lane] == rounded ? 0 : abs(Double(y[lane]) - exact) / Double(rounded.ulp)
                if error > worst.ulp { worst = (error, x[lane]) }
            }
            start += 16
        }
        print("tanh max ulp error: \(worst.ulp) at \(worst.at) over [-12, 12]")
        XCTAssertLessThanOrEqual(worst.ulp, 2, "at x = \(worst.at)")
        var special = SIMD16<Float>(repeating: 0)
        special[0] = .infinity
        special[1] = -.infinity
        special[2] = .nan
        special[3] = -0.0
        let t = VectorMath.tanh(special)
        XCTAssertEqual(t[0], 1)
        XCTAssertEqual(t[1], -1)
        XCTAssertTrue(t[2].isNaN)
        XCTAssertEqual(t[3], 0)
    }
}
