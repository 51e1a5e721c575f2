import AttentionCore
import XCTest
import _AttentionTestSupport

/// Attention on caller-owned buffers (`AttentionBuffer`): fused QKV projections read in place, outputs written
/// through strides, checked against the Float64 reference and bitwise against the tensor call; every invalid
/// buffer is rejected by name.
final class AttentionBufferTests: XCTestCase {
    /// Heads `heads` of a fused [B, N, W, d] projection as a [B, H, N, d] tensor.
    func heads(_ fused: [Float], batch: Int, tokens: Int, width: Int, _ heads: Range<Int>, d: Int) -> Tensor {
        try! Tensor(shape: [batch, heads.count, tokens, d]) { i in
            fused[((i[0] * tokens + i[2]) * width + heads.lowerBound + i[1]) * d + i[3]]
        }
    }

    func testFusedProjectionsReadInPlaceMatchTheTensorCallAndTheReference() throws {
        // (batch, tokens, query heads, key/value heads, d): MHA ([B, N, 3, H, d]), GQA, MQA, a single token.
        let cases = [(2, 37, 4, 4, 16), (1, 70, 6, 2, 8), (3, 9, 4, 1, 5), (2, 1, 8, 2, 32)]
        for (index, (b, n, hq, hkv, d)) in cases.enumerated() {
            let width = hq + 2 * hkv
            let fused = try Tensor.randomNormal(shape: [b, n, width, d], seed: UInt64(300 + index)).scalars
            let q = heads(fused, batch: b, tokens: n, width: width, 0..<hq, d: d)
            let k = heads(fused, batch: b, tokens: n, width: width, hq..<(hq + hkv), d: d)
            let v = heads(fused, batch: b, tokens: n, width: width, (hq + hkv)..<width, d: d)
            var kernels: [AttentionKernel] = [.automatic, .naive, .blockwise(queryBlock: 5, keyBlock: 7)]
            if hq / hkv * n <= 16 { kernels.append(.decode(keysPerSplit: 4)) }
            for mask in [AttentionMask.none, .causal] {
                for kernel in kernels {
                    let options = AttentionOptions(kernel: kernel)
                    let expected = try partialAttention(
                        queries: q, keys: k, values: v, mask: mask, options: options)
                    // Output [B, N, Hq, d] (token-major, as the next projection reads it) and log-sum-exp.
                    var output = [Float](repeating: .nan, count: b * n * hq * d)
                    var lse = [Float](repeating: .nan, count: b * hq * n)
                    try fused.withUnsafeBufferPointer { memory in
                        try output.withUnsafeMutableBufferPointer { o in
                            try lse.withUnsafeMutableBufferPointer { l in
                                let (qb, kb, vb) = try AttentionBuffer.fusedProjection(
                                    memory, batch: b, tokens: n, queryHeads: hq, keyValueHeads: hkv, headDimension: d)
                                try attention(
                                    queries: qb, keys: kb, values: vb,
                                    output: MutableAttentionBuffer(o, shape: [b, n, hq, d], layout: .bnhd),
                                    logSumExp: l, mask: mask, options: options)
                            }
                        }
                    }
                    let headMajorOutput = try Tensor(shape: [b, hq, n, d]) { i in
                        output[((i[0] * n + i[2]) * hq + i[1]) * d + i[3]]
                    }
                    XCTAssertEqual(
                        bitwise(headMajorOutput.scalars), bitwise(expected.output.scalars),
                        "case \(index) \(mask) \(kernel)")
                    XCTAssertEqual(bitwise(lse), bitwise(expected.logSumExp.scalars), "case \(index) \(mask) \(kernel)")
                    let check = checkOutput(
                        headMajorOutput, queries: q, keys: k, values: v, mask: mask, options: options)
                    XCTAssertTrue(check.passes, "case \(index) \(mask) \(kernel): \(check)")
                }
            }
        }
    }

    func testInvalidBuffersAreRejectedByName() throws {
        var memory = [Float](repeating: 1, count: 64)
        var other = [Float](repeating: 0, count: 64)
        func argument(_ body: () throws -> Void) -> String? {
            do { try body() } catch let error as AttentionError { return error.argument } catch { return "\(error)" }
            return nil
        }
        try memory.withUnsafeBufferPointer { m in
            XCTAssertEqual(
                argument { _ = try AttentionBuffer(m, shape: [1, 1, 4, 4], strides: [16, 16, 4, 2]) }, "buffer.strides")
            XCTAssertEqual(
                argument { _ = try AttentionBuffer(m, shape: [1, 1, 4], strides: [16, 4, 1]) }, "buffer.shape")
            XCTAssertEqual(
                argument { _ = try AttentionBuffer(m, shape: [1, 2, 8, 4], strides: [64, 33, 4, 1]) },
                "buffer.memory.count")
            XCTAssertEqual(
                argument {
                    _ = try AttentionBuffer.fusedProjection(
                        m, batch: 1, tokens: 2, queryHeads: 2, keyValueHeads: 2, headDimension: 4)
                }, "memory.count")
            let view = try AttentionBuffer(m, shape: [1, 1, 4, 4], strides: [16, 16, 4, 1])
            try other.withUnsafeMutableBufferPointer { o in
                // Two heads written to the same rows, and a token stride shorter than a row.
                XCTAssertEqual(
                    argument { _ = try MutableAttentionBuffer(o, shape: [1, 2, 4, 4], strides: [32, 0, 4, 1]) },
                    "output.strides")
                XCTAssertEqual(
                    argument { _ = try MutableAttentionBuffer(o, shape: [1, 1, 4, 4], strides: [16, 16, 3, 1]) },
                    "output.strides")
                let out = try MutableAttentionBuffer(o, shape: [1, 1, 4, 4], layout: .bhnd)
                XCTAssertEqual(
                    argument {
                        try attention(
                            queries: view, keys: view, values: view,
                            output: MutableAttentionBuffer(o, shape: [1, 1, 3, 4], layout: .bhnd))
                    }, "output")
                XCTAssertEqual(
                    argument {
                        try attention(
                            queries: view, keys: view, values: view, output: out,
                            options: AttentionOptions(layout: .bnhd))
                    }, "options.layout")
                XCTAssertEqual(
                    argument {
                        try attention(
                            queries: view, keys: view, values: view, output: out,
                            logSumExp: UnsafeMutableBufferPointer(rebasing: o[60..<63]))
                    }, "logSumExp.count")
                XCTAssertEqual(
                    argument {
                        try attention(
                            queries: view, keys: view, values: view, output: out,
                            logSumExp: UnsafeMutableBufferPointer(rebasing: o[12..<16]))
                    }, "logSumExp")
                XCTAssertEqual(Array(o), [Float](repeating: 0, count: 64), "nothing written by a rejected call")
            }
        }
        // The output aliasing the queries it reads.
        try memory.withUnsafeMutableBufferPointer { m in
            let view = try AttentionBuffer(UnsafeBufferPointer(m), shape: [1, 1, 4, 4], strides: [16, 16, 4, 1])
            let out = try MutableAttentionBuffer(
                UnsafeMutableBufferPointer(rebasing: m[8..<64]), shape: [1, 1, 4, 4], layout: .bhnd)
            XCTAssertEqual(argument { try attention(queries: view, keys: view, values: view, output: out) }, "output")
        }
    }
}
