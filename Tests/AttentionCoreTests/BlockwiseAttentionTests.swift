import AttentionCore
import XCTest
import _AttentionTestSupport

final class BlockwiseAttentionTests: XCTestCase {
    private func blockwise(_ queryBlock: Int? = nil, _ keyBlock: Int? = nil, threads: Int? = nil) -> AttentionOptions {
        AttentionOptions(kernel: .blockwise(queryBlock: queryBlock, keyBlock: keyBlock), threads: threads)
    }

    func testOddShapeGridMatchesReference() throws {
        try withEvery("headDimension", in: OddShapes.headDimensions) { d in
            try withEvery("lengths", in: OddShapes.lengths) { lengths in
                let heads = lengths.keys > 512 ? 1 : 2
                let inputs = try attentionInputs(
                    queryHeads: heads, queryLength: lengths.queries, keyLength: lengths.keys, headDimension: d,
                    seed: UInt64(d * 1000 + lengths.keys))
                try assertMatchesReference(inputs, options: blockwise())
                try assertMatchesReference(inputs, mask: .causal, options: blockwise())
            }
        }
    }

    func testBlockSizesMasksAndGroupings() throws {
        let masks: [(String, AttentionMask)] = [
            ("none", .none), ("causal", .causal), ("window", .window(left: 9, right: 3)),
            ("sinks", .sinks(count: 3, window: 11)), ("custom", .custom { q, k in (q + 2 * k) % 5 != 0 }),
            ("intersection", .intersection(.causal, .custom { _, k in k % 3 != 1 })),
        ]
        try withEvery("groups", in: [1, 2, 4, 8]) { group in
            let inputs = try attentionInputs(
                queryHeads: 8, keyValueHeads: 8 / group, queryLength: 45, keyLength: 70, headDimension: 19,
                valueDimension: 21, seed: UInt64(group))
            try withEvery("blocks", in: [(1, 1), (7, 7), (16, 16), (64, 64), (7, 64), (64, 16)]) { blocks in
                try withEvery("mask", in: masks.indices) { m in
                    try SweepContext.$entries.withValue(SweepContext.entries + [masks[m].0]) {
                        try assertMatchesReference(inputs, mask: masks[m].1, options: blockwise(blocks.0, blocks.1))
                    }
                }
            }
        }
    }
}

