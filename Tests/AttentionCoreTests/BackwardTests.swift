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

    /// The reference's bias gradient equals central finite differences, for a bias broadcast over heads and one
    /// broadcast over queries (with a -infinity entry, whose gradient is zero), with key padding and softcap.
    func testReferenceBiasGradientMatchesFiniteDifferences() throws {
        let x = try gradientInputs(
            batch: 2, queryHeads: 2, keyValueHeads: 1, queryLength: 3, keyLength: 5, headDimension: 3, seed: 12)
        for shape in [[2, 1, 3, 5], [1, 2, 1, 5]] {
            var bias = try Tensor.randomNormal(shape: shape, seed: 13).scalars
            bias[3] = -.infinity
            var options = AttentionOptions()
            options.softcap = 2
            options.keyPadding = .lengths([5, 4])
            options.bias = try Tensor(shape: shape, scalars: bias)
            let inputs = BackwardReferenceInputs<Double>(
                queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient,
                sinkLogits: nil, bias: options.bias)
            let analytic = referenceBackward(inputs, mask: .causal, options: options).bias!
            let h = 1e-6
            var worst = 0.0
            for i in bias.indices where bias[i].isFinite {
                var plus = inputs
                plus.bias![i] += h
                var minus = inputs
                minus.bias![i] -= h
                let numeric =
                    (referenceLoss(plus, mask: .causal, options: options)
                        - referenceLoss(minus, mask: .causal, options: options)) / (2 * h)
                worst = max(worst, abs(numeric - analytic[i]))
            }
            XCTAssertLessThan(worst, 1e-7, "\(shape)")
            XCTAssertEqual(analytic[3], 0, "a -infinity bias entry has no gradient")
            XCTAssertGreaterThan(analytic.map(abs).max()!, 1e-2, "gradients are not trivially zero")
        }
    }

    /// The bias gradient in every broadcast form (full; over batch; over heads, shared by several key/value heads;
    /// over queries; over all three) with -infinity entries, under causal and none, GQA 4/2, a batch of two; its
    /// sums are bitwise identical for 1, 2 and 3 threads.
    func testBiasGradients() throws {
        let x = try gradientInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 70, keyLength: 140, headDimension: 24, seed: 14)
        try withEvery(
            "bias shape", in: [[2, 4, 70, 140], [1, 4, 70, 140], [2, 1, 70, 140], [2, 4, 1, 140], [1, 1, 1, 140]]
        ) {
            shape in
            var bias = try Tensor.randomNormal(shape: shape, seed: 15).scalars
            for i in stride(from: 5, to: bias.count, by: 11) { bias[i] = -.infinity }
            var options = AttentionOptions()
            options.bias = try Tensor(shape: shape, scalars: bias)
            try assertGradients(x, mask: .causal, options: options)
            try assertGradients(x, mask: .none, options: options)
            let forward = try partialAttention(
                queries: x.queries, keys: x.keys, values: x.values, mask: .causal, options: options)
            let gradients = try [1, 2, 3].map { threads in
                var options = options
                options.threads = threads
                return try attentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values, result: forward,
                    outputGradient: x.outputGradient, mask: .causal, options: options)
            }
            XCTAssertEqual(gradients[0].bias?.shape, shape)
            for g in gradients.dropFirst() { XCTAssertEqual(g.bias.map(bitwise), gradients[0].bias.map(bitwise)) }
            for i in stride(from: 5, to: bias.count, by: 11) {
                XCTAssertEqual(gradients[0].bias?.scalars[i], 0)
            }
        }
    }

    /// Key and query padding: gradients against the reference (padding intersected with the mask), padding rows
    /// and padding keys get exactly zero, and NaN / infinity in padding keys and values, or behind a -infinity
    /// bias, never reach a gradient.
    func testPaddingAndBiasRemovedKeys() throws {
        var x = try gradientInputs(
            batch: 3, queryHeads: 2, keyValueHeads: 1, queryLength: 40, keyLength: 150, headDimension: 16, seed: 16)
        let keyLengths = [150, 70, 0]
        let queryLengths = [40, 25, 10]
        var keys = x.keys.scalars
        var values = x.values.scalars
        for b in 1..<3 {
            for key in keyLengths[b]..<150 {
                for c in 0..<16 {
                    keys[(b * 150 + key) * 16 + c] = c % 2 == 0 ? .nan : .infinity
                    values[(b * 150 + key) * 16 + c] = c % 2 == 0 ? -.infinity : .nan
                }
            }
        }
        // Batch entry 0: keys 140..<150 poisoned too, removed by a -infinity bias instead of padding.
        var bias = [Float](repeating: 0, count: 3 * 150)
        for key in 140..<150 {
            bias[key] = -.infinity
            for c in 0..<16 {
                keys[key * 16 + c] = .nan
                values[key * 16 + c] = .infinity
            }
        }
        x.keys = try Tensor(shape: x.keys.shape, scalars: keys)
        x.values = try Tensor(shape: x.values.shape, scalars: values)
        var options = AttentionOptions()
        options.keyPadding = .lengths(keyLengths)
        options.queryPadding = .lengths(queryLengths)
        options.bias = try Tensor(shape: [3, 1, 1, 150], scalars: bias)
        for mask in [AttentionMask.none, .causal, .window(left: 30, right: 5)] {
            try SweepContext.$entries.withValue(["\(mask)"]) {
                // The reference cannot take NaN keys: check against it on the clean part, then poison.
                let forward = try partialAttention(
                    queries: x.queries, keys: x.keys, values: x.values, mask: mask, options: options)
                let g = try attentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values, result: forward,
                    outputGradient: x.outputGradient, mask: mask, options: options)
                for tensor in [g.queries, g.keys, g.values, g.bias!] {
                    XCTAssertTrue(tensor.scalars.allSatisfy(\.isFinite))
                }
                for b in 0..<3 {
                    for head in 0..<2 {
                        for q in queryLengths[b]..<40 {
                            for c in 0..<16 { XCTAssertEqual(g.queries[b, head, q, c], 0) }
                        }
                    }
                    for key in (b == 0 ? 140 : keyLengths[b])..<150 {
                        for c in 0..<16 {
                            XCTAssertEqual(g.keys[b, 0, key, c], 0)
                            XCTAssertEqual(g.values[b, 0, key, c], 0)
                        }
                        XCTAssertEqual(g.bias![b, 0, 0, key], 0)
                    }
                }
            }
        }
        // Against the reference on clean keys and values (same padding and bias).
        let clean = try gradientInputs(
            batch: 3, queryHeads: 2, keyValueHeads: 1, queryLength: 40, keyLength: 150, headDimension: 16, seed: 16)
        for mask in [AttentionMask.none, .causal, .window(left: 30, right: 5)] {
            try assertGradients(clean, mask: mask, options: options)
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
        var sinks = AttentionOptions()
        sinks.sinkLogits = [0, 1, 2, 3, 4, 5]
        let results = try [1, 2, 3, 7].map { threads in
            var options = sinks
            options.threads = threads
            let forward = try partialAttention(
                queries: x.queries, keys: x.keys, values: x.values, mask: .causal, options: options)
            return try attentionGradients(
                queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: x.outputGradient,
                mask: .causal, options: options)
        }
        for result in results.dropFirst() {
            XCTAssertEqual(bitwise(result.queries), bitwise(results[0].queries))
            XCTAssertEqual(bitwise(result.keys), bitwise(results[0].keys))
            XCTAssertEqual(bitwise(result.values), bitwise(results[0].values))
            XCTAssertEqual(result.sinkLogits.map(bitwise), results[0].sinkLogits.map(bitwise))
        }
    }

    /// Every row sees exactly one key (its diagonal, `.window(left: 0, right: 0)`): then P = 1, dZ = P (dP - D) = 0
    /// and dQ = dK = 0 in exact arithmetic, and the plain Float32 loop gets exactly 0 too (its D and dP are the same
    /// sum in the same order), so the tolerance rule has no comparator. The kernel computes dP = dO . v in its
    /// blocked product and D = dO . O row by row, so dQ and dK hold that cancellation's rounding. Bound (Higham's
    /// gamma_n = n u / (1 - n u), u = 2^-24): |dP - D| <= 2 gamma_Dv sum_c |dO_c v_c| with O = v, so each dQ element
    /// is at most scale * 2 gamma_Dv * S * max|k| (S the largest sum_c |dO_c v_c|) and each dK element the group's
    /// sum of such terms with max|q|; checked with a factor 2 of slack for the rounding of P, the scale and the
    /// products. dV is each key's group of dO rows, summed, each weighted by P = exp(z - lse) = 1 up to the rounding
    /// of z and of the forward's lse (a few ulps of max(1, |z|)).
    func testSingleVisibleKeyGradientsAreCancellationNoise() throws {
        let (n, group, d, dv) = (37, 2, 64, 48)
        let x = try gradientInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: n, keyLength: n, headDimension: d, valueDimension: dv,
            seed: 19)
        let mask = AttentionMask.window(left: 0, right: 0)
        let forward = try partialAttention(queries: x.queries, keys: x.keys, values: x.values, mask: mask)
        let g = try attentionGradients(
            queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: x.outputGradient,
            mask: mask)
        let u = Double(Float.ulpOfOne) / 2
        let gamma = Double(dv) * u / (1 - Double(dv) * u)
        let scale = 1 / Double(d).squareRoot()
        var largestSum = 0.0
        for head in 0..<4 {
            for i in 0..<n {
                var sum = 0.0
                for c in 0..<dv {
                    sum += abs(Double(x.outputGradient[0, head, i, c] * x.values[0, head / group, i, c]))
                }
                largestSum = max(largestSum, sum)
            }
        }
        let largestKey = x.keys.scalars.map { abs(Double($0)) }.max()!
        let largestQuery = x.queries.scalars.map { abs(Double($0)) }.max()!
        let dZBound = 2 * gamma * largestSum
        let queryBound = 2 * scale * dZBound * largestKey
        let keyBound = 2 * Double(group) * scale * dZBound * largestQuery
        let worstQuery = g.queries.scalars.map { abs(Double($0)) }.max()!
        let worstKey = g.keys.scalars.map { abs(Double($0)) }.max()!
        XCTAssertLessThanOrEqual(worstQuery, queryBound)
        XCTAssertLessThanOrEqual(worstKey, keyBound)
        // Not vacuous: the bounds are far below a gradient that kept dP (scale * dP * k is of order 1 here).
        XCTAssertLessThan(queryBound, 1e-3)
        XCTAssertLessThan(keyBound, 1e-3)
        var largestScore = 0.0
        for head in 0..<4 {
            for i in 0..<n {
                var dot = 0.0
                for c in 0..<d { dot += Double(x.queries[0, head, i, c]) * Double(x.keys[0, head / group, i, c]) }
                largestScore = max(largestScore, abs(scale * dot))
            }
        }
        let weightError = 8 * u * max(1, largestScore)
        for kv in 0..<2 {
            for j in 0..<n {
                for c in 0..<dv {
                    let terms = (0..<group).map { Double(x.outputGradient[0, kv * group + $0, j, c]) }
                    let magnitude = terms.map(abs).reduce(0, +)
                    XCTAssertEqual(
                        Double(g.values[0, kv, j, c]), terms.reduce(0, +),
                        accuracy: (weightError + 2 * u) * magnitude)
                }
            }
        }
    }

    /// A query that sees no key gets zero gradients (and its keys get nothing from it); no NaN anywhere.
    func testRowsThatSeeNothingGetZeroGradients() throws {
        let x = try gradientInputs(
            queryHeads: 2, keyValueHeads: 2, queryLength: 9, keyLength: 20, headDimension: 8, seed: 4)
        // Queries 0..<3 see nothing; the rest see keys 0..<10.
        let mask = AttentionMask.custom { q, k in q >= 3 && k < 10 }
        try assertGradients(x, mask: mask)
        let forward = try partialAttention(queries: x.queries, keys: x.keys, values: x.values, mask: mask)
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
            let forward = try partialAttention(queries: x.queries, keys: x.keys, values: x.values, mask: mask)
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
        let forward = try partialAttention(queries: x.queries, keys: x.keys, values: x.values)
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
        func argument(options: AttentionOptions) -> String? {
            argument {
                try attentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values, result: forward,
                    outputGradient: x.outputGradient, options: options)
            }
        }
        var bias = AttentionOptions()
        bias.bias = try Tensor(zeros: [1, 1, 4, 5])
        XCTAssertEqual(argument(options: bias), "options.bias")
        XCTAssertEqual(
            argument {
                try attentionGradients(
                    queries: x.queries, keys: tokens(x.keys, 0..<5), values: x.values, result: forward,
                    outputGradient: x.outputGradient)
            }, "values")
    }

    /// [B, N, H, d] inputs and outputs (and the mixed case): the gradients are bitwise those of the same values in
    /// [B, H, N, d], returned in the input layout; an output gradient in the wrong layout is refused by name.
    func testModelLayoutsGiveTheSameGradients() throws {
        let x = try gradientInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 33, keyLength: 47, headDimension: 24, seed: 17)
        // [B, H, N, d] -> [B, N, H, d].
        func tokenMajor(_ t: Tensor) throws -> Tensor { swappingHeadsAndTokens(t) }
        var options = AttentionOptions(threads: 2)
        options.sinkLogits = [0.5, -1, 1, 0]
        let forward = try partialAttention(
            queries: x.queries, keys: x.keys, values: x.values, mask: .causal, options: options)
        let expected = try attentionGradients(
            queries: x.queries, keys: x.keys, values: x.values, result: forward, outputGradient: x.outputGradient,
            mask: .causal, options: options)
        for outputLayout in [TensorLayout.bnhd, .bhnd] {
            var tokenOptions = options
            tokenOptions.layout = .bnhd
            tokenOptions.outputLayout = outputLayout
            let (q, k, v) = (try tokenMajor(x.queries), try tokenMajor(x.keys), try tokenMajor(x.values))
            let result = try partialAttention(
                queries: q, keys: k, values: v, mask: .causal, options: tokenOptions)
            let dO = outputLayout == .bnhd ? try tokenMajor(x.outputGradient) : x.outputGradient
            let g = try attentionGradients(
                queries: q, keys: k, values: v, result: result, outputGradient: dO, mask: .causal,
                options: tokenOptions)
            XCTAssertEqual(bitwise(g.queries), bitwise(try tokenMajor(expected.queries)), "\(outputLayout)")
            XCTAssertEqual(bitwise(g.keys), bitwise(try tokenMajor(expected.keys)), "\(outputLayout)")
            XCTAssertEqual(bitwise(g.values), bitwise(try tokenMajor(expected.values)), "\(outputLayout)")
            XCTAssertEqual(g.sinkLogits.map(bitwise), expected.sinkLogits.map(bitwise), "\(outputLayout)")
            let wrong = outputLayout == .bnhd ? x.outputGradient : try tokenMajor(x.outputGradient)
            XCTAssertThrowsError(
                try attentionGradients(
                    queries: q, keys: k, values: v, result: result, outputGradient: wrong, mask: .causal,
                    options: tokenOptions)
            ) { error in
                XCTAssertEqual((error as? AttentionError)?.argument, "outputGradient")
            }
        }
        // Head-major inputs with a token-major output: only the output-gradient rows are staged.
        var mixed = options
        mixed.outputLayout = .bnhd
        let mixedForward = try partialAttention(
            queries: x.queries, keys: x.keys, values: x.values, mask: .causal, options: mixed)
        let m = try attentionGradients(
            queries: x.queries, keys: x.keys, values: x.values, result: mixedForward,
            outputGradient: try tokenMajor(x.outputGradient), mask: .causal, options: mixed)
        XCTAssertEqual(bitwise(m.queries), bitwise(expected.queries))
        XCTAssertEqual(bitwise(m.keys), bitwise(expected.keys))
        XCTAssertEqual(bitwise(m.values), bitwise(expected.values))
        XCTAssertEqual(m.sinkLogits.map(bitwise), expected.sinkLogits.map(bitwise))
    }
}
