import AttentionCore
import XCTest
import _AttentionTestSupport

final class StoredTensorTests: XCTestCase {
    func testStoredTensorsHoldTheValuesEachFormatDefines() throws {
        var generator = SplitMix64(seed: 12)
        for shape in [[1, 2, 37, 64], [3, 32], [96], [2, 0, 16], [4, 1]] {
            let tensor = try Tensor(shape: shape) { _ in
                Float(generator.nextStandardNormal()) * (generator.next() % 8 == 0 ? 500 : 1)
            }
            for format in StorageFormatTests.formats {
                guard (try? format.validate(dimension: shape.last!, argument: "", dimensionName: "")) != nil,
                    let expected = roundedThrough(format, tensor)
                else { continue }
                let stored = try StoredTensor(tensor, format: format)
                XCTAssertEqual(Tensor(stored), expected, "\(format) \(shape)")
                XCTAssertEqual(stored.bytes.count, stored.rowCount * format.bytesPerRow(dimension: shape.last!))
                XCTAssertEqual(try StoredTensor(shape: shape, format: format, bytes: stored.bytes), stored)
            }
        }
    }

    func testAttentionOverStoredTensorsMatchesTheReferenceOnTheStoredValues() throws {
        // Every kernel, with queries, keys and values each in its own format, against the Float64 reference on the
        // values as stored.
        let formats: [(q: StorageFormat, k: StorageFormat, v: StorageFormat)] = [
            (.float16, .float16, .float16), (.bfloat16, .bfloat16, .bfloat16), (.float32, .int8(), .int4()),
            (.bfloat16, .float16, .float32), (.float16, .int4(blockSize: 8), .int8(blockSize: 16)),
        ]
        let shapes: [(hq: Int, hkv: Int, nq: Int, nk: Int, d: Int)] = [
            (4, 2, 1, 239, 32), (8, 2, 3, 203, 64), (3, 1, 7, 7, 16), (2, 1, 113, 217, 80), (2, 2, 128, 217, 128),
        ]
        for (formatIndex, format) in formats.enumerated() {
            for (index, shape) in shapes.enumerated() {
                let all = try attentionInputs(
                    queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.nq, keyLength: shape.nk,
                    headDimension: shape.d, seed: UInt64(60 + index + 10 * formatIndex))
                let fits = [format.q, format.k, format.v].allSatisfy {
                    (try? $0.validate(dimension: shape.d, argument: "", dimensionName: "")) != nil
                }
                guard fits, let q = roundedThrough(format.q, all.queries), let k = roundedThrough(format.k, all.keys),
                    let v = roundedThrough(format.v, all.values)
                else { continue }
                let stored = (
                    try StoredTensor(all.queries, format: format.q), try StoredTensor(all.keys, format: format.k),
                    try StoredTensor(all.values, format: format.v)
                )
                for (mask, kernel) in [
                    (AttentionMask.causal, AttentionKernel.automatic), (.none, .blockwise(queryBlock: 7, keyBlock: 16)),
                    (.window(left: 40, right: 0), .decode(keysPerSplit: 64)), (.causal, .naive),
                ] {
                    if case .decode = kernel, shape.hq / shape.hkv * shape.nq > 16 { continue }
                    let output = try attention(
                        queries: stored.0, keys: stored.1, values: stored.2, mask: mask,
                        options: AttentionOptions(kernel: kernel))
                    let check = checkOutput(output, queries: q, keys: k, values: v, mask: mask)
                    XCTAssertTrue(check.passes, "\(format) \(shape) \(mask) \(kernel): \(check)")
                }
            }
        }
    }

