import AttentionCore
import XCTest
import _AttentionTestSupport

/// `packedAttentionGradients` against the Float64 reference backward of each sequence alone (test support's
/// textbook backward on that sequence's head-major rows); bitwise equality with `attentionGradients` per sequence
/// (sink gradients: their sum) and across thread counts; nothing crosses a sequence boundary; empty sequences;
/// errors.
final class PackedBackwardTests: XCTestCase {
    /// A packed batch: queries [Tq, Hq, dk], keys [Tk, Hkv, dk], values [Tk, Hkv, dv], dO [Tq, Hq, dv].
    struct Batch {
        var sequences: PackedSequences
        var queries, keys, values, outputGradient: Tensor
    }

    func batch(
        queryLengths: [Int], keyLengths: [Int], queryHeads: Int, keyValueHeads: Int, headDimension: Int,
        valueDimension: Int? = nil, seed: UInt64
    ) throws -> Batch {
        let dv = valueDimension ?? headDimension
        let (tq, tk) = (queryLengths.reduce(0, +), keyLengths.reduce(0, +))
        return Batch(
            sequences: try PackedSequences(queryLengths: queryLengths, keyLengths: keyLengths),
            queries: try Tensor.randomNormal(shape: [tq, queryHeads, headDimension], seed: seed),
            keys: try Tensor.randomNormal(shape: [tk, keyValueHeads, headDimension], seed: seed &+ 1),
            values: try Tensor.randomNormal(shape: [tk, keyValueHeads, dv], seed: seed &+ 2),
            outputGradient: try Tensor.randomNormal(shape: [tq, queryHeads, dv], seed: seed &+ 3))
    }

    func gradients(_ x: Batch, mask: AttentionMask, options: AttentionOptions) throws -> AttentionGradients {
        let forward = try packedAttention(
            queries: x.queries, keys: x.keys, values: x.values, sequences: x.sequences, mask: mask, options: options)
        return try packedAttentionGradients(
            queries: x.queries, keys: x.keys, values: x.values, sequences: x.sequences, result: forward,
            outputGradient: x.outputGradient, mask: mask, options: options)
    }

    /// Rows `range` of a packed [T, H, d] tensor's gradient, head-major (the reference's order), as Floats.
    func rows(_ packed: Tensor, _ range: Range<Int>) -> [Float] { headMajor(packed, range).scalars }

    func testEverySequenceMatchesItsOwnReference() throws {
        // Odd lengths (a sequence with more keys than queries: a cached prefix), GQA (token-major rows of several
        // heads, staged per item) and one head (consecutive rows, read in place), masks of every shape a packed
        // call takes (none, causal, window, sinks, a predicate, an intersection, per-head masks), sinks, softcap
        // and ALiBi; each sequence's dQ, dK, dV against the Float64 reference backward of it alone, and the sink
        // gradients against the reference's summed over the sequences.
        for (hq, hkv) in [(6, 2), (1, 1)] {
            let x = try batch(
                queryLengths: [5, 70, 1, 33], keyLengths: [5, 90, 40, 33], queryHeads: hq, keyValueHeads: hkv,
                headDimension: 24, valueDimension: 17, seed: UInt64(3 + hq))
            var options = AttentionOptions(softcap: 20, threads: 2)
            options.sinkLogits = Array([0.5, -1, 0, 2, 1, -0.5].prefix(hq))
            options.alibiSlopes = Array([0.1, 0.2, 0.05, 0.3, 0, 0.15].prefix(hq))
            var perHead = options
            perHead.headMasks = (0..<hq).map { $0 % 2 == 0 ? .window(left: 4, right: 0) : .none }
            let masks: [(AttentionMask, AttentionOptions)] = [
                (.none, options), (.causal, options), (.window(left: 9, right: 2), options),
                (.sinks(count: 3, window: 12), options), (.custom { q, k in (q + k) % 3 != 0 }, options),
                (.intersection(.causal, .custom { _, k in k % 4 != 1 }), options), (.causal, perHead),
            ]
            for (mask, options) in masks {
                try checkSequences(x, mask: mask, options: options, heads: hq)
            }
        }
    }

