import AttentionCore
import XCTest
import _AttentionTestSupport

/// Defined answers at the edges, for every softmax kernel.
final class EdgeCaseTests: XCTestCase {
    private let kernels: [AttentionKernel] = [.naive, .blockwise(), .blockwise(queryBlock: 3, keyBlock: 5), .decode()]

    private func run(
        _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), _ kernel: AttentionKernel,
        mask: AttentionMask = .none
    ) throws -> AttentionResult {
        try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
            options: AttentionOptions(kernel: kernel))
    }

    func testEmptySequences() throws {
        for kernel in kernels {
            let noQueries = try run(
                try attentionInputs(queryHeads: 2, queryLength: 0, keyLength: 5, headDimension: 4, seed: 1), kernel)
            XCTAssertEqual(noQueries.output.shape, [1, 2, 0, 4])
            let noKeys = try run(
                try attentionInputs(queryHeads: 2, queryLength: 3, keyLength: 0, headDimension: 4, seed: 1), kernel)
            XCTAssertEqual(noKeys.output.scalars, [Float](repeating: 0, count: 24), "\(kernel)")
            XCTAssertEqual(noKeys.logSumExp.scalars, [Float](repeating: -.infinity, count: 6), "\(kernel)")
        }
    }

    func testSingleTokensAndExtremeHeadDimensions() throws {
        for kernel in kernels {
            for (n, d) in [(1, 1), (1, 512), (5, 512), (9, 1)] {
                let inputs = try attentionInputs(
                    queryHeads: 2, queryLength: n, keyLength: n, headDimension: d, seed: UInt64(d))
                try assertMatchesReference(inputs, mask: .causal, options: AttentionOptions(kernel: kernel))
            }
        }
    }

    func testCausalWithMoreQueriesThanKeysGivesZerosForRowsWithoutKeys() throws {
        // Bottom-right alignment: with Nq = 6 and Nk = 4, queries 0 and 1 see no key.
        let inputs = try attentionInputs(queryHeads: 1, queryLength: 6, keyLength: 4, headDimension: 8, seed: 2)
        for kernel in kernels {
            let result = try run(inputs, kernel, mask: .causal)
            for q in 0..<2 {
                XCTAssertEqual(result.logSumExp[0, 0, q], -.infinity)
                for c in 0..<8 { XCTAssertEqual(result.output[0, 0, q, c], 0) }
            }
            try assertMatchesReference(inputs, mask: .causal, options: AttentionOptions(kernel: kernel))
        }
    }

    func testAllKeysMaskedAndASingleVisibleKey() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 3, keyLength: 40, headDimension: 8, seed: 3)
        for kernel in kernels {
            let none = try run(inputs, kernel, mask: .custom { _, _ in false })
            XCTAssertEqual(none.output.scalars, [Float](repeating: 0, count: 48))
            XCTAssertEqual(none.logSumExp.scalars, [Float](repeating: -.infinity, count: 6))
            // Only key 17 visible: the output is its value row exactly (weight 1).
            let one = try run(inputs, kernel, mask: .custom { _, k in k == 17 })
            for head in 0..<2 {
                for q in 0..<3 {
                    for c in 0..<8 {
                        XCTAssertEqual(one.output[0, head, q, c], inputs.values[0, head, 17, c], "\(kernel)")
                    }
                }
            }
        }
    }

    func testScoresOfPlusMinusOneE30StayFinite() throws {
        // q . k = +-1e30 (times the scale): the softmax is one-hot on the largest score, finite.
        let d = 4
        let queries = try Tensor(shape: [1, 1, 2, d]) { i in i[3] == 0 ? (i[2] == 0 ? 1e15 : -1e15) : 0 }
        let keys = try Tensor(shape: [1, 1, 3, d]) { i in i[3] == 0 ? [1e15, -1e15, 0.5e15][i[2]] : 0 }
        let values = try Tensor(shape: [1, 1, 3, d]) { i in Float(10 * i[2] + i[3]) }
        for kernel in kernels {
            let output = try attention(
                queries: queries, keys: keys, values: values, options: AttentionOptions(kernel: kernel))
            XCTAssertTrue(output.scalars.allSatisfy(\.isFinite), "\(kernel): \(output)")
            // Query 0 (+1e15) picks key 0; query 1 (-1e15) picks key 1.
            for c in 0..<d {
                XCTAssertEqual(output[0, 0, 0, c], Float(c))
                XCTAssertEqual(output[0, 0, 1, c], Float(10 + c))
            }
        }
    }

    func testLogitsNearTheLargestFloatStayFiniteWhereTheMathIs() throws {
        let inputs = try attentionInputs(queryHeads: 1, queryLength: 2, keyLength: 6, headDimension: 4, seed: 4)
        let big = Float.greatestFiniteMagnitude
        // Row 0: key 3 gets +3e38 (one-hot on it). Row 1: every key but 5 gets -max (a "finfo.min" mask).
        let bias = try Tensor(shape: [1, 1, 2, 6]) { i in
            i[2] == 0 ? (i[3] == 3 ? 3e38 : 0) : (i[3] == 5 ? 0 : -big)
        }
        for kernel in kernels {
            let options = AttentionOptions(bias: bias, kernel: kernel)
            let result = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
            for c in 0..<4 {
                XCTAssertEqual(result.output[0, 0, 0, c], inputs.values[0, 0, 3, c], "\(kernel)")
                XCTAssertEqual(result.output[0, 0, 1, c], inputs.values[0, 0, 5, c], "\(kernel)")
            }
            XCTAssertTrue(result.logSumExp.scalars.allSatisfy(\.isFinite), "\(kernel): \(result.logSumExp)")
            XCTAssertEqual(Double(result.logSumExp[0, 0, 0]), 3e38, accuracy: 1e32)
            // A row masked everywhere with -max still has finite logits: the softmax is over them, not empty.
            let everywhere = try Tensor(shape: [1, 1, 2, 6], repeating: -big)
            let masked = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                options: AttentionOptions(bias: everywhere, kernel: kernel))
            XCTAssertTrue(masked.scalars.allSatisfy(\.isFinite), "\(kernel): \(masked)")
            try assertMatchesReference(inputs, options: AttentionOptions(bias: everywhere, kernel: kernel))
            // A sink logit of 3e38 takes all the weight: zeros out, log-sum-exp 3e38.
            let sunk = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                options: AttentionOptions(sinkLogits: [3e38], kernel: kernel))
            XCTAssertEqual(sunk.output.scalars, [Float](repeating: 0, count: 8), "\(kernel)")
            XCTAssertEqual(Double(sunk.logSumExp[0, 0, 1]), 3e38, accuracy: 1e32)
        }
    }

    func testNonFiniteKeysAndValuesHiddenByAPerHeadMaskNeverReachThatHead() throws {
        // Keys 3 and 40 of both key/value heads hold NaN and infinity, their values infinity and NaN. Three query
        // heads hide them by their own masks (a window, sinks, a predicate): their rows are finite and match the
        // reference. Query head 1 sees them: its rows are NaN, so the masks are what keeps the others clean.
        for (queryLength, kernels) in [
            (9, [AttentionKernel.naive, .blockwise(), .blockwise(queryBlock: 2, keyBlock: 8)]),
            (1, [.decode(), .decode(keysPerSplit: 16)]),
        ] {
            var inputs = try attentionInputs(
                queryHeads: 4, keyValueHeads: 2, queryLength: queryLength, keyLength: 71, headDimension: 13, seed: 43)
            for h in 0..<2 {
                inputs.keys[0, h, 3, 5] = .nan
                inputs.keys[0, h, 40, 0] = .infinity
                inputs.values[0, h, 3, 2] = .infinity
                inputs.values[0, h, 40, 7] = .nan
            }
            let headMasks: [AttentionMask] = [
                .window(left: 2, right: 0), .none, .sinks(count: 2, window: 5), .custom { _, j in j != 3 && j != 40 },
            ]
            for kernel in kernels {
                let options = AttentionOptions(headMasks: headMasks, kernel: kernel)
                let output = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
                for head in 0..<4 {
                    for i in 0..<queryLength {
                        let row = (0..<13).map { output[0, head, i, $0] }
                        if head == 1 {
                            XCTAssertTrue(row.allSatisfy(\.isNaN), "\(kernel): head 1 sees the NaN key")
                        } else {
                            XCTAssertTrue(row.allSatisfy(\.isFinite), "\(kernel): head \(head) row \(i)")
                        }
                    }
                }
                try assertMatchesReference(inputs, options: options)
            }
        }
    }

    func testOnlyNaiveAllocatesInProportionToTheScoreMatrix() throws {
        // The same call at N and 8N (4N for decode): the blockwise and decode kernels' workspace does not grow
        // (decode's split partials stop growing once the keys fill its ~64 work items), naive's grows with Nq * Nk.
        func workspace(_ n: Int, _ queries: Int, _ kernel: AttentionKernel) throws -> Int {
            let inputs = try attentionInputs(
                queryHeads: 2, queryLength: queries, keyLength: n, headDimension: 16, seed: 1)
            return try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
                options: AttentionOptions(kernel: kernel, threads: 2)
            ).workspaceBytes
        }
        XCTAssertEqual(try workspace(256, 256, .blockwise()), try workspace(2048, 2048, .blockwise()))
        XCTAssertEqual(try workspace(16_384, 1, .decode()), try workspace(65_536, 1, .decode()))
        XCTAssertGreaterThan(try workspace(2048, 2048, .naive), 50 * (try workspace(256, 256, .naive)))
    }
}
