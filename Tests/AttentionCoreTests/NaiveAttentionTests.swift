import AttentionCore
import XCTest
import _AttentionTestSupport

final class NaiveAttentionTests: XCTestCase {
    private let naive = AttentionOptions(kernel: .naive)

    func testOddShapeGridMatchesReference() throws {
        try withEvery("headDimension", in: OddShapes.headDimensions) { d in
            try withEvery("lengths", in: OddShapes.lengths) { lengths in
                // Keep the Float64 reference quick on the largest shape: one head there, two elsewhere.
                let heads = lengths.keys > 512 ? 1 : 2
                let inputs = try attentionInputs(
                    queryHeads: heads, queryLength: lengths.queries, keyLength: lengths.keys,
                    headDimension: d,
                    seed: UInt64(d * 1000 + lengths.keys))
                try assertMatchesReference(inputs, options: naive)
                if lengths.keys <= 512 { try assertMatchesReference(inputs, mask: .causal, options: naive) }
            }
        }
    }

    func testSeedsAndBatch() throws {
        try withEvery("seed", in: 0..<4) { seed in
            let inputs = try attentionInputs(
                batch: 3, queryHeads: 2, queryLength: 17, keyLength: 33, headDimension: 24,
                valueDimension: 40,
                seed: UInt64(seed))
            try assertMatchesReference(inputs, options: naive)
        }
    }