    /// Each sequence's gradients (and the summed sink gradients) against the Float64 reference of it alone.
    func checkSequences(_ x: Batch, mask: AttentionMask, options: AttentionOptions, heads hq: Int) throws {
        let checks = packedGradientChecks(
            try gradients(x, mask: mask, options: options), queries: x.queries, keys: x.keys, values: x.values,
            outputGradient: x.outputGradient, sequences: x.sequences, mask: mask, options: options)
        XCTAssertEqual(checks.count, 3 * x.sequences.count + (options.sinkLogits == nil ? 0 : 1))
        for (name, check) in checks.sorted(by: { $0.key < $1.key }) {
            XCTAssertTrue(check.passes, "\(name): \(check)")
        }
    }

    func testStoredBatchesAreTheDecodedBatchesBitwiseAndMatchTheReference() throws {
        // Stored packed tensors (Float16 / BFloat16 queries and output gradient, keys and values in every format):
        // the forward and the backward are bitwise the Float32 packed calls on the decoded tensors for 1 and 3
        // threads, and each sequence's gradients match the Float64 reference on the stored values (rounded by test
        // support). Quantized queries or output gradient are refused by name.
        let x = try batch(
            queryLengths: [5, 70, 1, 33], keyLengths: [5, 90, 40, 33], queryHeads: 6, keyValueHeads: 2,
            headDimension: 24, valueDimension: 16, seed: 41)
        let formats: [(StorageFormat, StorageFormat, StorageFormat)] = [
            (.bfloat16, .bfloat16, .bfloat16), (.float16, .int8(blockSize: 8), .int4(blockSize: 8)),
            (.bfloat16, .float16, .float32),
        ]
        var checked = 0
        for (activations, keyFormat, valueFormat) in formats {
            guard let roundedQ = roundedThrough(activations, x.queries) else { continue }  // no Float16 here
            let label = "\(activations) / \(keyFormat) / \(valueFormat)"
            let q = try StoredTensor(x.queries, format: activations)
            let k = try StoredTensor(x.keys, format: keyFormat)
            let v = try StoredTensor(x.values, format: valueFormat)
            let dO = try StoredTensor(x.outputGradient, format: activations)
            let decoded = Batch(
                sequences: x.sequences, queries: Tensor(q), keys: Tensor(k), values: Tensor(v),
                outputGradient: Tensor(dO))
            var options = AttentionOptions(threads: 1)
            options.sinkLogits = [0.5, -1, 0, 2, 1, -0.5]
            let expectedForward = try packedAttention(
                queries: decoded.queries, keys: decoded.keys, values: decoded.values, sequences: x.sequences,
                mask: .causal, options: options)
            let expected = try gradients(decoded, mask: .causal, options: options)
            for threads in [1, 3] {
                options.threads = threads
                let forward = try packedAttention(
                    queries: q, keys: k, values: v, sequences: x.sequences, mask: .causal, options: options)
                XCTAssertEqual(bitwise(forward.output), bitwise(expectedForward.output), label)
                XCTAssertEqual(bitwise(forward.logSumExp), bitwise(expectedForward.logSumExp), label)
                let stored = try packedAttentionGradients(
                    queries: q, keys: k, values: v, sequences: x.sequences, result: forward, outputGradient: dO,
                    mask: .causal, options: options)
                XCTAssertEqual(bitwise(stored.queries), bitwise(expected.queries), label)
                XCTAssertEqual(bitwise(stored.keys), bitwise(expected.keys), label)
                XCTAssertEqual(bitwise(stored.values), bitwise(expected.values), label)
                XCTAssertEqual(stored.sinkLogits.map(bitwise), expected.sinkLogits.map(bitwise), label)
                if threads == 1 {
                    let checks = packedGradientChecks(
                        stored, queries: roundedQ, keys: roundedThrough(keyFormat, x.keys)!,
                        values: roundedThrough(valueFormat, x.values)!,
                        outputGradient: roundedThrough(activations, x.outputGradient)!, sequences: x.sequences,
                        mask: .causal, options: options)
                    XCTAssertEqual(checks.count, 3 * x.sequences.count + 1, label)
                    for (name, check) in checks.sorted(by: { $0.key < $1.key }) {
                        XCTAssertTrue(check.passes, "\(label), \(name): \(check)")
                    }
                }
            }
            checked += 1
            let forward = try packedAttention(queries: q, keys: k, values: v, sequences: x.sequences)
            func argument(_ body: () throws -> Void) -> String? {
                do {
                    try body()
                    return nil
                } catch { return (error as? AttentionError)?.argument }
            }
            let quantized = try StoredTensor(x.queries, format: .int8(blockSize: 8))
            XCTAssertEqual(
                argument { _ = try packedAttention(queries: quantized, keys: k, values: v, sequences: x.sequences) },
                "queries.format")
            XCTAssertEqual(
                argument {
                    _ = try packedAttentionGradients(
                        queries: q, keys: k, values: v, sequences: x.sequences, result: forward,
                        outputGradient: try StoredTensor(x.outputGradient, format: .int4(blockSize: 8)))
                }, "outputGradient.format")
        }
        XCTAssertGreaterThanOrEqual(checked, 2)
    }

