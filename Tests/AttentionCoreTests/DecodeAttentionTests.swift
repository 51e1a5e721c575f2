import AttentionCore
import XCTest
import _AttentionTestSupport

final class DecodeAttentionTests: XCTestCase {
    private func decode(_ keysPerSplit: Int? = nil, threads: Int? = nil) -> AttentionOptions {
        AttentionOptions(kernel: .decode(keysPerSplit: keysPerSplit), threads: threads)
    }

    func testOddShapesGroupingsAndSplitsMatchReference() throws {
        try withEvery("headDimension", in: [1, 8, 63, 64, 80, 128]) { d in
            // (Nq, G, Nk): R = G * Nq rows of 1, 2, 5 (a four-row group and one row left over), 12, 14 and 16.
            let shapes = [(1, 1, 1), (1, 2, 239), (1, 5, 77), (3, 4, 1000), (7, 2, 150), (2, 8, 517), (1, 16, 130)]
            try withEvery("shape", in: shapes) { shape in
                let (nq, group, nk) = shape
                let inputs = try attentionInputs(
                    queryHeads: 2 * group, keyValueHeads: 2, queryLength: nq, keyLength: nk, headDimension: d,
                    valueDimension: d == 80 ? 24 : d, seed: UInt64(d * 100 + nk))
                try withEvery("keysPerSplit", in: [nil, 1, 100, 4096]) { split in
                    try assertMatchesReference(inputs, options: decode(split))
                    try assertMatchesReference(inputs, mask: .causal, options: decode(split))
                }
            }
        }
    }

    func testMasksAndScoreOptionsMatchReference() throws {
        let masks: [(String, AttentionMask)] = [
            ("window", .window(left: 40, right: 0)), ("sinks", .sinks(count: 3, window: 50)),
            ("custom", .custom { q, k in (q + 3 * k) % 7 != 0 }), ("causal", .causal),
        ]
        let inputs = try attentionInputs(
            queryHeads: 8, keyValueHeads: 2, queryLength: 3, keyLength: 301, headDimension: 32, seed: 5)
        let bias = try Tensor.randomNormal(shape: [1, 8, 3, 301], seed: 9)
        let optionSets: [(String, AttentionOptions)] = [
            ("softcap", AttentionOptions(softcap: 2)),
            ("alibi", AttentionOptions(alibiSlopes: (0..<8).map { 0.01 * Float($0 + 1) })),
            ("sinkLogits", AttentionOptions(sinkLogits: (0..<8).map { Float($0) - 3 })),
            ("bias", AttentionOptions(bias: bias)),
            (
                "headMasks",
                AttentionOptions(headMasks: (0..<8).map { $0 % 2 == 0 ? .none : .window(left: 9, right: 0) })
            ),
        ]
        try withEvery("mask", in: masks.indices) { m in
            try withEvery("options", in: optionSets.indices) { o in
                try withEvery("keysPerSplit", in: [nil, 64, 128]) { split in
                    var options = optionSets[o].1
                    options.kernel = .decode(keysPerSplit: split)
                    try SweepContext.$entries.withValue(SweepContext.entries + [masks[m].0, optionSets[o].0]) {
                        try assertMatchesReference(inputs, mask: masks[m].1, options: options)
                    }
                }
            }
        }
    }

