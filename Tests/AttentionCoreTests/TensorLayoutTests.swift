import AttentionCore
import XCTest
import _AttentionTestSupport

/// [B, N, H, d] inputs and outputs (`AttentionOptions.layout`, `outputLayout`), read and written in place.
final class TensorLayoutTests: XCTestCase {
    /// Axes 1 and 2 swapped: [B, H, N, d] <-> [B, N, H, d].
    func swapped(_ t: Tensor) -> Tensor { swappingHeadsAndTokens(t) }

    func testTokenMajorInputsEqualHeadMajorBitwise() throws {
        // Every kernel, masks, grouping and odd sizes: the [B, N, H, d] call equals the [B, H, N, d] call on the
        // same data bit for bit (the kernels compute the same products; only where rows are read from differs), for
        // both output layouts, and matches the Float64 reference.
        let shapes: [(b: Int, hq: Int, hkv: Int, nq: Int, nk: Int, d: Int, dv: Int)] = [
            (2, 4, 2, 37, 203, 63, 63), (1, 8, 8, 70, 70, 64, 40), (3, 6, 1, 1, 129, 16, 16),
            (1, 2, 2, 128, 217, 128, 128),
        ]
        let masks: [AttentionMask] = [.none, .causal, .window(left: 11, right: 3)]
        for (index, shape) in shapes.enumerated() {
            let inputs = try attentionInputs(
                batch: shape.b, queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.nq,
                keyLength: shape.nk, headDimension: shape.d, valueDimension: shape.dv, seed: UInt64(31 + index))
            let (q, k, v) = (swapped(inputs.queries), swapped(inputs.keys), swapped(inputs.values))
            var kernels: [AttentionKernel] = [.automatic, .naive, .blockwise(queryBlock: 5, keyBlock: 7)]
            if shape.hq / shape.hkv * shape.nq <= 16 { kernels.append(.decode(keysPerSplit: 32)) }
            for mask in masks {
                for kernel in kernels {
                    let label = "shape \(index), \(mask), \(kernel)"
                    let expected = try partialAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                        options: AttentionOptions(kernel: kernel, threads: 2))
                    let tokenMajor = try partialAttention(
                        queries: q, keys: k, values: v, mask: mask,
                        options: AttentionOptions(layout: .bnhd, kernel: kernel, threads: 2))
                    XCTAssertEqual(bitwise(tokenMajor.output), bitwise(swapped(expected.output)), label)
                    XCTAssertEqual(bitwise(tokenMajor.logSumExp), bitwise(expected.logSumExp), label)
                    let headMajorOut = try attention(
                        queries: q, keys: k, values: v, mask: mask,
                        options: AttentionOptions(layout: .bnhd, outputLayout: .bhnd, kernel: kernel))
                    XCTAssertEqual(bitwise(headMajorOut), bitwise(expected.output), label)
                    let fromHeadMajor = try attention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                        options: AttentionOptions(outputLayout: .bnhd, kernel: kernel))
                    XCTAssertEqual(bitwise(fromHeadMajor), bitwise(swapped(expected.output)), label)
                }
                let check = checkOutput(
                    swapped(
                        try attention(
                            queries: q, keys: k, values: v, mask: mask, options: AttentionOptions(layout: .bnhd))),
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                    options: AttentionOptions())
                XCTAssertTrue(check.passes, "shape \(index), \(mask): \(check)")
            }
        }
    }

    func testRowsStagedPerWorkerEqualHeadMajorBitwise() throws {
        // B 5 x 8 key/value heads = 40 groups: one and two threads stage each group's rows per worker (16 groups
        // per thread or more), three copy them once for the call; all equal the [B, H, N, d] call bit for bit.
        let inputs = try attentionInputs(
            batch: 5, queryHeads: 16, keyValueHeads: 8, queryLength: 70, keyLength: 133, headDimension: 16,
            valueDimension: 12, seed: 41)
        let (q, k, v) = (swapped(inputs.queries), swapped(inputs.keys), swapped(inputs.values))
        for mask in [AttentionMask.none, .causal] {
            let expected = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                options: AttentionOptions(kernel: .blockwise(queryBlock: 16, keyBlock: 32)))
            for threads in [1, 2, 3] {
                let output = try attention(
                    queries: q, keys: k, values: v, mask: mask,
                    options: AttentionOptions(
                        layout: .bnhd, kernel: .blockwise(queryBlock: 16, keyBlock: 32), threads: threads))
                XCTAssertEqual(bitwise(output), bitwise(swapped(expected)), "\(mask), \(threads) threads")
            }
        }
    }

    func testTokenMajorWithPaddingBiasSinksAndBlockSparse() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 50, keyLength: 64, headDimension: 32, seed: 3)
        let (q, k, v) = (swapped(inputs.queries), swapped(inputs.keys), swapped(inputs.values))
        var options = AttentionOptions(
            alibiSlopes: [0.1, 0.2, 0.3, 0.4], bias: try Tensor.randomNormal(shape: [2, 1, 1, 64], seed: 4),
            keyPadding: .lengths([64, 30]), queryPadding: .ranges([0..<50, 10..<40]), sinkLogits: [0, 1, 2, 3])
        let expected = try attention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options)
        options.layout = .bnhd
        XCTAssertEqual(
            try attention(queries: q, keys: k, values: v, mask: .causal, options: options), swapped(expected))
        let layout = try BlockSparseLayout.local(length: 64, blockSize: 16, windowBlocks: 1)
        let square = try attentionInputs(queryHeads: 2, queryLength: 64, keyLength: 64, headDimension: 16, seed: 5)
        let sparse = try blockSparseAttention(
            queries: square.queries, keys: square.keys, values: square.values, layout: layout)
        let sparseTokenMajor = try blockSparseAttention(
            queries: swapped(square.queries), keys: swapped(square.keys), values: swapped(square.values),
            layout: layout, options: AttentionOptions(layout: .bnhd))
        XCTAssertEqual(sparseTokenMajor, swapped(sparse))
    }

    func testStoredTensorsInTokenMajorLayoutEqualHeadMajorBitwise() throws {
        // Stored keys and values in every format (8- and 4-bit in blocks of 8), queries in Float16 / BFloat16, read
        // as [B, N, H, d]: the forward (blockwise, naive, decode, block-sparse; rows staged per worker and read at
        // their stride) and the backward equal the [B, H, N, d] stored call bit for bit, in both output layouts.
        let shapes: [(b: Int, hq: Int, hkv: Int, nq: Int, nk: Int, d: Int)] = [
            (2, 4, 2, 37, 140, 24), (1, 8, 2, 1, 150, 40), (1, 4, 2, 64, 64, 16),
        ]
        let formats: [(StorageFormat, StorageFormat)] = [
            (.bfloat16, .bfloat16), (.bfloat16, .int8(blockSize: 8)), (.float16, .int4(blockSize: 8)),
            (.bfloat16, .float32),
        ]
        for (index, shape) in shapes.enumerated() {
            let inputs = try attentionInputs(
                batch: shape.b, queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.nq,
                keyLength: shape.nk, headDimension: shape.d, seed: UInt64(51 + index))
            let dO = try Tensor.randomNormal(shape: [shape.b, shape.hq, shape.nq, shape.d], seed: 57)
            for (queryFormat, format) in formats {
                if queryFormat == .float16 && roundedThroughFloat16(0) == nil { continue }
                let label = "shape \(index), \(queryFormat) / \(format)"
                func stored(_ t: Tensor, _ f: StorageFormat) throws -> (StoredTensor, StoredTensor) {
                    (try StoredTensor(t, format: f), try StoredTensor(swapped(t), format: f))
                }
                let (q, qT) = try stored(inputs.queries, queryFormat)
                let (k, kT) = try stored(inputs.keys, format)
                let (v, vT) = try stored(inputs.values, format)
                let (g, gT) = try stored(dO, queryFormat)
                var kernels: [AttentionKernel] = [.automatic, .naive, .blockwise(queryBlock: 5, keyBlock: 7)]
                if shape.hq / shape.hkv * shape.nq <= 16 { kernels.append(.decode(keysPerSplit: 32)) }
                for kernel in kernels {
                    let options = AttentionOptions(kernel: kernel, threads: 2)
                    let expected = try partialAttention(queries: q, keys: k, values: v, mask: .causal, options: options)
                    // One thread stages each (batch, head) group's encoded rows per worker (`RowStaging`); two read
                    // them at their stride (too few groups to stage).
                    for threads in [1, 2] {
                        let tokenMajor = try partialAttention(
                            queries: qT, keys: kT, values: vT, mask: .causal,
                            options: AttentionOptions(layout: .bnhd, kernel: kernel, threads: threads))
                        let context = "\(label), \(kernel), \(threads) threads"
                        XCTAssertEqual(bitwise(tokenMajor.output), bitwise(swapped(expected.output)), context)
                        XCTAssertEqual(bitwise(tokenMajor.logSumExp), bitwise(expected.logSumExp), context)
                    }
                    let headMajorOut = try attention(
                        queries: qT, keys: kT, values: vT, mask: .causal,
                        options: AttentionOptions(layout: .bnhd, outputLayout: .bhnd, kernel: kernel))
                    XCTAssertEqual(bitwise(headMajorOut), bitwise(expected.output), "\(label), \(kernel)")
                }
                let blocks = try BlockSparseLayout.local(length: shape.nk, blockSize: 16, windowBlocks: 1)
                if shape.nq == shape.nk {
                    XCTAssertEqual(
                        try blockSparseAttention(
                            queries: qT, keys: kT, values: vT, layout: blocks, options: AttentionOptions(layout: .bnhd)),
                        swapped(try blockSparseAttention(queries: q, keys: k, values: v, layout: blocks)), label)
                }
                var options = AttentionOptions(threads: 2)
                let forward = try partialAttention(queries: q, keys: k, values: v, mask: .causal, options: options)
                let expected = try attentionGradients(
                    queries: q, keys: k, values: v, result: forward, outputGradient: g, mask: .causal, options: options)
                options.layout = .bnhd
                let tokenForward = try partialAttention(
                    queries: qT, keys: kT, values: vT, mask: .causal, options: options)
                let gradients = try attentionGradients(
                    queries: qT, keys: kT, values: vT, result: tokenForward, outputGradient: gT, mask: .causal,
                    options: options)
                XCTAssertEqual(bitwise(gradients.queries), bitwise(swapped(expected.queries)), label)
                XCTAssertEqual(bitwise(gradients.keys), bitwise(swapped(expected.keys)), label)
                XCTAssertEqual(bitwise(gradients.values), bitwise(swapped(expected.values)), label)
            }
        }
        // And the reference: one [B, N, H, d] stored call against the Float64 reference on the stored values.
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 33, keyLength: 70, headDimension: 16, seed: 61)
        let keys = try StoredTensor(swapped(inputs.keys), format: .int8(blockSize: 8))
        let values = try StoredTensor(swapped(inputs.values), format: .bfloat16)
        let output = try attention(
            queries: try StoredTensor(swapped(inputs.queries), format: .float32), keys: keys, values: values,
            mask: .causal, options: AttentionOptions(layout: .bnhd))
        let check = checkOutput(
            swapped(output), queries: inputs.queries,
            keys: roundedThrough(.int8(blockSize: 8), inputs.keys)!, values: roundedThrough(.bfloat16, inputs.values)!,
            mask: .causal, options: AttentionOptions())
        XCTAssertTrue(check.passes, "\(check)")
    }

    func testLayoutErrorsNameTheArgument() throws {
        let inputs = try attentionInputs(queryHeads: 4, queryLength: 5, keyLength: 6, headDimension: 8, seed: 1)
        // Keys given head-major while the call says token-major: [1, 4, 6, 8] read as 6 heads of 4 tokens.
        XCTAssertThrowsError(
            try attention(
                queries: swapped(inputs.queries), keys: inputs.keys, values: swapped(inputs.values),
                options: AttentionOptions(layout: .bnhd))
        ) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("keys has shape"), text)
            XCTAssertTrue(text.contains("options.layout is .bnhd"), text)
        }
        var output = try Tensor(zeros: [1, 4, 5, 8])
        XCTAssertThrowsError(
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                options: AttentionOptions(outputLayout: .bnhd), into: &output)
        ) { error in XCTAssertTrue("\(error)".contains("[1, 5, 4, 8]"), "\(error)") }
        var cache = try KVCache(keyValueHeads: 4, headDimension: 8)
        try cache.append(keys: inputs.keys, values: inputs.values)
        XCTAssertThrowsError(try cache.attention(queries: inputs.queries, options: AttentionOptions(layout: .bnhd))) {
            error in XCTAssertTrue("\(error)".hasPrefix("options.layout is .bnhd but expected .bhnd"), "\(error)")
        }
        XCTAssertThrowsError(
            try topKAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 2,
                options: AttentionOptions(layout: .bnhd)))
    }
}
