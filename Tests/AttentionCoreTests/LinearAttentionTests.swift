import AttentionCore
import XCTest
import _AttentionTestSupport

final class LinearAttentionTests: XCTestCase {
    private let maps: [(String, FeatureMap)] = [
        ("identity", .identity), ("elu+1", .eluPlusOne), ("relu", .relu), ("taylor2", .taylor2),
        (
            "custom",
            .custom(outputDimension: 3) { x, y in
                // [sum, 1, |x0|]: d_phi differs from d.
                y[0] = x.reduce(0, +)
                y[1] = 1
                y[2] = abs(x[0])
            }
        ),
    ]

    private func assertMatches(
        _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), _ options: LinearAttentionOptions,
        initialState: LinearAttentionState? = nil, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let output = try linearAttentionAndState(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, initialState: initialState,
            options: options
        ).output
        let check = checkLinearOutput(
            output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options,
            initialState: initialState)
        XCTAssertTrue(check.passes, "\(check) \(SweepContext.description)", file: file, line: line)
    }

    func testEveryMapModeAndNormalizationMatchesReference() throws {
        try withEvery("map", in: maps.indices) { m in
            // Head dimensions below, at and above one 16-lane step of the element-wise maps; value dimensions that
            // reach the 32-column row kernel and leave a scalar tail.
            try withEvery("shape", in: [(1, 1, 1), (7, 5, 3), (130, 16, 16), (40, 21, 37)]) { shape in
                let (n, d, dv) = shape
                let inputs = try attentionInputs(
                    queryHeads: 4, keyValueHeads: 2, queryLength: n, keyLength: n,
                    headDimension: m == 3 ? Swift.min(d, 5) : d,
                    valueDimension: dv, seed: UInt64(n * 10 + m))
                // Normalizing divides by phi(q) . sum phi(k), which for sign-indefinite features (identity, this
                // custom map) can be arbitrarily close to 0: the result is then ill-conditioned and no summation order
                // is more right than another, so those maps are compared unnormalized. The normalization code does not
                // depend on the map and is checked with the positive maps.
                let positive = m == 1 || m == 2 || m == 3
                for causal in [false, true] {
                    for normalize in positive ? [false, true] : [false] {
                        for chunk in [1, 7, 64] {
                            let options = LinearAttentionOptions(
                                featureMap: maps[m].1, mask: causal ? .causal : .none, normalize: normalize,
                                chunkSize: chunk)
                            try SweepContext.$entries.withValue(
                                SweepContext.entries + [
                                    "\(maps[m].0) causal=\(causal) normalize=\(normalize) chunk=\(chunk)"
                                ]
                            ) { try assertMatches(inputs, options) }
                        }
                    }
                }
            }
        }
        // Non-causal with more keys than queries.
        let uneven = try attentionInputs(queryHeads: 2, queryLength: 9, keyLength: 150, headDimension: 8, seed: 3)
        try assertMatches(uneven, LinearAttentionOptions(featureMap: .eluPlusOne))
    }

    func testDecayMatchesReferenceForEveryChunkSize() throws {
        let inputs = try attentionInputs(
            queryHeads: 3, queryLength: 201, keyLength: 201, headDimension: 8, valueDimension: 12, seed: 4)
        try withEvery("chunk", in: [1, 3, 16, 64, 500]) { chunk in
            for normalize in [false, true] {
                let options = LinearAttentionOptions(
                    featureMap: .eluPlusOne, mask: .causal, normalize: normalize, decay: [1, 0.95, 0.5],
                    chunkSize: chunk
                )
                try assertMatches(inputs, options)
            }
        }
    }

    func testChunkwiseDoesNotDependOnChunkSizeAndStepsEqualChunks() throws {
        let n = 90
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: n, keyLength: n, headDimension: 8, seed: 5)
        let options = LinearAttentionOptions(featureMap: .eluPlusOne, mask: .causal, decay: [0.9, 1, 0.8, 0.99])
        let whole = try linearAttentionAndState(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
        for chunk in [1, 5, 64, 1000] {
            var chunked = options
            chunked.chunkSize = chunk
            let other = try linearAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: chunked)
            XCTAssertLessThan(
                maxAbsoluteError(other.scalars, whole.output.scalars.map(Double.init)), 1e-5, "chunk \(chunk)")
        }
        // Run 50 tokens chunkwise, then step through the rest one at a time: the same outputs and final state.
        // (The public path: a zero state continued by attend, then by step.)
        var state = try LinearAttentionState(batch: 1, heads: 4, featureDimension: 8, valueDimension: 8)
        let firstOutput = try state.attend(
            queries: tokens(inputs.queries, 0..<50), keys: tokens(inputs.keys, 0..<50),
            values: tokens(inputs.values, 0..<50), options: options)
        let first = (output: firstOutput, state: state)
        var outputs = [first.output]
        for t in 50..<n {
            outputs.append(
                try state.step(
                    query: tokens(inputs.queries, t..<(t + 1)), key: tokens(inputs.keys, t..<(t + 1)),
                    value: tokens(inputs.values, t..<(t + 1)), options: options))
        }
        let stepped = concatenateTokens(outputs)
        XCTAssertLessThan(maxAbsoluteError(stepped.scalars, whole.output.scalars.map(Double.init)), 1e-5)
        XCTAssertLessThan(
            maxAbsoluteError(state.keyValueSum.scalars, whole.state.keyValueSum.scalars.map(Double.init)), 1e-3)
        XCTAssertLessThan(maxAbsoluteError(state.keySum.scalars, whole.state.keySum.scalars.map(Double.init)), 1e-4)
        // And the second half from the first half's state matches the reference with that initial state.
        try assertMatches(
            (tokens(inputs.queries, 50..<n), tokens(inputs.keys, 50..<n), tokens(inputs.values, 50..<n)), options,
            initialState: first.state)
        try assertMatches(
            (tokens(inputs.queries, 50..<n), tokens(inputs.keys, 50..<n), tokens(inputs.values, 50..<n)),
            LinearAttentionOptions(featureMap: .eluPlusOne),
            initialState: try linearAttentionAndState(
                queries: tokens(inputs.queries, 0..<50), keys: tokens(inputs.keys, 0..<50),
                values: tokens(inputs.values, 0..<50), options: LinearAttentionOptions(featureMap: .eluPlusOne)
            ).state)
    }

    func testBitwiseIdenticalForEveryThreadCount() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 6, keyValueHeads: 3, queryLength: 100, keyLength: 100, headDimension: 16, seed: 6)
        for causal in [false, true] {
            var options = LinearAttentionOptions(mask: causal ? .causal : .none, threads: 1)
            let single = try linearAttentionAndState(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
            for threads in [2, 3, 7] {
                options.threads = threads
                let other = try linearAttentionAndState(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
                XCTAssertEqual(bitwise(other.output), bitwise(single.output))
                XCTAssertEqual(bitwise(other.state.keyValueSum), bitwise(single.state.keyValueSum))
                XCTAssertEqual(bitwise(other.state.keySum), bitwise(single.state.keySum))
            }
        }
    }

    func testTaylorFeaturesApproximateTheExponential() {
        let q: [Float] = [0.3, -0.2, 0.1], k: [Float] = [0.5, 0.4, -0.3]
        let phiQ = referenceFeatures(Double.self, .taylor2, q), phiK = referenceFeatures(Double.self, .taylor2, k)
        let dot = zip(q, k).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        XCTAssertEqual(FeatureMap.taylor2.featureDimension(inputDimension: 3), 13)
        XCTAssertEqual(zip(phiQ, phiK).reduce(0.0) { $0 + $1.0 * $1.1 }, 1 + dot + dot * dot / 2, accuracy: 1e-7)
    }

    func testZeroDenominatorGivesZeros() throws {
        // relu features of negative keys are all zero: nothing to normalize by.
        let queries = try Tensor(shape: [1, 1, 2, 2], repeating: 1)
        let keys = try Tensor(shape: [1, 1, 2, 2], repeating: -1)
        let values = try Tensor(shape: [1, 1, 2, 2], repeating: 5)
        let output = try linearAttention(
            queries: queries, keys: keys, values: values,
            options: LinearAttentionOptions(featureMap: .relu, mask: .causal))
        XCTAssertEqual(output.scalars, [0, 0, 0, 0])
    }

    func testBadInputThrowsNamingTheArgument() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 4, keyLength: 4, headDimension: 4, seed: 1)
        func argument(_ options: LinearAttentionOptions, queries: Tensor? = nil, state: LinearAttentionState? = nil)
            -> String?
        {
            do {
                _ = try linearAttentionAndState(
                    queries: queries ?? inputs.queries, keys: inputs.keys, values: inputs.values, initialState: state,
                    options: options)
                return nil
            } catch {
                return (error as? AttentionError)?.argument
            }
        }
        XCTAssertEqual(argument(LinearAttentionOptions(mask: .causal, decay: [0.5, .nan])), "options.decay[1]")
        XCTAssertEqual(argument(LinearAttentionOptions(mask: .causal, decay: [0, 1])), "options.decay[0]")
        XCTAssertEqual(argument(LinearAttentionOptions(mask: .causal, decay: [1.5, 1])), "options.decay[0]")
        XCTAssertEqual(argument(LinearAttentionOptions(mask: .causal, decay: [1])), "options.decay.count")
        XCTAssertEqual(argument(LinearAttentionOptions(decay: [1, 1])), "options.decay")
        XCTAssertEqual(argument(LinearAttentionOptions(mask: .causal, chunkSize: 0)), "options.chunkSize")
        XCTAssertEqual(argument(LinearAttentionOptions(threads: 0)), "options.threads")
        XCTAssertEqual(
            argument(LinearAttentionOptions(featureMap: .custom(outputDimension: 0) { _, _ in })),
            "options.featureMap outputDimension")
        XCTAssertEqual(
            argument(LinearAttentionOptions(mask: .causal), queries: try Tensor(zeros: [1, 2, 3, 4])), "queries")
        XCTAssertEqual(argument(LinearAttentionOptions(), queries: try Tensor(zeros: [1, 2, 4, 5])), "keys")
        let wrongFeatures = try LinearAttentionState(batch: 1, heads: 2, featureDimension: 13, valueDimension: 4)
        XCTAssertEqual(argument(LinearAttentionOptions(), state: wrongFeatures), "initialState")
        XCTAssertThrowsError(try LinearAttentionState(batch: 1, heads: 0, featureDimension: 4, valueDimension: 4)) {
            XCTAssertEqual(($0 as? AttentionError)?.argument, "heads")
        }
    }

    func testWritingIntoAnOutputEqualsReturningOne() throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 70, keyLength: 70, headDimension: 20, valueDimension: 12,
            seed: 8)
        for options in [
            LinearAttentionOptions(featureMap: .identity, normalize: false),
            LinearAttentionOptions(mask: .causal, decay: [0.9, 0.95, 0.99, 1]),
        ] {
            let expected = try linearAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
            // Old contents (here NaN) do not matter, and a tensor sharing the storage keeps its values.
            var output = try Tensor(shape: [1, 4, 70, 12], repeating: .nan)
            let alias = output
            try linearAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options, into: &output)
            XCTAssertEqual(bitwise(output), bitwise(expected))
            XCTAssertTrue(alias.scalars.allSatisfy(\.isNaN))
            // Writing again into the same storage gives the same result.
            try linearAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options, into: &output)
            XCTAssertEqual(bitwise(output), bitwise(expected))
        }
        var wrong = try Tensor(shape: [1, 4, 70, 13], repeating: 7)
        XCTAssertThrowsError(
            try linearAttention(queries: inputs.queries, keys: inputs.keys, values: inputs.values, into: &wrong)
        ) { error in
            XCTAssertTrue("\(error)".contains("output"), "\(error)")
            XCTAssertTrue("\(error)".contains("[1, 4, 70, 12]"), "\(error)")
        }
        XCTAssertEqual(wrong.scalars, [Float](repeating: 7, count: 4 * 70 * 13))
    }

    func testEmptySequencesGiveEmptyOrZeroOutputs() throws {
        let queries = try Tensor.randomNormal(shape: [1, 2, 3, 4], seed: 1)
        let noKeys = try Tensor(zeros: [1, 2, 0, 4])
        let output = try linearAttention(queries: queries, keys: noKeys, values: noKeys)
        XCTAssertEqual(output.scalars, [Float](repeating: 0, count: 24))
        let empty = try linearAttention(
            queries: noKeys, keys: noKeys, values: noKeys, options: LinearAttentionOptions(mask: .causal))
        XCTAssertEqual(empty.shape, [1, 2, 0, 4])
    }

    func testALaterKeyCannotPoisonAnEarlierRowAndEmptyBatchesWork() throws {
        // q0 . k1 = 1e40 overflows, and key 1 is after query 0: row 0 must stay q0 . k0 v0 = 1e20.
        let queries = try Tensor(shape: [1, 1, 2, 1], scalars: [1e20, 1])
        let keys = try Tensor(shape: [1, 1, 2, 1], scalars: [1, 1e20])
        let values = try Tensor(shape: [1, 1, 2, 1], scalars: [1, 1])
        let options = LinearAttentionOptions(featureMap: .identity, mask: .causal, normalize: false)
        let output = try linearAttention(queries: queries, keys: keys, values: values, options: options)
        XCTAssertEqual(output[0, 0, 0, 0], 1e20)
        // The same with a NaN in the later key.
        let nanKeys = try Tensor(shape: [1, 1, 2, 1], scalars: [1, .nan])
        XCTAssertEqual(
            try linearAttention(queries: queries, keys: nanKeys, values: values, options: options)[0, 0, 0, 0], 1e20)
        let empty = try Tensor(zeros: [0, 1, 4, 8])
        let result = try linearAttentionAndState(queries: empty, keys: empty, values: empty)
        XCTAssertEqual(result.output.shape, [0, 1, 4, 8])
        XCTAssertEqual(result.state.keyValueSum.shape, [0, 1, 8, 8])
    }
}