    func testSixteenBitOutputsAreTheFloat32OutputRoundedToNearestEven() throws {
        let all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 33, keyLength: 70, headDimension: 64, seed: 9)
        let q = try StoredTensor(all.queries, format: .bfloat16)
        let k = try StoredTensor(all.keys, format: .float16)
        let v = try StoredTensor(all.values, format: .float16)
        let float32 = try attention(queries: q, keys: k, values: v, mask: .causal)
        for format in [StorageFormat.float16, .bfloat16, .float32] {
            let output = try attention(queries: q, keys: k, values: v, mask: .causal, outputFormat: format)
            XCTAssertEqual(output.shape, [1, 4, 33, 64])
            XCTAssertEqual(output.format, format)
            guard let expected = roundedThrough(format, float32) else { continue }
            XCTAssertEqual(Tensor(output), expected, "\(format)")
        }
    }

    func testStoredTensorsGiveBitwiseIdenticalResultsForEveryThreadCount() throws {
        let all = try attentionInputs(
            queryHeads: 8, keyValueHeads: 2, queryLength: 150, keyLength: 1100, headDimension: 64, seed: 15)
        for format in [StorageFormat.float16, .bfloat16, .int8()] {
            let q = try StoredTensor(all.queries, format: format == .int8() ? .float32 : format)
            let k = try StoredTensor(all.keys, format: format)
            let v = try StoredTensor(all.values, format: format)
            for (nq, kernel) in [(150, AttentionKernel.automatic), (1, .decode(keysPerSplit: 128))] {
                let queries = try StoredTensor(tokens(Tensor(q), 0..<nq), format: q.format)
                func run(_ threads: Int) throws -> [UInt32] {
                    try attention(
                        queries: queries, keys: k, values: v, mask: .causal,
                        options: AttentionOptions(kernel: kernel, threads: threads)
                    ).scalars.map(\.bitPattern)
                }
                let one = try run(1)
                for threads in [2, 3, 8] { XCTAssertEqual(one, try run(threads), "\(format) \(kernel) \(threads)") }
            }
        }
    }

    func testBlockSparseAttentionReadsSixteenBitKeysAndValues() throws {
        let all = try attentionInputs(queryHeads: 2, queryLength: 190, keyLength: 190, headDimension: 64, seed: 31)
        let layout = try BlockSparseLayout.bigBird(
            length: 190, blockSize: 16, windowBlocks: 1, globalBlocks: [0], random: 2, seed: 4)
        for format in [StorageFormat.float16, .bfloat16] {
            guard let k = roundedThrough(format, all.keys), let v = roundedThrough(format, all.values) else {
                continue
            }
            let output = try blockSparseAttention(
                queries: StoredTensor(all.queries, format: .float32), keys: StoredTensor(all.keys, format: format),
                values: StoredTensor(all.values, format: format), layout: layout, mask: .causal)
            let dense = try blockSparseAttention(
                queries: all.queries, keys: k, values: v, layout: layout, mask: .causal)
            // The same tiles and the same decoded values: the stored call equals the Float32 call on the stored
            // values bit for bit, and that call is checked against the reference in SparseAttentionTests.
            XCTAssertEqual(output.scalars.map(\.bitPattern), dense.scalars.map(\.bitPattern), "\(format)")
            XCTAssertTrue(output.scalars.contains { $0 != 0 })
        }
    }

    func testNonFiniteValuesInStoredTensorsFollowTheFloat32Rules() throws {
        for format in [StorageFormat.float16, .bfloat16, .int8(), .int4()] {
            for kernel in [AttentionKernel.automatic, .blockwise(), .naive] {
                var all = try attentionInputs(
                    queryHeads: 2, keyValueHeads: 1, queryLength: 3, keyLength: 50, headDimension: 32, seed: 8)
                all.keys[0, 0, 49, 3] = .nan
                all.values[0, 0, 48, 5] = .infinity
                let (q, k, v) = (
                    try StoredTensor(all.queries, format: .bfloat16), try StoredTensor(all.keys, format: format),
                    try StoredTensor(all.values, format: format)
                )
                let options = AttentionOptions(kernel: kernel)
                let hidden = try attention(
                    queries: q, keys: k, values: v, mask: .custom { _, j in j < 48 }, options: options)
                XCTAssertTrue(hidden.scalars.allSatisfy(\.isFinite), "\(format) \(kernel)")
                let seen = try attention(queries: q, keys: k, values: v, options: options)
                XCTAssertTrue(seen.scalars.allSatisfy { !$0.isFinite }, "\(format) \(kernel)")
            }
        }
    }

    func testBadStoredInputsThrowNamingTheArgument() throws {
        let all = try attentionInputs(queryHeads: 2, queryLength: 4, keyLength: 6, headDimension: 32, seed: 1)
        let (q, k, v) = (
            try StoredTensor(all.queries, format: .float16), try StoredTensor(all.keys, format: .int8()),
            try StoredTensor(all.values, format: .float16)
        )
        func argument(_ body: () throws -> Void) -> String? {
            do {
                try body()
                return nil
            } catch { return (error as? AttentionError)?.argument }
        }
        XCTAssertEqual(argument { _ = try attention(queries: k, keys: k, values: v) }, "queries.format")
        XCTAssertEqual(
            argument { _ = try attention(queries: q, keys: k, values: v, outputFormat: .int4()) }, "outputFormat")
        XCTAssertEqual(argument { _ = try attention(queries: q, keys: v, values: q) }, "values")
        XCTAssertEqual(
            argument {
                _ = try attention(
                    queries: q, keys: StoredTensor(tokens(all.keys, 0..<3), format: .float16),
                    values: v)
            }, "values")
        XCTAssertEqual(
            argument {
                _ = try StoredTensor(shape: [2, 32], format: .float16, bytes: [UInt8](repeating: 0, count: 127))
            },
            "bytes.count")
        XCTAssertEqual(argument { _ = try StoredTensor(Tensor(zeros: [3, 48]), format: .int4()) }, "shape.last")
        XCTAssertEqual(
            argument { _ = try StoredTensor(Tensor(zeros: [3, 48]), format: .int4(blockSize: 0)) }, "format.blockSize")
        XCTAssertEqual(argument { _ = try StoredTensor(Tensor(shape: [], repeating: 1), format: .float16) }, "shape")
        XCTAssertEqual(argument { _ = try StoredTensor(shape: [2, -1], format: .float16, bytes: []) }, "shape")
    }
}
