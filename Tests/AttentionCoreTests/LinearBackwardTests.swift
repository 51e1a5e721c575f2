import AttentionCore
import XCTest
import _AttentionTestSupport

/// `linearAttentionGradients` against the Float64 textbook reference (itself checked by finite differences of its
/// forward, and its forward against `linearAttention`), over feature maps, causal and not, decay, normalization,
/// head groupings, odd shapes; determinism and errors.
final class LinearBackwardTests: XCTestCase {
    private func inputs(
        batch: Int = 1, queryHeads: Int, keyValueHeads: Int, queryLength: Int, keyLength: Int, headDimension: Int,
        valueDimension: Int, scale: Float = 1, seed: UInt64
    ) throws -> (queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor) {
        let x = try attentionInputs(
            batch: batch, queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: queryLength,
            keyLength: keyLength, headDimension: headDimension, valueDimension: valueDimension, seed: seed)
        let dO = try Tensor.randomNormal(shape: [batch, queryHeads, queryLength, valueDimension], seed: seed &+ 77)
        func scaled(_ t: Tensor) throws -> Tensor { try Tensor(shape: t.shape, scalars: t.scalars.map { $0 * scale }) }
        return (try scaled(x.queries), try scaled(x.keys), x.values, dO)
    }

    /// Configurations with a well-conditioned result: normalization only with positive maps.
    private var configurations: [(name: String, options: LinearAttentionOptions, scale: Float)] {
        [
            ("elu+1 normalized", LinearAttentionOptions(featureMap: .eluPlusOne), 1),
            (
                "elu+1 causal decay",
                LinearAttentionOptions(featureMap: .eluPlusOne, mask: .causal, decay: [0.9, 0.8, 1, 0.5]), 1
            ),
            (
                "identity unnormalized causal",
                LinearAttentionOptions(featureMap: .identity, mask: .causal, normalize: false), 1
            ),
            ("identity unnormalized", LinearAttentionOptions(featureMap: .identity, normalize: false), 1),
            ("relu unnormalized causal", LinearAttentionOptions(featureMap: .relu, mask: .causal, normalize: false), 1),
            ("taylor2 normalized causal", LinearAttentionOptions(featureMap: .taylor2, mask: .causal), 0.6),
            ("taylor2 normalized", LinearAttentionOptions(featureMap: .taylor2), 0.6),
        ]
    }

    func testReferenceMatchesFiniteDifferencesAndTheForward() throws {
        for (name, options, scale) in configurations {
            let x = try inputs(
                queryHeads: 4, keyValueHeads: 2, queryLength: 5, keyLength: 5, headDimension: 3, valueDimension: 2,
                scale: scale, seed: 21)
            let reference = LinearReferenceInputs<Double>(
                queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient, sinkLogits: nil)
            let analytic = referenceLinearBackward(reference, options: options)
            let h = 1e-6
            var worst = 0.0
            for (path, gradient) in [
                (\LinearReferenceInputs<Double>.queries, analytic.queries), (\.keys, analytic.keys),
                (\.values, analytic.values),
            ] {
                for i in gradient.indices {
                    var plus = reference
                    plus[keyPath: path][i] += h
                    var minus = reference
                    minus[keyPath: path][i] -= h
                    let numeric =
                        (referenceLinearLoss(plus, options: options) - referenceLinearLoss(minus, options: options))
                        / (2 * h)
                    worst = max(worst, abs(numeric - gradient[i]))
                }
            }
            XCTAssertLessThan(worst, 1e-6, name)
            XCTAssertGreaterThan(analytic.keys.map(abs).max()!, 1e-3, "\(name): gradients are not trivially zero")
            // The reference's forward is the function linearAttention computes.
            let output = try linearAttention(queries: x.queries, keys: x.keys, values: x.values, options: options)
            XCTAssertLessThan(maxAbsoluteError(output.scalars, analytic.output), 1e-5, name)
        }
    }

    func testGradientsMatchReferenceOnOddShapesAndGroupings() throws {
        let shapes: [(batch: Int, hq: Int, hkv: Int, n: Int, d: Int, dv: Int)] = [
            (1, 4, 4, 1, 1, 1), (1, 4, 2, 7, 3, 5), (2, 4, 1, 37, 17, 9), (1, 4, 4, 70, 16, 33),
        ]
        for (s, shape) in shapes.enumerated() {
            for (name, options, scale) in configurations {
                // Taylor-2 has 1 + d + d^2 features: keep its shapes small.
                if case .taylor2 = options.featureMap, shape.d > 8 { continue }
                let x = try inputs(
                    batch: shape.batch, queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.n,
                    keyLength: shape.n, headDimension: shape.d, valueDimension: shape.dv, scale: scale,
                    seed: UInt64(30 + s))
                try SweepContext.$entries.withValue([name, "shape \(s)"]) {
                    for (gradient, check) in try checkLinearGradients(
                        queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient,
                        options: options
                    ).sorted(by: { $0.key < $1.key }) {
                        XCTAssertTrue(check.passes, "\(gradient): \(check)")
                    }
                }
            }
        }
        // Non-causal with more keys than queries.
        let x = try inputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: 20, keyLength: 45, headDimension: 8, valueDimension: 4,
            seed: 40)
        for (gradient, check) in try checkLinearGradients(
            queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient,
            options: LinearAttentionOptions(featureMap: .eluPlusOne))
        {
            XCTAssertTrue(check.passes, "\(gradient): \(check)")
        }
    }

    func testGradientsAreBitwiseIdenticalForEveryThreadCount() throws {
        let x = try inputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 40, keyLength: 40, headDimension: 12,
            valueDimension: 8, seed: 50)
        let results = try [1, 2, 3].map { threads in
            try linearAttentionGradients(
                queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient,
                options: LinearAttentionOptions(mask: .causal, decay: [0.9, 0.95, 1, 0.8], threads: threads))
        }
        for g in results.dropFirst() {
            XCTAssertEqual(bitwise(g.queries), bitwise(results[0].queries))
            XCTAssertEqual(bitwise(g.keys), bitwise(results[0].keys))
            XCTAssertEqual(bitwise(g.values), bitwise(results[0].values))
        }
    }

    func testBadInputNamesTheArgument() throws {
        let x = try inputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: 4, keyLength: 4, headDimension: 4, valueDimension: 3,
            seed: 60)
        func argument(_ options: LinearAttentionOptions, outputGradient: Tensor? = nil) -> String? {
            do {
                _ = try linearAttentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values,
                    outputGradient: outputGradient ?? x.outputGradient,
                    options: options)
                return nil
            } catch {
                return (error as? AttentionError)?.argument
            }
        }
        let custom = FeatureMap.custom(outputDimension: 4) { input, output in
            for i in 0..<4 { output[i] = input[i] * input[i] }
        }
        XCTAssertEqual(argument(LinearAttentionOptions(featureMap: custom)), "options.featureMap")
        XCTAssertEqual(
            argument(LinearAttentionOptions(), outputGradient: try Tensor(zeros: [1, 2, 4, 4])), "outputGradient")
        XCTAssertEqual(argument(LinearAttentionOptions(decay: [0.5, 0.5])), "options.decay")
        XCTAssertNil(argument(LinearAttentionOptions()))
    }
}