    func testEachSequenceIsBitwiseItsOwnCallForEveryThreadCount() throws {
        // Two key/value heads, 1, 2, 3 and 8 threads: the (sequence, head) items land on different workers.
        let x = try batch(
            queryLengths: [64, 3, 130, 0, 17], keyLengths: [64, 40, 130, 7, 0], queryHeads: 4, keyValueHeads: 2,
            headDimension: 16, seed: 11)
        var options = AttentionOptions()
        options.sinkLogits = [0, 1, -1, 0.5]
        let runs = try [1, 2, 3, 8].map { threads in
            options.threads = threads
            return try gradients(x, mask: .causal, options: options)
        }
        for run in runs.dropFirst() {
            XCTAssertEqual(bitwise(run.queries), bitwise(runs[0].queries))
            XCTAssertEqual(bitwise(run.keys), bitwise(runs[0].keys))
            XCTAssertEqual(bitwise(run.values), bitwise(runs[0].values))
            XCTAssertEqual(run.sinkLogits.map(bitwise), runs[0].sinkLogits.map(bitwise))
        }
        options.threads = 1
        var ownSinks = [Float](repeating: 0, count: 4)
        for b in 0..<x.sequences.count {
            let (qs, ks) = (x.sequences.queryRange(b), x.sequences.keyRange(b))
            if qs.isEmpty || ks.isEmpty {
                // No keys or no queries: nothing to learn from this sequence.
                XCTAssertTrue(rows(runs[0].queries, qs).allSatisfy { $0 == 0 }, "sequence \(b)")
                XCTAssertTrue(rows(runs[0].keys, ks).allSatisfy { $0 == 0 }, "sequence \(b)")
                XCTAssertTrue(rows(runs[0].values, ks).allSatisfy { $0 == 0 }, "sequence \(b)")
                continue
            }
            let (q, k, v) = (headMajor(x.queries, qs), headMajor(x.keys, ks), headMajor(x.values, ks))
            let alone = try partialAttention(queries: q, keys: k, values: v, mask: .causal, options: options)
            let own = try attentionGradients(
                queries: q, keys: k, values: v, result: alone, outputGradient: headMajor(x.outputGradient, qs),
                mask: .causal, options: options)
            XCTAssertEqual(bitwise(rows(runs[0].queries, qs)), bitwise(own.queries.scalars), "sequence \(b)")
            XCTAssertEqual(bitwise(rows(runs[0].keys, ks)), bitwise(own.keys.scalars), "sequence \(b)")
            XCTAssertEqual(bitwise(rows(runs[0].values, ks)), bitwise(own.values.scalars), "sequence \(b)")
            ownSinks = zip(ownSinks, own.sinkLogits!).map { $0 + $1 }
        }
        // The sink gradients: the per-sequence calls' summed in sequence order.
        XCTAssertEqual(runs[0].sinkLogits.map(bitwise), bitwise(ownSinks))
    }