    func testGroupedQueryMapping() throws {
        try withEvery("groups", in: [(8, 1), (8, 2), (8, 4), (6, 3), (4, 4)]) { heads in
            let inputs = try attentionInputs(
                batch: 2, queryHeads: heads.0, keyValueHeads: heads.1, queryLength: 19, keyLength: 45,
                headDimension: 16, seed: UInt64(heads.0 * 10 + heads.1))
            try assertMatchesReference(inputs, mask: .causal, options: naive)
            // Query head h must read KV head h / (Hq / Hkv): compare with MHA on replicated K/V.
            let group = heads.0 / heads.1
            func replicate(_ t: Tensor) throws -> Tensor {
                try Tensor(shape: [t.shape[0], heads.0, t.shape[2], t.shape[3]]) { i in
                    t[i[0], i[1] / group, i[2], i[3]]
                }
            }
            let grouped = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: naive)
            let replicated = try attention(
                queries: inputs.queries, keys: try replicate(inputs.keys),
                values: try replicate(inputs.values),
                options: naive)
            XCTAssertEqual(grouped, replicated, SweepContext.description)
        }
    }

    func testCausalIsBottomRightAligned() throws {
        // Nq < Nk (decode-like) and Nq > Nk (rows before the first key see nothing).
        try withEvery("lengths", in: [(5, 40), (40, 5), (1, 9), (9, 1)]) { lengths in
            let inputs = try attentionInputs(
                queryHeads: 2, queryLength: lengths.0, keyLength: lengths.1, headDimension: 8, seed: 3)
            try assertMatchesReference(inputs, mask: .causal, options: naive)
            let result = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
                options: naive)
            let offset = lengths.1 - lengths.0
            for i in 0..<lengths.0 where i + offset < 0 {
                XCTAssertEqual(result.logSumExp[0, 0, i], -.infinity, "row \(i) sees no key")
                for c in 0..<8 { XCTAssertEqual(result.output[0, 0, i, c], 0) }
            }
            if lengths.0 <= lengths.1 {
                // The last query sees every key, exactly as with no mask.
                let unmasked = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: naive)
                let last = lengths.0 - 1
                for c in 0..<8 { XCTAssertEqual(result.output[0, 1, last, c], unmasked[0, 1, last, c]) }
            }
        }
    }

    func testMasksOptionsAndTheirCombinations() throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 37, keyLength: 70, headDimension: 20, seed: 21)
        let masks: [AttentionMask] = [
            .window(left: 5, right: 2), .window(left: 0, right: 0), .sinks(count: 4, window: 9),
            .sinks(count: 0, window: 3),
            .custom { q, k in (q * 7 + k) % 3 != 0 },
            .intersection(.causal, .custom { _, k in k % 2 == 0 }),
        ]
        let bias = try Tensor.randomNormal(shape: [1, 4, 37, 70], seed: 99)
        let headBroadcastBias = try Tensor.randomNormal(shape: [1, 1, 37, 70], seed: 98)
        let optionSets: [(String, AttentionOptions)] = [
            ("plain", naive),
            ("scale", AttentionOptions(scale: 0.7, kernel: .naive)),
            ("softcap", AttentionOptions(scale: 2, softcap: 3, kernel: .naive)),
            ("alibi", AttentionOptions(alibiSlopes: [0.5, 0.25, 0.125, 0.0625], kernel: .naive)),
            ("bias", AttentionOptions(bias: bias, kernel: .naive)),
            ("broadcastBias", AttentionOptions(bias: headBroadcastBias, kernel: .naive)),
            ("sinkLogits", AttentionOptions(sinkLogits: [0, 1, -2, 5], kernel: .naive)),
            (
                "everything",
                AttentionOptions(
                    softcap: 5, alibiSlopes: [0.1, 0.2, 0.3, 0.4], bias: bias, sinkLogits: [1, 1, 1, 1],
                    kernel: .naive)
            ),
        ]
        try withEvery("options", in: optionSets.indices) { o in
            let options = optionSets[o].1
            try SweepContext.$entries.withValue(SweepContext.entries + [optionSets[o].0]) {
                try assertMatchesReference(inputs, mask: .none, options: options)
                try withEvery("mask", in: masks.indices) { m in
                    try assertMatchesReference(inputs, mask: masks[m], options: options)
                }
            }
        }
    }

    func testMaskIdentities() throws {
        let inputs = try attentionInputs(
            queryHeads: 2, queryLength: 30, keyLength: 50, headDimension: 12, seed: 4)
        func run(_ mask: AttentionMask) throws -> Tensor {
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                options: naive)
        }
        XCTAssertEqual(
            bitwise(try run(.window(left: 50, right: 0))), bitwise(try run(.causal)), "a window >= Nk is causal")
        XCTAssertEqual(bitwise(try run(.window(left: Int.max, right: Int.max))), bitwise(try run(.none)))
        XCTAssertEqual(
            bitwise(try run(.sinks(count: 0, window: 6))), bitwise(try run(.window(left: 5, right: 0))),
            "zero sinks is the window")
        XCTAssertEqual(bitwise(try run(.sinks(count: 50, window: 0))), bitwise(try run(.causal)))
        XCTAssertEqual(bitwise(try run(.custom { _, _ in true })), bitwise(try run(.none)))
        XCTAssertEqual(bitwise(try run(.intersection(.causal, .none))), bitwise(try run(.causal)))
    }

    func testNonFiniteValuesInMaskedKeysNeverReachTheOutput() throws {
        var inputs = try attentionInputs(
            queryHeads: 1, queryLength: 6, keyLength: 6, headDimension: 4, seed: 8)
        // Key 5 and value 5 are poisoned; under a causal mask only the last query sees them.
        inputs.keys[0, 0, 5, 1] = .nan
        inputs.values[0, 0, 5, 2] = .infinity
        inputs.values[0, 0, 4, 0] = .nan
        let biasScalars = (0..<36).map { $0 % 6 == 4 ? -Float.infinity : 0 }  // key 4 removed by a -inf bias
        let options = AttentionOptions(
            bias: try Tensor(shape: [1, 1, 6, 6], scalars: biasScalars), kernel: .naive)
        let result = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
            options: options)
        for i in 0..<5 {
            for c in 0..<4 { XCTAssertTrue(result.output[0, 0, i, c].isFinite, "row \(i)") }
        }
        XCTAssertTrue(result.output[0, 0, 5, 0].isNaN, "a NaN key the row can see propagates")
        try assertMatchesReference(inputs, mask: .causal, options: options)
    }

    func testFullyMaskedRowsGiveZerosAndNegativeInfinity() throws {
        let inputs = try attentionInputs(
            queryHeads: 2, queryLength: 5, keyLength: 7, headDimension: 3, seed: 2)
        let result = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values,
            mask: .custom { q, _ in q != 2 },
            options: naive)
        for h in 0..<2 {
            XCTAssertEqual(result.logSumExp[0, h, 2], -.infinity)
            for c in 0..<3 { XCTAssertEqual(result.output[0, h, 2, c], 0) }
        }
        XCTAssertFalse(result.output.scalars.contains { $0.isNaN })
        // With a sink logit the denominator is exp(sink): output still 0, LSE = sink.
        let withSink = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values,
            mask: .custom { q, _ in q != 2 },
            options: AttentionOptions(sinkLogits: [1.5, -3], kernel: .naive))
        XCTAssertEqual(withSink.logSumExp[0, 1, 2], -3)
        XCTAssertEqual(withSink.output[0, 1, 2, 0], 0)
    }

    func testEmptySequences() throws {
        let noKeys = try attentionInputs(
            queryHeads: 2, queryLength: 3, keyLength: 0, headDimension: 4, seed: 1)
        let result = try partialAttention(
            queries: noKeys.queries, keys: noKeys.keys, values: noKeys.values, options: naive)
        XCTAssertEqual(result.output, try Tensor(zeros: [1, 2, 3, 4]))
        XCTAssertTrue(result.logSumExp.scalars.allSatisfy { $0 == -.infinity })
        let noQueries = try attentionInputs(
            queryHeads: 2, queryLength: 0, keyLength: 5, headDimension: 4, seed: 1)
        XCTAssertEqual(
            try attention(
                queries: noQueries.queries, keys: noQueries.keys, values: noQueries.values, options: naive
            ).shape,
            [1, 2, 0, 4])
    }

    func testThreadCountDoesNotChangeBits() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 6, keyValueHeads: 3, queryLength: 40, keyLength: 77, headDimension: 32,
            seed: 6)
        let one = try attention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
            options: AttentionOptions(kernel: .naive, threads: 1))
        for threads in [2, 3, 8] {
            let many = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
                options: AttentionOptions(kernel: .naive, threads: threads))
            XCTAssertEqual(bitwise(one), bitwise(many), "threads=\(threads)")
        }
    }

    func testMemoryBudgetRefusesOversizedScoreMatrices() throws {
        let inputs = try attentionInputs(
            queryHeads: 2, queryLength: 100, keyLength: 100, headDimension: 4, seed: 1)
        // 2 heads * 100 rows * 112 padded keys * 4 bytes = 89,600 bytes.
        var options = AttentionOptions(kernel: .naive, naiveMemoryBudget: 89_599)
        XCTAssertThrowsError(
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
        ) { error in
            XCTAssertEqual(
                error as? AttentionError,
                .memoryBudgetExceeded(
                    argument: "options.naiveMemoryBudget", requiredBytes: 89_600, budgetBytes: 89_599))
            XCTAssertTrue("\(error)".contains("needs 89600 bytes"), "\(error)")
        }
        options.naiveMemoryBudget = 89_600
        let result = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
        XCTAssertGreaterThanOrEqual(result.workspaceBytes, 89_600)
        // A huge shape is refused before anything is allocated (the default budget is 4 GiB).
        let q = try Tensor(zeros: [1, 1, 40_000, 1])
        let k = try Tensor(zeros: [1, 1, 40_000, 1])
        XCTAssertThrowsError(try attention(queries: q, keys: k, values: k, options: naive)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "options.naiveMemoryBudget")
        }
    }
}
