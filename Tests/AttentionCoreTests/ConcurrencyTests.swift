import AttentionCore
import XCTest
import _AttentionTestSupport

/// Many calls at once on shared inputs: every result is bitwise identical to the sequential one. Run under the
/// thread sanitizer with `swift test --sanitize=thread --filter ConcurrencyTests` (see the README).
final class ConcurrencyTests: XCTestCase {
    func testSixtyFourConcurrentCallsEqualSequentialCalls() async throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 37, keyLength: 53, headDimension: 16, seed: 5)
        let kernels: [AttentionKernel] = [.automatic, .naive, .blockwise(queryBlock: 7, keyBlock: 16)]
        let masks: [AttentionMask] = [.none, .causal, .window(left: 5, right: 2), .sinks(count: 2, window: 9)]
        func call(_ index: Int) throws -> Tensor {
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: masks[index % masks.count],
                options: AttentionOptions(kernel: kernels[index % kernels.count], threads: 1 + index % 3))
        }
        let sequential = try (0..<64).map(call)
        let concurrent = try await withThrowingTaskGroup(of: (Int, Tensor).self) { group in
            for index in 0..<64 { group.addTask { (index, try call(index)) } }
            var results = [Tensor?](repeating: nil, count: 64)
            for try await (index, output) in group { results[index] = output }
            return results
        }
        for index in 0..<64 {
            XCTAssertEqual(concurrent[index].map(bitwise), bitwise(sequential[index]), "call \(index)")
        }
    }

    func testCachesAndLinearStateAreValuesThatCanBeReadConcurrently() async throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 1, keyLength: 300, headDimension: 8, seed: 6)
        var cache = try KVCache(keyValueHeads: 2, headDimension: 8)
        try cache.append(keys: inputs.keys, values: inputs.values)
        let shared = cache
        let expected = try shared.attention(queries: inputs.queries)
        let results = try await withThrowingTaskGroup(of: Tensor.self) { group in
            for _ in 0..<32 { group.addTask { try shared.attention(queries: inputs.queries) } }
            var all: [Tensor] = []
            for try await output in group { all.append(output) }
            return all
        }
        XCTAssertEqual(results.count, 32)
        for output in results { XCTAssertEqual(bitwise(output), bitwise(expected)) }
        // A copy mutated elsewhere leaves the original untouched (value semantics).
        var copy = shared
        try copy.append(keys: inputs.keys, values: inputs.values)
        XCTAssertEqual(shared.count, 300)
        XCTAssertEqual(copy.count, 600)
    }
}