    func testNoGradientCrossesASequenceBoundary() throws {
        // Changing one sequence's values and output gradient changes no other sequence's gradients, bit for bit.
        var x = try batch(
            queryLengths: [20, 30, 25], keyLengths: [20, 30, 25], queryHeads: 2, keyValueHeads: 1, headDimension: 8,
            seed: 5)
        let before = try gradients(x, mask: .none, options: AttentionOptions(threads: 2))
        let middle = (x.sequences.keyRange(1), x.sequences.queryRange(1))
        x.values = try Tensor(shape: x.values.shape) { i in
            middle.0.contains(i[0]) ? 1000 * x.values[i[0], i[1], i[2]] : x.values[i[0], i[1], i[2]]
        }
        x.outputGradient = try Tensor(shape: x.outputGradient.shape) { i in
            middle.1.contains(i[0]) ? -x.outputGradient[i[0], i[1], i[2]] : x.outputGradient[i[0], i[1], i[2]]
        }
        let after = try gradients(x, mask: .none, options: AttentionOptions(threads: 2))
        for b in [0, 2] {
            let (qs, ks) = (x.sequences.queryRange(b), x.sequences.keyRange(b))
            XCTAssertEqual(bitwise(rows(after.queries, qs)), bitwise(rows(before.queries, qs)), "sequence \(b)")
            XCTAssertEqual(bitwise(rows(after.keys, ks)), bitwise(rows(before.keys, ks)), "sequence \(b)")
            XCTAssertEqual(bitwise(rows(after.values, ks)), bitwise(rows(before.values, ks)), "sequence \(b)")
        }
        XCTAssertNotEqual(bitwise(rows(after.keys, middle.0)), bitwise(rows(before.keys, middle.0)))
    }

    func testBadInputNamesTheArgument() throws {
        let x = try batch(
            queryLengths: [3, 4], keyLengths: [3, 4], queryHeads: 2, keyValueHeads: 1, headDimension: 8, seed: 1)
        let forward = try packedAttention(
            queries: x.queries, keys: x.keys, values: x.values, sequences: x.sequences)
        func argument(
            result: AttentionResult? = nil, outputGradient: Tensor? = nil, mask: AttentionMask = .none,
            options: AttentionOptions = AttentionOptions()
        ) -> String? {
            do {
                _ = try packedAttentionGradients(
                    queries: x.queries, keys: x.keys, values: x.values, sequences: x.sequences,
                    result: result ?? forward, outputGradient: outputGradient ?? x.outputGradient, mask: mask,
                    options: options)
                return nil
            } catch {
                return (error as? AttentionError)?.argument
            }
        }
        XCTAssertNil(argument())
        XCTAssertEqual(argument(outputGradient: try Tensor(zeros: [7, 2, 7])), "outputGradient")
        XCTAssertEqual(
            argument(result: AttentionResult(output: try Tensor(zeros: [7, 1, 8]), logSumExp: forward.logSumExp)),
            "result.output")
        XCTAssertEqual(
            argument(result: AttentionResult(output: forward.output, logSumExp: try Tensor(zeros: [7, 2, 1]))),
            "result.logSumExp")
        var bias = AttentionOptions()
        bias.bias = try Tensor(zeros: [1, 1, 1, 7])
        XCTAssertEqual(argument(options: bias), "options.bias")
        XCTAssertEqual(argument(options: AttentionOptions(kernel: .naive)), "options.kernel")
        // A block-sparse layout that fits sequence 0's lengths, not sequence 1's: the error names the sequence.
        let layout = try BlockSparseLayout(
            queryBlock: 1, keyBlock: 1, queryLength: 3, keyLength: 3, blocks: [[0], [1], [2]])
        let message = argument(mask: .blockSparse(layout))
        XCTAssertTrue(message?.hasSuffix("(sequence 1 of the packed batch)") == true, message ?? "no error")
    }
}
