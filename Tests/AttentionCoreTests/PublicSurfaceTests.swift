// The 0.2 spellings (CHANGELOG.md): partial results as Codable values merged across processes, the renamed entry
// points, and the deprecated aliases that still forward to them.

import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

final class PublicSurfaceTests: XCTestCase {
    private func keys(_ tensor: Tensor, _ range: Range<Int>) -> Tensor { tokens(tensor, range) }

    /// Two "processes" each attend over their own key shard, send the partial result as JSON, and the receiver's
    /// merge equals attention over all keys (checked against the Float64 reference). Query 0 sees no key of the
    /// second shard, so its log-sum-exp there is -infinity and must survive the encoding.
    func testPartialResultsMergedAcrossAnEncodingEqualTheReference() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 5, keyLength: 13, headDimension: 24, seed: 71)
        let split = 7
        let encoder = JSONEncoder()
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "+inf", negativeInfinity: "-inf", nan: "nan")
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "+inf", negativeInfinity: "-inf", nan: "nan")
        let first = try partialAttention(
            queries: inputs.queries, keys: keys(inputs.keys, 0..<split), values: keys(inputs.values, 0..<split))
        let second = try partialAttention(
            queries: inputs.queries, keys: keys(inputs.keys, split..<13), values: keys(inputs.values, split..<13),
            mask: .custom { query, _ in query != 0 })
        XCTAssertEqual(second.logSumExp[0, 0, 0], -.infinity)
        let received = try [first, second].map {
            try decoder.decode(AttentionResult.self, from: encoder.encode($0))
        }
        XCTAssertEqual(received[0].output, first.output)
        XCTAssertEqual(received[1].logSumExp, second.logSumExp)
        let merged = try mergeAttention(received[0], received[1])
        let check = checkOutput(
            merged.output, queries: inputs.queries, keys: inputs.keys, values: inputs.values,
            mask: .custom { query, key in query != 0 || key < split })
        XCTAssertTrue(check.passes, "\(check)")
    }

    func testDecodingRejectsTensorsWhoseShapeAndElementsDisagree() throws {
        func argument(_ json: String, as type: any Decodable.Type) -> String? {
            do {
                _ = try JSONDecoder().decode(type, from: Data(json.utf8))
                return nil
            } catch {
                return (error as? AttentionError)?.argument
            }
        }
        XCTAssertEqual(argument(#"{"shape": [2, 2], "scalars": [1, 2, 3]}"#, as: Tensor.self), "scalars.count")
        XCTAssertEqual(argument(#"{"shape": [-1], "scalars": []}"#, as: Tensor.self), "shape")
        let output = #"{"shape": [1, 1, 2, 1], "scalars": [1, 2]}"#
        XCTAssertEqual(
            argument(
                #"{"output": \#(output), "logSumExp": {"shape": [1, 1, 3], "scalars": [0, 0, 0]}}"#,
                as: AttentionResult.self), "logSumExp")
        XCTAssertNil(
            argument(
                #"{"output": \#(output), "logSumExp": {"shape": [1, 1, 2], "scalars": [0, 0]}}"#,
                as: AttentionResult.self))
    }

    func testCacheErrorsNameTheLabelTheCallerWrote() {
        for make in [
            { _ = try KVCache(keyValueHeads: 1, headDimension: 0) },
            { _ = try PagedKVCache(blockCount: 1, keyValueHeads: 1, headDimension: 0) },
        ] as [() throws -> Void] {
            XCTAssertThrowsError(try make()) { XCTAssertEqual(($0 as? AttentionError)?.argument, "headDimension") }
        }
    }

    func testLinearAttentionTakesTheMaskVocabulary() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 9, keyLength: 9, headDimension: 4, seed: 72)
        let causal = try linearAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values,
            options: LinearAttentionOptions(mask: .causal))
        let full = try linearAttention(queries: inputs.queries, keys: inputs.keys, values: inputs.values)
        // Query 0 sees only key 0 under the causal mask; every key without it.
        XCTAssertNotEqual(causal, full)
        XCTAssertEqual(LinearAttentionOptions().mask, .none)
    }

    /// The deprecated spellings forward to the new ones bit for bit (this test is itself deprecated, so that using
    /// them here does not warn).
    @available(*, deprecated)
    func testDeprecatedSpellingsForwardToTheNewNames() throws {
        let inputs = try attentionInputs(
            queryHeads: 2, queryLength: 6, keyLength: 11, headDimension: 8, seed: 73)
        let (q, k, v) = inputs
        XCTAssertEqual(
            try attentionWithLogSumExp(queries: q, keys: k, values: v, mask: .causal).output,
            try partialAttention(queries: q, keys: k, values: v, mask: .causal).output)
        let stored = try [q, k, v].map { try StoredTensor($0, format: .float16) }
        XCTAssertEqual(
            try attentionWithLogSumExp(queries: stored[0], keys: stored[1], values: stored[2]).logSumExp,
            try partialAttention(queries: stored[0], keys: stored[1], values: stored[2]).logSumExp)
        let layout = try BlockSparseLayout.local(length: 11, blockSize: 4, windowBlocks: 1, mask: .none)
        let square = try attentionInputs(queryHeads: 2, queryLength: 11, keyLength: 11, headDimension: 8, seed: 74)
        XCTAssertEqual(
            try blockSparseAttentionWithLogSumExp(
                queries: square.queries, keys: square.keys, values: square.values, layout: layout
            ).output,
            try partialBlockSparseAttention(
                queries: square.queries, keys: square.keys, values: square.values, layout: layout
            ).output)
        XCTAssertEqual(
            try topKAttention(queries: q, keys: k, values: v, k: 3),
            try topKAttention(queries: q, keys: k, values: v, keysPerQuery: 3))
        XCTAssertEqual(
            try BlockSparseLayout.topK(queries: square.queries, keys: square.keys, blockSize: 4, k: 1),
            try BlockSparseLayout.topK(
                queries: square.queries, keys: square.keys, blockSize: 4, keyBlocksPerQuery: 1))
        XCTAssertEqual(
            try BlockSparseLayout.topK(queries: square.queries, keys: square.keys, blockSize: 4, k: 1, causal: true),
            try BlockSparseLayout.topK(
                queries: square.queries, keys: square.keys, blockSize: 4, keyBlocksPerQuery: 1, mask: .causal))
        for causal in [false, true] {
            let mask: AttentionMask = causal ? .causal : .none
            XCTAssertEqual(
                try BlockSparseLayout.local(length: 22, blockSize: 4, windowBlocks: 1, causal: causal),
                try BlockSparseLayout.local(length: 22, blockSize: 4, windowBlocks: 1, mask: mask))
            XCTAssertEqual(
                try BlockSparseLayout.global(length: 22, blockSize: 4, globalBlocks: [2], causal: causal),
                try BlockSparseLayout.global(length: 22, blockSize: 4, globalBlocks: [2], mask: mask))
            XCTAssertEqual(
                try BlockSparseLayout.strided(length: 22, blockSize: 4, stride: 2, offsets: [0, 1], causal: causal),
                try BlockSparseLayout.strided(length: 22, blockSize: 4, stride: 2, offsets: [0, 1], mask: mask))
            XCTAssertEqual(
                try BlockSparseLayout.bigBird(
                    length: 22, blockSize: 4, windowBlocks: 1, globalBlocks: [0], random: 1, seed: 5, causal: causal),
                try BlockSparseLayout.bigBird(
                    length: 22, blockSize: 4, windowBlocks: 1, globalBlocks: [0], random: 1, seed: 5, mask: mask))
        }
        var cache = try KVCache(keyValueHeads: 2, headDimension: 8)
        try cache.append(keys: k, values: v)
        XCTAssertEqual(
            try cache.attentionWithLogSumExp(queries: tokens(q, 0..<1)).output,
            try cache.partialAttention(queries: tokens(q, 0..<1)).output)

        let options = LinearAttentionOptions(causal: true)
        XCTAssertEqual(options.mask, .causal)
        var changed = LinearAttentionOptions()
        changed.causal = true
        XCTAssertEqual(changed.mask, .causal)
        XCTAssertTrue(changed.causal)
        changed.causal = false
        XCTAssertEqual(changed.mask, .none)
        let old = try linearAttentionWithState(queries: q, keys: k, values: v, options: LinearAttentionOptions())
        var state = try LinearAttentionState(batch: 1, heads: 2, featureDimension: 8, valueDimension: 8)
        XCTAssertEqual(old.output, try state.attend(queries: q, keys: k, values: v))
        XCTAssertEqual(old.state, state)
    }
}