    func testBitwiseIdenticalForEveryThreadCountAndRepeat() throws {
        let inputs = try attentionInputs(
            queryHeads: 32, keyValueHeads: 8, queryLength: 1, keyLength: 5000, headDimension: 64, seed: 3)
        let single = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: decode(threads: 1))
        for threads in [1, 2, 3, 8] {
            let other = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: decode(threads: threads))
            XCTAssertEqual(bitwise(other.output.scalars), bitwise(single.output.scalars), "threads \(threads)")
            XCTAssertEqual(bitwise(other.logSumExp.scalars), bitwise(single.logSumExp.scalars), "threads \(threads)")
        }
        // The default split of this shape really splits: 8 key/value heads want 8 splits of 5000 keys.
        let problem = try AttentionProblem(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .none, options: decode())
        XCTAssertEqual(decodeTiling(problem, keysPerSplit: nil).splitCount(keyLength: 5000), 8)
    }

    func testAutomaticPicksDecodeForShortQueriesOnly() throws {
        /// The kernel `.automatic` resolves to, by name.
        func resolved(queryHeads: Int, keyValueHeads: Int, queryLength: Int) throws -> String {
            let inputs = try attentionInputs(
                queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: queryLength, keyLength: 10,
                headDimension: 4, seed: 1)
            let problem = try AttentionProblem(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .none,
                options: AttentionOptions())
            switch AttentionKernel.automatic.resolved(for: problem) {
            case .decode: return "decode"
            case .blockwise: return "blockwise"
            case .naive: return "naive"
            }
        }
        XCTAssertEqual(try resolved(queryHeads: 32, keyValueHeads: 8, queryLength: 1), "decode")
        XCTAssertEqual(try resolved(queryHeads: 32, keyValueHeads: 8, queryLength: 4), "decode")
        XCTAssertEqual(try resolved(queryHeads: 32, keyValueHeads: 8, queryLength: 5), "blockwise")
        XCTAssertEqual(try resolved(queryHeads: 8, keyValueHeads: 8, queryLength: 16), "decode")
        XCTAssertEqual(try resolved(queryHeads: 8, keyValueHeads: 8, queryLength: 17), "blockwise")
    }

    func testDecodeRejectsTooManyRowsAndBadSplits() throws {
        let inputs = try attentionInputs(
            queryHeads: 8, keyValueHeads: 1, queryLength: 3, keyLength: 10, headDimension: 4, seed: 1)
        XCTAssertThrowsError(
            try attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: decode())
        ) { error in
            XCTAssertEqual(
                error as? AttentionError,
                .invalidValue(
                    argument: "options.kernel",
                    expected: ".decode only for (queryHeads / keyValueHeads) * queryLength <= 16",
                    actual: ".decode with 8 * 3 = 24 rows per key/value head"))
        }
        let small = try attentionInputs(queryHeads: 1, queryLength: 1, keyLength: 10, headDimension: 4, seed: 1)
        XCTAssertThrowsError(
            try attention(queries: small.queries, keys: small.keys, values: small.values, options: decode(0))
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "options.kernel keysPerSplit")
        }
    }

    func testNonFiniteValuesOnlyReachRowsThatSeeThem() throws {
        var inputs = try attentionInputs(queryHeads: 2, queryLength: 2, keyLength: 300, headDimension: 8, seed: 4)
        // Key 299 is visible to query 1 only (causal, bottom-right): its NaN must not reach query 0.
        for c in 0..<8 { inputs.values[0, 0, 299, c] = .nan }
        for split in [nil, 64] as [Int?] {
            let output = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: decode(split)
            )
            for c in 0..<8 {
                XCTAssertTrue(output[0, 0, 0, c].isFinite)
                XCTAssertTrue(output[0, 0, 1, c].isNaN)
                XCTAssertTrue(output[0, 1, 1, c].isFinite)
            }
        }
    }

    func testRowsWithoutVisibleKeysGiveZerosAcrossSplits() throws {
        let inputs = try attentionInputs(queryHeads: 4, queryLength: 2, keyLength: 700, headDimension: 8, seed: 6)
        // Query 0 sees nothing; query 1 sees keys 600..<700 only (the last split).
        let mask = AttentionMask.custom { q, k in q == 1 && k >= 600 }
        let result = try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: decode(128))
        for head in 0..<4 {
            XCTAssertEqual(result.logSumExp[0, head, 0], -.infinity)
            for c in 0..<8 { XCTAssertEqual(result.output[0, head, 0, c], 0) }
        }
        try assertMatchesReference(inputs, mask: mask, options: decode(128))
    }

    func testHugeFiniteValuesWhoseSumOverflowsStayExact() throws {
        // The finiteness probes sum floats: the output accumulator's 2e38 + 2e38 overflows, which sends the item
        // to the recomputation with per-tile value scans, and the scan's sum of four 1e38 overflows too, which sends
        // the tile down the exact quarantine path. The output (the average, 1e38) must still be finite and right.
        // (The unnormalized output accumulator itself holds sum(p * v) with p <= 1, so values within
        // Float.greatestFiniteMagnitude / Nk are safe; larger ones can overflow, as in any online-softmax kernel.)
        let queries = try Tensor(shape: [1, 1, 1, 2], repeating: 0)
        let keys = try Tensor(shape: [1, 1, 2, 2], repeating: 0)
        let values = try Tensor(shape: [1, 1, 2, 2], repeating: 1e38)
        for kernel in [AttentionKernel.decode(), .blockwise(), .naive] {
            let output = try attention(
                queries: queries, keys: keys, values: values, options: AttentionOptions(kernel: kernel))
            XCTAssertEqual(output.scalars, [1e38, 1e38], "\(kernel)")
        }
    }

    func testMaskedNaNInAFullTileOfASplitIsQuarantinedExactly() throws {
        // A whole 64-key tile of 64-wide values is copied for the quarantine; with key splits the copy and the tile's
        // weights must not share scratch.
        var inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 1, keyLength: 300, headDimension: 64, seed: 8)
        for c in 0..<64 { inputs.values[0, 1, 70, c] = .nan }
        let mask = AttentionMask.custom { _, k in k != 70 }
        for split in [nil, 128] as [Int?] {
            try assertMatchesReference(inputs, mask: mask, options: decode(split))
        }
    }
}