extension BlockwiseAttentionTests {
    private func run(
        _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), mask: AttentionMask = .none,
        _ options: AttentionOptions
    ) throws -> AttentionResult {
        try partialAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: options)
    }

    func testScoreOptionsWithMasksAndBlockSizes() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 37, keyLength: 70, headDimension: 20, seed: 21)
        let bias = try Tensor.randomNormal(shape: [2, 4, 37, 70], seed: 99)
        let broadcastBias = try Tensor.randomNormal(shape: [1, 1, 37, 70], seed: 98)
        let optionSets: [(String, AttentionOptions)] = [
            ("scale", AttentionOptions(scale: 0.7)),
            ("softcap", AttentionOptions(scale: 2, softcap: 3)),
            ("alibi", AttentionOptions(alibiSlopes: [0.5, 0.25, 0.125, 0.0625])),
            ("bias", AttentionOptions(bias: bias)),
            ("broadcastBias", AttentionOptions(bias: broadcastBias)),
            ("sinkLogits", AttentionOptions(sinkLogits: [0, 1, -2, 5])),
            (
                "everything",
                AttentionOptions(
                    softcap: 5, alibiSlopes: [0.1, 0.2, 0.3, 0.4], bias: bias, sinkLogits: [1, 1, 1, 1])
            ),
        ]
        let masks: [(String, AttentionMask)] = [
            ("none", .none), ("causal", .causal), ("window", .window(left: 6, right: 1)),
            ("sinks", .sinks(count: 2, window: 8)),
        ]
        try withEvery("options", in: optionSets.indices) { o in
            try withEvery("mask", in: masks.indices) { m in
                try withEvery("blocks", in: [(1, 7), (16, 16), (64, 64)]) { blocks in
                    try SweepContext.$entries.withValue(SweepContext.entries + [optionSets[o].0, masks[m].0]) {
                        var options = optionSets[o].1
                        options.kernel = .blockwise(queryBlock: blocks.0, keyBlock: blocks.1)
                        try assertMatchesReference(inputs, mask: masks[m].1, options: options)
                    }
                }
            }
        }
    }

    func testBitwiseIdenticalAcrossThreadCountsAndRuns() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 8, keyValueHeads: 2, queryLength: 150, keyLength: 190, headDimension: 40,
            seed: 5)
        try withEvery("mask", in: [AttentionMask.none, .causal, .window(left: 20, right: 5)].indices) { m in
            let mask = [AttentionMask.none, .causal, .window(left: 20, right: 5)][m]
            let reference = try run(inputs, mask: mask, blockwise(16, 32, threads: 1))
            for threads in [1, 2, 3, 7] {
                let again = try run(inputs, mask: mask, blockwise(16, 32, threads: threads))
                XCTAssertEqual(
                    bitwise(again.output), bitwise(reference.output), "threads=\(threads) \(SweepContext.description)")
                XCTAssertEqual(bitwise(again.logSumExp), bitwise(reference.logSumExp), "threads=\(threads)")
            }
        }
    }

    func testOutputDoesNotDependOnBlockSizesBeyondRounding() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 100, keyLength: 130, headDimension: 32, seed: 9)
        let reference = referenceAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal)
        let plain = plainFloat32Attention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal)
        let base = try run(inputs, mask: .causal, blockwise(64, 64)).output.scalars
        try withEvery("blocks", in: [(1, 1), (7, 7), (16, 64), (100, 130), (3, 200)]) { blocks in
            let other = try run(inputs, mask: .causal, blockwise(blocks.0, blocks.1)).output.scalars
            // Each is within the rule of the reference, so they are within twice the rule of each other.
            let check = toleranceCheck(kernel: other, reference: reference.output, plain: plain.output)
            XCTAssertTrue(check.passes, "\(check)")
            XCTAssertLessThanOrEqual(maxAbsoluteError(other, base.map(Double.init)), 2 * check.bound, "\(check)")
        }
    }

    func testMaskIdentitiesHoldBitwise() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 60, keyLength: 90, headDimension: 16, seed: 4)
        func output(_ mask: AttentionMask) throws -> Tensor { try run(inputs, mask: mask, blockwise(16, 16)).output }
        XCTAssertEqual(
            bitwise(try output(.window(left: 90, right: 0))), bitwise(try output(.causal)), "a window >= Nk is causal")
        XCTAssertEqual(
            bitwise(try output(.sinks(count: 0, window: 8))), bitwise(try output(.window(left: 7, right: 0))))
        XCTAssertEqual(bitwise(try output(.window(left: Int.max, right: Int.max))), bitwise(try output(.none)))
        XCTAssertEqual(bitwise(try output(.sinks(count: 90, window: 1))), bitwise(try output(.causal)))
    }

    func testMultiQueryEqualsMultiHeadWithReplicatedKeysAndValues() throws {
        let inputs = try attentionInputs(
            queryHeads: 8, keyValueHeads: 1, queryLength: 33, keyLength: 47, headDimension: 24, seed: 12)
        func replicate(_ t: Tensor) throws -> Tensor {
            try Tensor(shape: [1, 8, t.shape[2], t.shape[3]]) { i in t[0, 0, i[2], i[3]] }
        }
        let replicated = (inputs.queries, try replicate(inputs.keys), try replicate(inputs.values))
        let reference = referenceAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal)
        let plain = plainFloat32Attention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal)
        let multiQuery = try run(inputs, mask: .causal, blockwise()).output.scalars
        let multiHead = try run(replicated, mask: .causal, blockwise()).output.scalars
        for (name, output) in [("multiQuery", multiQuery), ("multiHead", multiHead)] {
            let check = toleranceCheck(kernel: output, reference: reference.output, plain: plain.output, context: name)
            XCTAssertTrue(check.passes, "\(check)")
        }
        let bound = toleranceCheck(kernel: multiHead, reference: reference.output, plain: plain.output).bound
        XCTAssertLessThanOrEqual(maxAbsoluteError(multiQuery, multiHead.map(Double.init)), 2 * bound)
    }

    func testMergingTwoHalvesEqualsTheWhole() throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 50, keyLength: 80, headDimension: 16, seed: 30)
        try withEvery("split", in: [0, 1, 40, 79, 80]) { split in
            for (maskName, mask) in [("none", AttentionMask.none), ("causal", .causal)] {
                let left = try run(inputs, mask: .intersection(mask, .custom { _, k in k < split }), blockwise())
                let right = try run(inputs, mask: .intersection(mask, .custom { _, k in k >= split }), blockwise())
                let merged = try mergeAttention(left, right)
                let reference = referenceAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
                let plain = plainFloat32Attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
                let output = toleranceCheck(
                    kernel: merged.output.scalars, reference: reference.output, plain: plain.output, context: maskName)
                let lse = toleranceCheck(
                    kernel: merged.logSumExp.scalars, reference: reference.logSumExp, plain: plain.logSumExp,
                    context: maskName)
                XCTAssertTrue(output.passes, "\(output)")
                XCTAssertTrue(lse.passes, "\(lse)")
            }
        }
        // Splitting the tensors themselves (no mask) gives the same answer.
        func slice(_ t: Tensor, _ range: Range<Int>) throws -> Tensor {
            try Tensor(shape: [t.shape[0], t.shape[1], range.count, t.shape[3]]) { i in
                t[i[0], i[1], range.lowerBound + i[2], i[3]]
            }
        }
        let first = try partialAttention(
            queries: inputs.queries, keys: try slice(inputs.keys, 0..<30), values: try slice(inputs.values, 0..<30))
        let second = try partialAttention(
            queries: inputs.queries, keys: try slice(inputs.keys, 30..<80), values: try slice(inputs.values, 30..<80))
        let whole = try attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values)
        XCTAssertLessThanOrEqual(
            maxAbsoluteError(try mergeAttention(first, second).output.scalars, whole.scalars.map(Double.init)), 1e-5)
    }

    func testMergeWithFullyMaskedRowsIsExact() throws {
        let inputs = try attentionInputs(queryHeads: 1, queryLength: 4, keyLength: 6, headDimension: 8, seed: 3)
        let some = try run(inputs, mask: .causal, blockwise())
        let nothing = try run(inputs, mask: .custom { _, _ in false }, blockwise())
        XCTAssertTrue(nothing.logSumExp.scalars.allSatisfy { $0 == -.infinity })
        XCTAssertEqual(try mergeAttention(some, nothing).output, some.output)
        XCTAssertEqual(try mergeAttention(nothing, some).logSumExp, some.logSumExp)
        let empty = try mergeAttention(nothing, nothing)
        XCTAssertEqual(empty.output, try Tensor(zeros: [1, 1, 4, 8]))
        XCTAssertTrue(empty.logSumExp.scalars.allSatisfy { $0 == -.infinity })
        XCTAssertThrowsError(
            try mergeAttention(
                some, AttentionResult(output: try Tensor(zeros: [1, 1, 4, 7]), logSumExp: some.logSumExp))
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "second.output")
        }
        XCTAssertThrowsError(
            try mergeAttention(AttentionResult(output: some.output, logSumExp: try Tensor(zeros: [1, 4])), some)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "first.logSumExp")
        }
    }

    func testNonFiniteValuesInMaskedKeysNeverReachTheOutput() throws {
        var inputs = try attentionInputs(queryHeads: 2, queryLength: 40, keyLength: 40, headDimension: 8, seed: 8)
        // Keys/values 30 and 35 are poisoned; under a causal mask rows < 30 never see them.
        for h in 0..<2 {
            inputs.keys[0, h, 35, 3] = .nan
            inputs.values[0, h, 30, 2] = .infinity
            inputs.values[0, h, 35, 0] = .nan
        }
        try withEvery("blocks", in: [(7, 7), (16, 16), (64, 64), (40, 40)]) { blocks in
            let result = try run(inputs, mask: .causal, blockwise(blocks.0, blocks.1))
            for h in 0..<2 {
                for i in 0..<30 {
                    for c in 0..<8 {
                        XCTAssertTrue(result.output[0, h, i, c].isFinite, "row \(i) \(SweepContext.description)")
                    }
                    XCTAssertTrue(result.logSumExp[0, h, i].isFinite)
                }
                XCTAssertTrue(result.output[0, h, 39, 0].isNaN, "a NaN key the row can see propagates")
            }
            try assertMatchesReference(inputs, mask: .causal, options: blockwise(blocks.0, blocks.1))
        }
    }

    func testFullyMaskedRowsGiveZeros() throws {
        // Nq > Nk under causal: the first Nq - Nk rows see no key.
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 50, keyLength: 20, headDimension: 8, seed: 2)
        try withEvery("blocks", in: [(1, 1), (16, 16), (64, 64)]) { blocks in
            let result = try run(inputs, mask: .causal, blockwise(blocks.0, blocks.1))
            for h in 0..<2 {
                for i in 0..<30 {
                    XCTAssertEqual(result.logSumExp[0, h, i], -.infinity)
                    for c in 0..<8 { XCTAssertEqual(result.output[0, h, i, c], 0) }
                }
            }
            XCTAssertFalse(result.output.scalars.contains { $0.isNaN })
            try assertMatchesReference(inputs, mask: .causal, options: blockwise(blocks.0, blocks.1))
        }
    }

    func testWritingIntoAnOutputEqualsReturningOne() throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 37, keyLength: 53, headDimension: 20, valueDimension: 12,
            seed: 9)
        let decodeInputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 3, keyLength: 700, headDimension: 20, valueDimension: 12,
            seed: 10)
        for (kernel, inputs) in [
            (AttentionKernel.blockwise(queryBlock: 7, keyBlock: 16), inputs), (.naive, inputs),
            (.decode(keysPerSplit: 64), decodeInputs),
        ] {
            let options = AttentionOptions(kernel: kernel, threads: 2)
            let expected = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options)
            // Old contents (here NaN) do not matter, and a tensor sharing the storage keeps its values.
            var output = try Tensor(shape: expected.shape, repeating: .nan)
            let alias = output
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options,
                into: &output)
            XCTAssertEqual(bitwise(output), bitwise(expected), "\(kernel)")
            XCTAssertTrue(alias.scalars.allSatisfy(\.isNaN), "\(kernel)")
            // Writing again into the same (now unshared) storage gives the same result.
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options,
                into: &output)
            XCTAssertEqual(bitwise(output), bitwise(expected), "\(kernel)")
        }
        var wrong = try Tensor(shape: [1, 4, 37, 13], repeating: 7)
        XCTAssertThrowsError(
            try attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values, into: &wrong)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "output")
            XCTAssertTrue("\(error)".contains("[1, 4, 37, 12]"), "\(error)")
        }
        XCTAssertEqual(wrong.scalars, [Float](repeating: 7, count: 4 * 37 * 13))
        // A naive call over its budget throws and leaves the output as it was.
        var kept = try Tensor(shape: [1, 4, 37, 12], repeating: 5)
        XCTAssertThrowsError(
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                options: AttentionOptions(kernel: .naive, naiveMemoryBudget: 16), into: &kept)
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "options.naiveMemoryBudget")
        }
        XCTAssertEqual(kept.shape, [1, 4, 37, 12])
        XCTAssertEqual(kept.scalars, [Float](repeating: 5, count: 4 * 37 * 12))
    }

    func testAutomaticPicksTheBlockwiseKernel() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 300, keyLength: 300, headDimension: 16, seed: 1)
        let automatic = try run(inputs, mask: .causal, AttentionOptions())
        let blockwise = try run(inputs, mask: .causal, blockwise())
        XCTAssertEqual(bitwise(automatic.output), bitwise(blockwise.output))
        // No N x N allocation: the workspace is far below the 300 x 300 score matrix of one head.
        XCTAssertLessThan(automatic.workspaceBytes, 300 * 300 * 4)
    }

    func testBlockSizeValidation() {
        let q = try! Tensor(zeros: [1, 1, 4, 4])
        for (kernel, argument) in [
            (AttentionKernel.blockwise(queryBlock: 0, keyBlock: 4), "options.kernel queryBlock"),
            (.blockwise(queryBlock: 4, keyBlock: -1), "options.kernel keyBlock"),
        ] {
            XCTAssertThrowsError(
                try attention(queries: q, keys: q, values: q, options: AttentionOptions(kernel: kernel))
            ) { error in
                XCTAssertEqual((error as? AttentionError)?.argument, argument)
                XCTAssertTrue("\(error)".contains(">= 1"), "\(error)")
            }
        }
    }
}

