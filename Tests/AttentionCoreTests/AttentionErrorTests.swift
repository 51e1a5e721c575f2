import AttentionCore
import XCTest
import _AttentionTestSupport

/// Every invalid argument of the attention entry point throws an AttentionError whose message names it.
final class AttentionErrorTests: XCTestCase {
    private let q = try! Tensor(zeros: [2, 4, 5, 8])
    private let k = try! Tensor(zeros: [2, 2, 7, 8])
    private let v = try! Tensor(zeros: [2, 2, 7, 6])

    private func assertThrows(
        _ argument: String, mentioning fragments: [String], queries: Tensor? = nil, keys: Tensor? = nil,
        values: Tensor? = nil, mask: AttentionMask = .none,
        options: AttentionOptions = AttentionOptions(),
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(
            try attention(
                queries: queries ?? q, keys: keys ?? k, values: values ?? v, mask: mask, options: options),
            file: file, line: line
        ) { error in
            guard let error = error as? AttentionError else {
                return XCTFail("expected AttentionError, got \(error)", file: file, line: line)
            }
            XCTAssertEqual(error.argument, argument, "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".hasPrefix(argument), "\(error)", file: file, line: line)
            for fragment in fragments {
                XCTAssertTrue(
                    "\(error)".contains(fragment), "'\(fragment)' missing in: \(error)", file: file,
                    line: line)
            }
        }
    }

    func testValidCallSucceeds() throws {
        XCTAssertEqual(try attention(queries: q, keys: k, values: v).shape, [2, 4, 5, 6])
    }

    func testRank() {
        assertThrows(
            "queries", mentioning: ["[2, 4, 5]", "rank 4"], queries: try! Tensor(zeros: [2, 4, 5]))
        assertThrows("keys", mentioning: ["[7, 8]", "rank 4"], keys: try! Tensor(zeros: [7, 8]))
        assertThrows("values", mentioning: ["rank 4"], values: try! Tensor(zeros: [1, 2, 2, 7, 6]))
    }

    func testShapes() {
        assertThrows(
            "queries", mentioning: ["[2, 0, 5, 8]", "at least 1 head"],
            queries: try! Tensor(zeros: [2, 0, 5, 8]))
        assertThrows(
            "queries", mentioning: ["headDimension", "[2, 4, 5, 0]"],
            queries: try! Tensor(zeros: [2, 4, 5, 0]),
            keys: try! Tensor(zeros: [2, 2, 7, 0]))
        assertThrows(
            "keys", mentioning: ["[3, 2, 7, 8]", "batch"], keys: try! Tensor(zeros: [3, 2, 7, 8]))
        assertThrows(
            "keys", mentioning: ["[2, 3, 7, 8]", "must divide the query head count 4"],
            keys: try! Tensor(zeros: [2, 3, 7, 8]),
            values: try! Tensor(zeros: [2, 3, 7, 6]))
        assertThrows(
            "keys", mentioning: ["[2, 2, 7, 9]", "[2, H, N, 8]"], keys: try! Tensor(zeros: [2, 2, 7, 9]))
        assertThrows(
            "values",
            mentioning: [
                "[2, 2, 6, 6]", "expected [2, 2, 7, D]", "same batch, head count and sequence length",
            ],
            values: try! Tensor(zeros: [2, 2, 6, 6]))
        assertThrows("values", mentioning: ["[2, 1, 7, 6]"], values: try! Tensor(zeros: [2, 1, 7, 6]))
        assertThrows("values", mentioning: ["D >= 1"], values: try! Tensor(zeros: [2, 2, 7, 0]))
    }

    func testMaskParameters() {
        assertThrows("mask window left", mentioning: ["-1", ">= 0"], mask: .window(left: -1, right: 0))
        assertThrows("mask window right", mentioning: ["-2"], mask: .window(left: 0, right: -2))
        assertThrows("mask sinks count", mentioning: ["-4"], mask: .sinks(count: -4, window: 8))
        assertThrows(
            "mask sinks window", mentioning: ["-8"],
            mask: .intersection(.causal, .sinks(count: 4, window: -8)))
    }

    func testOptions() {
        assertThrows(
            "options.scale", mentioning: ["nan", "finite"], options: AttentionOptions(scale: .nan))
        assertThrows("options.scale", mentioning: ["inf"], options: AttentionOptions(scale: .infinity))
        assertThrows(
            "options.softcap", mentioning: ["0.0", "> 0"], options: AttentionOptions(softcap: 0))
        assertThrows("options.softcap", mentioning: ["-1.0"], options: AttentionOptions(softcap: -1))
        assertThrows(
            "options.alibiSlopes.count", mentioning: ["3", "4 (one per query head)"],
            options: AttentionOptions(alibiSlopes: [1, 2, 3]))
        assertThrows(
            "options.alibiSlopes[1]", mentioning: ["nan"],
            options: AttentionOptions(alibiSlopes: [1, .nan, 3, 4]))
        assertThrows(
            "options.sinkLogits.count", mentioning: ["5"],
            options: AttentionOptions(sinkLogits: [0, 0, 0, 0, 0]))
        assertThrows(
            "options.sinkLogits[3]", mentioning: ["inf"],
            options: AttentionOptions(sinkLogits: [0, 0, 0, .infinity]))
        assertThrows(
            "options.bias", mentioning: ["[1, 4, 5, 6]", "[2 or 1, 4 or 1, 5 or 1, 7]"],
            options: AttentionOptions(bias: try! Tensor(zeros: [1, 4, 5, 6])))
        assertThrows(
            "options.bias", mentioning: ["[5, 7]"],
            options: AttentionOptions(bias: try! Tensor(zeros: [5, 7])))
        assertThrows(
            "options.threads", mentioning: ["0", ">= 1"], options: AttentionOptions(threads: 0))
        assertThrows(
            "options.naiveMemoryBudget", mentioning: ["-1", ">= 0"],
            options: AttentionOptions(naiveMemoryBudget: -1))
        assertThrows(
            "options.naiveMemoryBudget", mentioning: ["needs", "blockwise"],
            options: AttentionOptions(kernel: .naive, naiveMemoryBudget: 10))
    }
}
