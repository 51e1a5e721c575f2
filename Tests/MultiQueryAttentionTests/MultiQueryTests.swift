import MultiQueryAttention
import XCTest
import _AttentionTestSupport

final class MultiQueryTests: XCTestCase {
    func testEqualsMultiHeadAttentionWithReplicatedKeysAndValues() throws {
        let heads = 5
        let mqa = try MultiQuery(queryHeads: heads)
        let inputs = try attentionInputs(
            queryHeads: heads, keyValueHeads: 1, queryLength: 29, keyLength: 64, headDimension: 16, seed: 3)
        let replicatedKeys = try Tensor(shape: [1, heads, 64, 16]) { i in inputs.keys[0, 0, i[2], i[3]] }
        let replicatedValues = try Tensor(shape: [1, heads, 64, 16]) { i in inputs.values[0, 0, i[2], i[3]] }
        for mask in [AttentionMask.none, .causal] {
            let output = try mqa.attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
            let check = checkOutput(
                output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
            XCTAssertTrue(check.passes, "\(check)")
            let multiHead = try attention(
                queries: inputs.queries, keys: replicatedKeys, values: replicatedValues, mask: mask)
            let difference = maxAbsoluteError(output.scalars, multiHead.scalars.map(Double.init))
            XCTAssertLessThan(difference, 1e-5)
        }
        // One decode step: all query heads over the single key/value head.
        let step = try attentionInputs(
            queryHeads: heads, keyValueHeads: 1, queryLength: 1, keyLength: 300, headDimension: 16, seed: 4)
        let output = try mqa.attention(queries: step.queries, keys: step.keys, values: step.values)
        XCTAssertTrue(checkOutput(output, queries: step.queries, keys: step.keys, values: step.values).passes)
    }

    func testRejectsBadHeadCounts() throws {
        XCTAssertThrowsError(try MultiQuery(queryHeads: 0)) { error in
            XCTAssertEqual("\(error)", "queryHeads is 0 but expected >= 1")
        }
        let mqa = try MultiQuery(queryHeads: 4)
        let twoKeyHeads = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 2, keyLength: 2, headDimension: 4, seed: 1)
        XCTAssertThrowsError(
            try mqa.attention(queries: twoKeyHeads.queries, keys: twoKeyHeads.keys, values: twoKeyHeads.values)
        ) {
            error in XCTAssertEqual((error as? AttentionError)?.argument, "keys")
        }
        XCTAssertEqual(mqa.keyValueHeads, 1)
    }
}
