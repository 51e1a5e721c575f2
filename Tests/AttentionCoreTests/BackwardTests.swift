import AttentionCore
import XCTest
import _AttentionTestSupport

/// `attentionGradients` against the Float64 reference backward (itself checked by finite differences), on odd
/// shapes, every mask kind, head groupings, sinks, softcap and ALiBi; determinism, empty rows, non-finite masked
/// data, and errors.
final class BackwardTests: XCTestCase {
    private func gradientInputs(
        batch: Int = 1, queryHeads: Int, keyValueHeads: Int, queryLength: Int, keyLength: Int, headDimension: Int,
        valueDimension: Int? = nil, seed: UInt64
    ) throws -> (queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor) {
        let x = try attentionInputs(
            batch: batch, queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: queryLength,
            keyLength: keyLength, headDimension: headDimension, valueDimension: valueDimension, seed: seed)
        let dO = try Tensor.randomNormal(
            shape: [batch, queryHeads, queryLength, valueDimension ?? headDimension], seed: seed &+ 99)
        return (x.queries, x.keys, x.values, dO)
    }

    private func assertGradients(
        _ x: (queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor), mask: AttentionMask,
        options: AttentionOptions = AttentionOptions(), file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let checks = try checkGradients(
            queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient, mask: mask,
            options: options)
        for (name, check) in checks.sorted(by: { $0.key < $1.key }) {
            XCTAssertTrue(check.passes, "\(name): \(check)", file: file, line: line)
        }
    }