extension BlockwiseAttentionTests {
    func testOddShapeGridAcrossBlockSizes() throws {
        try withEvery("headDimension", in: [1, 3, 63, 80]) { d in
            try withEvery("lengths", in: OddShapes.lengths.filter { $0.keys < 1000 }) { lengths in
                let inputs = try attentionInputs(
                    queryHeads: 2, queryLength: lengths.queries, keyLength: lengths.keys, headDimension: d,
                    seed: UInt64(7 * d + lengths.queries))
                for mask in [AttentionMask.causal, .window(left: 13, right: 4)] {
                    let reference = referenceAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
                    let plain = plainFloat32Attention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
                    for block in OddShapes.blockSizes {
                        let result = try partialAttention(
                            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                            options: blockwise(block, block))
                        let context = "\(SweepContext.description) block=\(block) mask=\(mask)"
                        let output = toleranceCheck(
                            kernel: result.output.scalars, reference: reference.output, plain: plain.output,
                            context: context)
                        let lse = toleranceCheck(
                            kernel: result.logSumExp.scalars, reference: reference.logSumExp, plain: plain.logSumExp,
                            context: context)
                        XCTAssertTrue(output.passes, "\(output)")
                        XCTAssertTrue(lse.passes, "\(lse)")
                    }
                }
            }
        }
    }
}

