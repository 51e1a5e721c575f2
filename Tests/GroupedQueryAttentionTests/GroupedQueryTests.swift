import GroupedQueryAttention
import XCTest
import _AttentionTestSupport

final class GroupedQueryTests: XCTestCase {
    func testEveryGroupingMatchesReference() throws {
        try withEvery("layout", in: [(8, 8), (8, 4), (8, 2), (8, 1), (6, 3)]) { layout in
            let gqa = try GroupedQuery(queryHeads: layout.0, keyValueHeads: layout.1)
            let inputs = try attentionInputs(
                queryHeads: layout.0, keyValueHeads: layout.1, queryLength: 37, keyLength: 91, headDimension: 24,
                seed: UInt64(layout.0 * 10 + layout.1))
            for mask in [AttentionMask.none, .causal] {
                let output = try gqa.attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
                let check = checkOutput(
                    output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
                XCTAssertTrue(check.passes, "\(check)")
            }
            XCTAssertEqual(gqa.groupSize, layout.0 / layout.1)
            XCTAssertEqual(gqa.keyValueHead(forQueryHead: layout.0 - 1), layout.1 - 1)
        }
    }

    func testInvalidLayoutsAndMismatchedTensorsThrow() throws {
        XCTAssertThrowsError(try GroupedQuery(queryHeads: 8, keyValueHeads: 3)) { error in
            XCTAssertEqual("\(error)", "keyValueHeads is 3 but expected a divisor of queryHeads (8)")
        }
        XCTAssertThrowsError(try GroupedQuery(queryHeads: 0, keyValueHeads: 1))
        XCTAssertThrowsError(try GroupedQuery(queryHeads: 4, keyValueHeads: 0))
        let gqa = try GroupedQuery(queryHeads: 8, keyValueHeads: 2)
        let wrong = try attentionInputs(
            queryHeads: 8, keyValueHeads: 4, queryLength: 3, keyLength: 3, headDimension: 4, seed: 1)
        XCTAssertThrowsError(try gqa.attention(queries: wrong.queries, keys: wrong.keys, values: wrong.values)) {
            error in
            XCTAssertEqual(
                "\(error)",
                "keys has shape [1, 4, 3, 4] but expected [batch, 2, sequence, headDimension]: the descriptor has 2 "
                    + "key/value heads")
        }
        let fewQueries = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 3, keyLength: 3, headDimension: 4, seed: 1)
        XCTAssertThrowsError(
            try gqa.attention(queries: fewQueries.queries, keys: fewQueries.keys, values: fewQueries.values)
        ) {
            error in XCTAssertEqual((error as? AttentionError)?.argument, "queries")
        }
    }
}
