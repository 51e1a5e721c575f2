import Attention
import Foundation
import XCTest

/// The README's usage example, verbatim between the markers, so the documentation always compiles and runs.
final class ReadmeExampleTests: XCTestCase {
    func testReadmeExample() throws {
        // README example begin
        // [batch, heads, sequence, headDimension]; 8 query heads share 2 key/value heads (grouped-query attention)
        let queries = try Tensor.randomNormal(shape: [1, 8, 256, 64], seed: 1)
        let keys = try Tensor.randomNormal(shape: [1, 2, 256, 64], seed: 2)
        let values = try Tensor.randomNormal(shape: [1, 2, 256, 64], seed: 3)

        let output = try attention(queries: queries, keys: keys, values: values, mask: .causal)
        print(output.shape)  // [1, 8, 256, 64]

        var options = AttentionOptions(softcap: 30, threads: 2)
        options.sinkLogits = [Float](repeating: 0, count: 8)  // gpt-oss style learned sinks
        let windowed = try partialAttention(
            queries: queries, keys: keys, values: values, mask: .window(left: 63, right: 0),
            options: options)
        print(windowed.logSumExp.shape, windowed.workspaceBytes)  // [1, 8, 256] and the scratch bytes used

        // Decoding: keep keys and values in a cache and attend one new token at a time
        var cache = try KVCache(keyValueHeads: 2, headDimension: 64)
        try cache.append(keys: keys, values: values)  // the prompt's 256 tokens
        let nextQuery = try Tensor.randomNormal(shape: [1, 8, 1, 64], seed: 4)
        let next = try cache.attention(queries: nextQuery)  // [1, 8, 1, 64], split-KV decode kernel

        // StreamingLLM: 4 sink tokens + a 1020-token window, in a cache of fixed size
        var stream = try StreamingKVCache(
            sinks: SinkTokens(count: 4, window: 1020), keyValueHeads: 2, headDimension: 64)
        let streamed = try stream.attend(queries: queries, keys: keys, values: values)  // [1, 8, 256, 64]

        // Prompts of 5, 17 and 2 tokens packed without padding: [24, heads, 64], causal per prompt
        let prompts = try PackedSequences(lengths: [5, 17, 2])
        let packedQueries = try Tensor.randomNormal(shape: [24, 8, 64], seed: 6)
        let packedKeys = try Tensor.randomNormal(shape: [24, 2, 64], seed: 7)
        let packed = try packedAttention(
            queries: packedQueries, keys: packedKeys, values: packedKeys, sequences: prompts, mask: .causal)
        // packed.output: [24, 8, 64]; packed.logSumExp: [24, 8]

        // A padded encoder batch: sentences of 12, 8, 43 and 4 tokens in one [4, heads, 43, 64] tensor
        let sentences = try Tensor.randomNormal(shape: [4, 8, 43, 64], seed: 5)
        let padding = SequencePadding.lengths([12, 8, 43, 4])
        let encoded = try attention(
            queries: sentences, keys: sentences, values: sentences,
            options: AttentionOptions(keyPadding: padding, queryPadding: padding))  // padding rows: zeros, not computed

        // Training: keep the forward's result (output + log-sum-exp), then take the gradients from it
        let forward = try partialAttention(queries: queries, keys: keys, values: values, mask: .causal)
        let outputGradient = try Tensor.randomNormal(shape: [1, 8, 256, 64], seed: 8)  // dL/d(output), from above
        let gradients = try attentionGradients(
            queries: queries, keys: keys, values: values, result: forward, outputGradient: outputGradient,
            mask: .causal)  // .queries [1, 8, 256, 64]; .keys, .values [1, 2, 256, 64] (summed over each group)
        // README example end
        XCTAssertEqual(encoded.shape, [4, 8, 43, 64])
        XCTAssertEqual(gradients.queries.shape, [1, 8, 256, 64])
        XCTAssertEqual(gradients.keys.shape, [1, 2, 256, 64])
        XCTAssertEqual(gradients.values.shape, [1, 2, 256, 64])
        XCTAssertEqual(packed.output.shape, [24, 8, 64])
        XCTAssertEqual(packed.logSumExp.shape, [24, 8])
        XCTAssertEqual(output.shape, [1, 8, 256, 64])
        XCTAssertEqual(windowed.logSumExp.shape, [1, 8, 256])
        XCTAssertEqual(next.shape, [1, 8, 1, 64])
        XCTAssertEqual(streamed.shape, [1, 8, 256, 64])
        XCTAssertEqual(stream.count, 256)
    }

    /// The README's Swift block must be this test's body, line for line (indentation aside).
    func testReadmeShowsThisExample() throws {
        let source = try String(contentsOfFile: #filePath, encoding: .utf8)
        let readmePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md").path
        let readme = try String(contentsOfFile: readmePath, encoding: .utf8)
        let begin = "// README example " + "begin\n", end = "// README example " + "end"
        let body = try XCTUnwrap(
            source.components(separatedBy: begin).dropFirst().first?.components(separatedBy: end).first)
        let lines = body.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let block = try XCTUnwrap(
            readme.components(separatedBy: "```swift\nimport Attention\n").dropFirst().first?.components(
                separatedBy: "```"
            ).first)
        let readmeLines = block.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
            !$0.isEmpty
        }
        XCTAssertEqual(readmeLines, lines)
    }
}
