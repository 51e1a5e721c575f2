import AttentionCore
import XCTest
import _AttentionTestSupport

/// `attentionGradients` over stored tensors (Float16 / BFloat16 activations, keys and values in any format): the
/// Float64 reference on the stored values, bitwise equality with the Float32 call on the decoded tensors for every
/// thread count, non-finite removed keys, and errors.
final class StoredBackwardTests: XCTestCase {
    private typealias Formats = (
        queries: StorageFormat, keys: StorageFormat, values: StorageFormat, outputGradient: StorageFormat
    )

    /// Queries and output gradient in each float format, keys and values in every format (blocks of 8 for the
    /// head dimension 40 and value dimension 24, neither a multiple of 16), each with its own.
    private let formatCases: [Formats] = [
        (.bfloat16, .bfloat16, .bfloat16, .bfloat16),
        (.float16, .float16, .float16, .float16),
        (.bfloat16, .int8(blockSize: 8), .int4(blockSize: 8), .float16),
        (.float16, .int4(blockSize: 8), .int8(blockSize: 8), .bfloat16),
        (.float32, .float16, .bfloat16, .float32),
    ]

    private func inputs(
        batch: Int = 1, queryHeads: Int, keyValueHeads: Int, queryLength: Int, keyLength: Int, headDimension: Int,
        valueDimension: Int, seed: UInt64
    ) throws -> (queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor) {
        let x = try attentionInputs(
            batch: batch, queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: queryLength,
            keyLength: keyLength, headDimension: headDimension, valueDimension: valueDimension, seed: seed)
        let dO = try Tensor.randomNormal(shape: [batch, queryHeads, queryLength, valueDimension], seed: seed &+ 99)
        return (x.queries, x.keys, x.values, dO)
    }

    /// Each format case against the Float64 reference on the values the formats hold, under the tolerance rule:
    /// GQA, query and key tiles crossed (Nq 70 > 64 rows, Nk 150 > 128 keys), masks with partial tiles, sinks,
    /// softcap and ALiBi, a bias with -infinity entries.
    func testGradientsMatchTheReferenceOnTheStoredValues() throws {
        let x = try inputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 70, keyLength: 150, headDimension: 40, valueDimension: 24,
            seed: 21)
        var scored = AttentionOptions(scale: 0.2)
        scored.softcap = 3
        scored.alibiSlopes = [0.5, 0.25, 0.125, 0.0625]
        scored.sinkLogits = [0.5, -1, 0, 2]
        var biased = AttentionOptions()
        var bias = try Tensor.randomNormal(shape: [1, 1, 70, 150], seed: 5).scalars
        for i in stride(from: 3, to: bias.count, by: 7) { bias[i] = -.infinity }
        biased.bias = try Tensor(shape: [1, 1, 70, 150], scalars: bias)
        let cases: [(AttentionMask, AttentionOptions)] = [
            (.none, AttentionOptions()), (.causal, scored), (.window(left: 20, right: 3), biased),
        ]
        var checked = 0
        try withEvery("formats", in: formatCases.indices) { f in
            try withEvery("case", in: cases.indices) { c in
                guard
                    let checks = try checkStoredGradients(
                        queries: x.queries, keys: x.keys, values: x.values, outputGradient: x.outputGradient,
                        formats: formatCases[f], mask: cases[c].0, options: cases[c].1)
                else { return }  // no Float16 on this platform
                for (name, check) in checks.sorted(by: { $0.key < $1.key }) {
                    XCTAssertTrue(check.passes, "\(name): \(check)")
                }
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 6, "at least the cases without Float16 ran")
    }