/// Cases found in review: hostile tile sizes and non-finite values must behave the same under every tiling.
extension BlockwiseAttentionTests {
    func testHugeTileSizesAreClampedNotTrapped() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 10, keyLength: 12, headDimension: 4, seed: 1)
        let huge = try run(inputs, mask: .causal, blockwise(Int.max, Int.max))
        let clamped = try run(inputs, mask: .causal, blockwise(10, 12))
        XCTAssertEqual(bitwise(huge.output), bitwise(clamped.output))
        XCTAssertLessThan(huge.workspaceBytes, 1 << 20)
        let noQueries = try attentionInputs(queryHeads: 2, queryLength: 0, keyLength: 12, headDimension: 4, seed: 1)
        XCTAssertEqual(try run(noQueries, blockwise(Int.max, 1 << 40)).output.shape, [1, 2, 0, 4])
    }

    func testVisibleNaNValuePropagatesEvenWithUnderflowedWeight() throws {
        // Scores 100 and -100: the second key's weight e^-200 underflows to 0 in Float, but the key is visible,
        // so its NaN value must reach the output (the Float64 reference multiplies 1e-87 by NaN).
        let queries = try Tensor(shape: [1, 1, 1, 1], scalars: [100])
        let keys = try Tensor(shape: [1, 1, 2, 1], scalars: [1, -1])
        let values = try Tensor(shape: [1, 1, 2, 1], scalars: [1, .nan])
        let zeroBias = try Tensor(zeros: [1, 1, 1, 2])
        let variants: [(String, AttentionMask, AttentionOptions)] = [
            ("none", .none, blockwise()), ("zero bias", .none, AttentionOptions(bias: zeroBias)),
            ("custom", .custom { _, _ in true }, blockwise()), ("causal 1x1", .causal, blockwise(1, 1)),
            ("naive", .none, AttentionOptions(kernel: .naive)),
        ]
        for (name, mask, options) in variants {
            let output = try attention(queries: queries, keys: keys, values: values, mask: mask, options: options)
            XCTAssertTrue(output[0, 0, 0, 0].isNaN, name)
        }
        XCTAssertTrue(referenceAttention(queries: queries, keys: keys, values: values).output[0].isNaN)
    }

    func testKeyWithMinusInfinityScoreIsDroppedLikeTheReference() throws {
        // q . k = -inf for the second key: it counts as masked, so its NaN value stays out (as in the reference).
        let queries = try Tensor(shape: [1, 1, 1, 1], scalars: [-1])
        let keys = try Tensor(shape: [1, 1, 2, 1], scalars: [1, .infinity])
        let values = try Tensor(shape: [1, 1, 2, 1], scalars: [3, .nan])
        for options in [blockwise(), blockwise(1, 1), AttentionOptions(kernel: .naive)] {
            let output = try attention(queries: queries, keys: keys, values: values, options: options)
            XCTAssertEqual(output[0, 0, 0, 0], 3)
        }
        XCTAssertEqual(referenceAttention(queries: queries, keys: keys, values: values).output[0], 3)
    }

    func testNaNWithPayloadInAQueryStaysNaN() throws {
        var inputs = try attentionInputs(queryHeads: 1, queryLength: 3, keyLength: 5, headDimension: 4, seed: 2)
        inputs.queries[0, 0, 1, 2] = Float(nan: 0x1FF, signaling: false)
        let output = try run(inputs, blockwise()).output
        for c in 0..<4 { XCTAssertTrue(output[0, 0, 1, c].isNaN) }
        for c in 0..<4 { XCTAssertTrue(output[0, 0, 0, c].isFinite) }
    }
}
