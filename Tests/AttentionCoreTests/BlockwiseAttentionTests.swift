import AttentionCore
import XCTest
import _AttentionTestSupport

final class BlockwiseAttentionTests: XCTestCase {
    private func blockwise(_ queryBlock: Int? = nil, _ keyBlock: Int? = nil, threads: Int? = nil) -> AttentionOptions {
        AttentionOptions(kernel: .blockwise(queryBlock: queryBlock, keyBlock: keyBlock), threads: threads)
    }

    private func assertMatchesReference(
        _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), mask: AttentionMask = .none,
        options: AttentionOptions, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let checks = try checkAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: options)
        XCTAssertTrue(checks.output.passes, "\(checks.output)", file: file, line: line)
        XCTAssertTrue(checks.logSumExp.passes, "\(checks.logSumExp)", file: file, line: line)
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