    /// The stored call's gradients are bitwise those of the Float32 call on the decoded tensors, for 1, 2 and 3
    /// threads, batch of two, causal with sinks (so every staged and decoded path meets the dense one's sums).
    func testGradientsAreTheDecodedTensorsGradientsBitwise() throws {
        let x = try inputs(
            batch: 2, queryHeads: 6, keyValueHeads: 3, queryLength: 67, keyLength: 140, headDimension: 40,
            valueDimension: 24, seed: 8)
        try withEvery("formats", in: formatCases.indices) { f in
            let formats = formatCases[f]
            if formats.queries == .float16 && roundedThroughFloat16(0) == nil { return }
            let q = try StoredTensor(x.queries, format: formats.queries)
            let k = try StoredTensor(x.keys, format: formats.keys)
            let v = try StoredTensor(x.values, format: formats.values)
            let dO = try StoredTensor(x.outputGradient, format: formats.outputGradient)
            var options = AttentionOptions(threads: 1)
            options.sinkLogits = [0, 1, 2, 3, 4, 5]
            let forward = try partialAttention(queries: q, keys: k, values: v, mask: .causal, options: options)
            let dense = try attentionGradients(
                queries: Tensor(q), keys: Tensor(k), values: Tensor(v), result: forward, outputGradient: Tensor(dO),
                mask: .causal, options: options)
            for threads in [1, 2, 3] {
                options.threads = threads
                let stored = try attentionGradients(
                    queries: q, keys: k, values: v, result: forward, outputGradient: dO, mask: .causal,
                    options: options)
                XCTAssertEqual(bitwise(stored.queries), bitwise(dense.queries), "threads \(threads)")
                XCTAssertEqual(bitwise(stored.keys), bitwise(dense.keys), "threads \(threads)")
                XCTAssertEqual(bitwise(stored.values), bitwise(dense.values), "threads \(threads)")
                XCTAssertEqual(stored.sinkLogits.map(bitwise), dense.sinkLogits.map(bitwise), "threads \(threads)")
                XCTAssertEqual(stored.queries.shape, x.queries.shape)
                XCTAssertEqual(stored.keys.shape, x.keys.shape)
                XCTAssertEqual(stored.values.shape, x.values.shape)
            }
        }
    }