    /// The reference backward equals central finite differences of its own forward (loss sum(dO * O)) in
    /// Float64, for every input element and the sink logits, with softcap and ALiBi, causal, GQA.
    func testReferenceBackwardMatchesFiniteDifferences() throws {
        let x = try gradientInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 3, keyLength: 5, headDimension: 3, valueDimension: 2,
            seed: 5)
        var options = AttentionOptions()
        options.softcap = 2.5
        options.alibiSlopes = [0.5, 0.25, 0.125, 0.0625]
        options.sinkLogits = [0.3, -1, 0.1, 2]
        for mask in [AttentionMask.causal, .window(left: 1, right: 1)] {
            let inputs = BackwardReferenceInputs<Double>(
                queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient,
                sinkLogits: options.sinkLogits)
            let analytic = referenceBackward(inputs, mask: mask, options: options)
            let h = 1e-6
            func difference(_ path: WritableKeyPath<BackwardReferenceInputs<Double>, [Double]>, _ i: Int) -> Double {
                var plus = inputs
                plus[keyPath: path][i] += h
                var minus = inputs
                minus[keyPath: path][i] -= h
                return
                    (referenceLoss(plus, mask: mask, options: options)
                    - referenceLoss(minus, mask: mask, options: options)) / (2 * h)
            }
            var worst = 0.0
            for (path, gradient) in [
                (\BackwardReferenceInputs<Double>.queries, analytic.queries), (\.keys, analytic.keys),
                (\.values, analytic.values),
            ] {
                for i in gradient.indices { worst = max(worst, abs(difference(path, i) - gradient[i])) }
            }
            for i in 0..<4 {
                var plus = inputs
                plus.sinkLogits![i] += h
                var minus = inputs
                minus.sinkLogits![i] -= h
                let numeric =
                    (referenceLoss(plus, mask: mask, options: options)
                        - referenceLoss(minus, mask: mask, options: options)) / (2 * h)
                worst = max(worst, abs(numeric - analytic.sinkLogits![i]))
            }
            XCTAssertLessThan(worst, 1e-7, "\(mask)")
            XCTAssertGreaterThan(analytic.keys.map(abs).max()!, 1e-2, "gradients are not trivially zero")
        }
    }

    /// Odd shapes (tile remainders in both directions, more than two key tiles of 128 and row tiles of 64, head
    /// dimensions off the 16-lane width) and every mask kind.
    func testGradientsMatchReferenceOnOddShapesAndMasks() throws {
        let masks: [AttentionMask] = [
            .none, .causal, .window(left: 5, right: 2), .sinks(count: 3, window: 9),
            .custom { q, k in (q * 7 + k * 3) % 5 != 0 },
            .intersection(.causal, .window(left: 40, right: 0)),
        ]
        let shapes: [(nq: Int, nk: Int, d: Int, dv: Int)] = [
            (1, 1, 1, 1), (7, 7, 3, 5), (70, 65, 17, 64), (65, 80, 64, 33), (130, 270, 20, 17),
        ]
        try withEvery("shape", in: shapes.indices) { s in
            let shape = shapes[s]
            // Block-sparse: blocks of 16, each query block sees key block 0, its own index and one more (mod the
            // key blocks).
            let (queryBlocks, keyBlocks) = ((shape.nq + 15) / 16, (shape.nk + 15) / 16)
            let layout = try BlockSparseLayout(
                queryBlock: 16, keyBlock: 16, queryLength: shape.nq, keyLength: shape.nk,
                blocks: (0..<queryBlocks).map { b in Array(Set([0, b % keyBlocks, (3 * b + 1) % keyBlocks])).sorted() })
            let masks = masks + [.blockSparse(layout)]
            try withEvery("mask", in: masks.indices) { m in
                let mask = masks[m]
                let x = try gradientInputs(
                    queryHeads: 2, keyValueHeads: 1, queryLength: shape.nq, keyLength: shape.nk,
                    headDimension: shape.d, valueDimension: shape.dv, seed: UInt64(10 + s * 7 + m))
                try assertGradients(x, mask: mask)
            }
        }
    }

    /// Groupings 1, 2, 4 and 8 query heads per key/value head, a batch of two, 1 and 2 threads.
    func testHeadGroupingsAndBatches() throws {
        try withEvery("group", in: [1, 2, 4, 8]) { group in
            let x = try gradientInputs(
                batch: 2, queryHeads: 8, keyValueHeads: 8 / group, queryLength: 37, keyLength: 91, headDimension: 32,
                seed: UInt64(group))
            try assertGradients(x, mask: .causal, options: AttentionOptions(threads: 2))
        }
    }

    /// Softcap, ALiBi, a custom scale, learned sink logits and per-head masks, alone and together.
    func testScoreOptionsAndSinkGradients() throws {
        let x = try gradientInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 50, keyLength: 130, headDimension: 64, seed: 3)
        var all = AttentionOptions(scale: 0.2)
        all.softcap = 3
        all.alibiSlopes = [0.5, 0.25, 0.125, 0.0625]
        all.sinkLogits = [0.5, -2, 1, 3]
        all.headMasks = [.none, .window(left: 20, right: 0), .sinks(count: 4, window: 30), .causal]
        var softcap = AttentionOptions()
        softcap.softcap = 1.5
        var sinks = AttentionOptions()
        sinks.sinkLogits = [1, 2, 3, 4]
        for (name, options) in [("all", all), ("softcap", softcap), ("sinks", sinks)] {
            try SweepContext.$entries.withValue([name]) {
                try assertGradients(x, mask: .causal, options: options)
                try assertGradients(x, mask: .none, options: options)
            }
        }
    }

    func testGradientsAreBitwiseIdenticalForEveryThreadCount() throws {
        let x = try gradientInputs(
            batch: 2, queryHeads: 6, keyValueHeads: 3, queryLength: 100, keyLength: 150, headDimension: 40, seed: 8)
        let forward = try attentionWithLogSumExp(queries: x.queries, keys: x.keys, values: x.values, mask: .causal)
        var sinks = AttentionOptions()
        sinks.sinkLogits = [0, 1, 2, 3, 4, 5]
        let results = try [1, 2, 3, 7].map { threads in
            var options = sinks
            options.threads = threads
            let forward = try attentionWithLogSumExp(
                queries: x.queries, keys: x.keys, values: x.values, mask: .causal, options: options)
            return try attentionGradients(
                queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: x.outputGradient,
                mask: .causal, options: options)
        }
        for result in results.dropFirst() {
            XCTAssertEqual(result.queries, results[0].queries)
            XCTAssertEqual(result.keys, results[0].keys)
            XCTAssertEqual(result.values, results[0].values)
            XCTAssertEqual(result.sinkLogits, results[0].sinkLogits)
        }
        _ = forward
    }

    /// A query that sees no key gets zero gradients (and its keys get nothing from it); no NaN anywhere.
    func testRowsThatSeeNothingGetZeroGradients() throws {
        let x = try gradientInputs(
            queryHeads: 2, keyValueHeads: 2, queryLength: 9, keyLength: 20, headDimension: 8, seed: 4)
        // Queries 0..<3 see nothing; the rest see keys 0..<10.
        let mask = AttentionMask.custom { q, k in q >= 3 && k < 10 }
        try assertGradients(x, mask: mask)
        let forward = try attentionWithLogSumExp(queries: x.queries, keys: x.keys, values: x.values, mask: mask)
        let g = try attentionGradients(
            queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: x.outputGradient,
            mask: mask)
        XCTAssertTrue(g.queries.scalars.allSatisfy(\.isFinite))
        for head in 0..<2 {
            for q in 0..<3 {
                for c in 0..<8 { XCTAssertEqual(g.queries[0, head, q, c], 0) }
            }
            for k in 10..<20 {
                for c in 0..<8 {
                    XCTAssertEqual(g.keys[0, head, k, c], 0)
                    XCTAssertEqual(g.values[0, head, k, c], 0)
                }
            }
        }
    }

    /// NaN and infinity in keys and values the mask removes never reach any gradient: causal with the last keys
    /// poisoned, and a window (query i sees keys i + 7 ... i + 10) with the first keys poisoned; both in key
    /// tiles that other keys of the same tile are visible in.
    func testNonFiniteMaskedKeysAndValuesNeverReachAGradient() throws {
        for (mask, poisoned) in [(AttentionMask.causal, 90..<100), (.window(left: 3, right: 0), 0..<5)] {
            var x = try gradientInputs(
                queryHeads: 2, keyValueHeads: 1, queryLength: 90, keyLength: 100, headDimension: 16, seed: 6)
            var keys = x.keys.scalars
            var values = x.values.scalars
            for key in poisoned {
                for c in 0..<16 {
                    keys[key * 16 + c] = c % 2 == 0 ? .nan : .infinity
                    values[key * 16 + c] = c % 2 == 0 ? -.infinity : .nan
                }
            }
            x.keys = try Tensor(shape: x.keys.shape, scalars: keys)
            x.values = try Tensor(shape: x.values.shape, scalars: values)
            let forward = try attentionWithLogSumExp(queries: x.queries, keys: x.keys, values: x.values, mask: mask)
            let g = try attentionGradients(
                queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: x.outputGradient,
                mask: mask)
            XCTAssertTrue(g.queries.scalars.allSatisfy(\.isFinite), "\(mask)")
            XCTAssertTrue(g.keys.scalars.allSatisfy(\.isFinite), "\(mask)")
            XCTAssertTrue(g.values.scalars.allSatisfy(\.isFinite), "\(mask)")
        }
    }

    func testBadInputNamesTheArgument() throws {
        let x = try gradientInputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: 4, keyLength: 6, headDimension: 8, seed: 1)
        let forward = try attentionWithLogSumExp(queries: x.queries, keys: x.keys, values: x.values)
        func argument(_ body: () throws -> AttentionGradients) -> String? {
            do {
                _ = try body()
                return nil
            } catch {
                return (error as? AttentionError)?.argument
            }
        }
        XCTAssertEqual(
            argument {
                try attentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values, result: forward,
                    outputGradient: try Tensor(zeros: [1, 2, 4, 7]))
            }, "outputGradient")
        XCTAssertEqual(
            argument {
                try attentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values,
                    result: AttentionResult(output: forward.output, logSumExp: try Tensor(zeros: [1, 2, 3])),
                    outputGradient: x.outputGradient)
            }, "result.logSumExp")
        var bias = AttentionOptions()
        bias.bias = try Tensor(zeros: [1, 1, 4, 6])
        XCTAssertEqual(
            argument {
                try attentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values, result: forward,
                    outputGradient: x.outputGradient, options: bias)
            }, "options.bias")
        XCTAssertEqual(
            argument {
                try attentionGradients(
                    queries: x.queries, keys: tokens(x.keys, 0..<5), values: x.values, result: forward,
                    outputGradient: x.outputGradient)
            }, "values")
    }
}