    /// NaN and infinity in stored keys and values that the mask or a -infinity bias removes never reach a gradient.
    func testNonFiniteRemovedKeysNeverReachAGradient() throws {
        let (nq, nk, d) = (5, 9, 16)
        let x = try inputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: nq, keyLength: nk, headDimension: d, valueDimension: d,
            seed: 3)
        // Keys 0, 7 and 8 are removed for every query by a -infinity bias; the causal mask (bottom-right: query i
        // sees keys 0...i + 4) removes key 7 from queries 0-2 and key 8 from queries 0-3 as well.
        var keys = x.keys.scalars
        var values = x.values.scalars
        for key in [0, 7, 8] {
            keys[key * d] = .nan
            values[key * d + 1] = .infinity
        }
        var options = AttentionOptions()
        var bias = [Float](repeating: 0, count: nk)
        for key in [0, 7, 8] { bias[key] = -.infinity }
        options.bias = try Tensor(shape: [1, 1, 1, nk], scalars: bias)
        let k = try StoredTensor(Tensor(shape: x.keys.shape, scalars: keys), format: .bfloat16)
        let v = try StoredTensor(Tensor(shape: x.values.shape, scalars: values), format: .bfloat16)
        let q = try StoredTensor(x.queries, format: .bfloat16)
        let dO = try StoredTensor(x.outputGradient, format: .bfloat16)
        var causal = options
        causal.threads = 1
        let forward = try partialAttention(queries: q, keys: k, values: v, mask: .causal, options: causal)
        let grads = try attentionGradients(
            queries: q, keys: k, values: v, result: forward, outputGradient: dO, mask: .causal, options: causal)
        XCTAssertTrue(forward.output.scalars.allSatisfy(\.isFinite))
        XCTAssertTrue(grads.queries.scalars.allSatisfy(\.isFinite), "dQ")
        XCTAssertTrue(grads.keys.scalars.allSatisfy(\.isFinite), "dK")
        XCTAssertTrue(grads.values.scalars.allSatisfy(\.isFinite), "dV")
        XCTAssertTrue(grads.bias?.scalars.allSatisfy(\.isFinite) ?? false, "dBias")
        // The removed keys' own gradients are exactly zero; a visible key's are not.
        for key in [0, 7, 8] {
            XCTAssertEqual(
                grads.keys.scalars[(key * d)..<((key + 1) * d)].map { $0 == 0 }, Array(repeating: true, count: d))
            XCTAssertEqual(
                grads.values.scalars[(key * d)..<((key + 1) * d)].map { $0 == 0 }, Array(repeating: true, count: d))
        }
        XCTAssertTrue(grads.values.scalars[(d)..<(2 * d)].contains { $0 != 0 })
    }

    /// Quantized queries or output gradient, shapes that do not fit (also in the [B, N, H, d] layout): each names its
    /// argument.
    func testBadInputNamesTheArgument() throws {
        let x = try inputs(
            queryHeads: 2, keyValueHeads: 1, queryLength: 4, keyLength: 6, headDimension: 8, valueDimension: 8,
            seed: 1)
        let (q, k, v, dO) = (
            try StoredTensor(x.queries, format: .bfloat16), try StoredTensor(x.keys, format: .int8(blockSize: 8)),
            try StoredTensor(x.values, format: .bfloat16), try StoredTensor(x.outputGradient, format: .bfloat16)
        )
        let forward = try partialAttention(queries: q, keys: k, values: v)
        func argument(
            queries: StoredTensor? = nil, keys: StoredTensor? = nil, result: AttentionResult? = nil,
            outputGradient: StoredTensor? = nil, options: AttentionOptions = AttentionOptions()
        ) -> String? {
            do {
                _ = try attentionGradients(
                    queries: queries ?? q, keys: keys ?? k, values: v, result: result ?? forward,
                    outputGradient: outputGradient ?? dO, options: options)
                return nil
            } catch {
                return (error as? AttentionError)?.argument
            }
        }
        XCTAssertNil(argument())
        XCTAssertEqual(
            argument(queries: try StoredTensor(x.queries, format: .int8(blockSize: 8))), "queries.format")
        XCTAssertEqual(
            argument(outputGradient: try StoredTensor(x.outputGradient, format: .int4(blockSize: 8))),
            "outputGradient.format")
        XCTAssertEqual(
            argument(outputGradient: try StoredTensor(Tensor(zeros: [1, 2, 4, 7]), format: .bfloat16)),
            "outputGradient")
        XCTAssertEqual(
            argument(result: AttentionResult(output: forward.output, logSumExp: try Tensor(zeros: [1, 2, 3]))),
            "result.logSumExp")
        XCTAssertEqual(
            argument(keys: try StoredTensor(Tensor(zeros: [1, 1, 6, 16]), format: .bfloat16)), "keys")
        // [B, H, N, d] tensors passed as [B, N, H, d]: the keys' 6 "heads" do not divide the queries' 4.
        var layout = AttentionOptions()
        layout.layout = .bnhd
        XCTAssertEqual(argument(options: layout), "keys")
    }

    /// No queries, or no keys: zero gradients of the right shapes, as the Float32 call gives.
    func testEmptyOperands() throws {
        for (nq, nk) in [(0, 5), (4, 0)] {
            let x = try inputs(
                queryHeads: 2, keyValueHeads: 1, queryLength: nq, keyLength: nk, headDimension: 8, valueDimension: 8,
                seed: 2)
            let (q, k, v, dO) = (
                try StoredTensor(x.queries, format: .bfloat16), try StoredTensor(x.keys, format: .bfloat16),
                try StoredTensor(x.values, format: .bfloat16), try StoredTensor(x.outputGradient, format: .bfloat16)
            )
            let forward = try partialAttention(queries: q, keys: k, values: v)
            let grads = try attentionGradients(queries: q, keys: k, values: v, result: forward, outputGradient: dO)
            XCTAssertEqual(grads.queries.shape, [1, 2, nq, 8])
            XCTAssertEqual(grads.keys.shape, [1, 1, nk, 8])
            XCTAssertTrue(grads.queries.scalars.allSatisfy { $0 == 0 })
            XCTAssertTrue(grads.keys.scalars.allSatisfy { $0 == 0 })
            XCTAssertTrue(grads.values.scalars.allSatisfy { $0 == 0 })
        }
    }
}
