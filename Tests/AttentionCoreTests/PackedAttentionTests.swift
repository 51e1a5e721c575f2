import AttentionCore
import XCTest
import _AttentionTestSupport

/// Packed variable-length batches (`packedAttention`): each sequence against the Float64 reference of that
/// sequence alone (masks bottom-right per sequence), bitwise against the per-sequence calls, isolation between
/// sequences, per-token log-sum-exp for chunked prefill, and the errors.
final class PackedAttentionTests: XCTestCase {
    /// Tokens `range` of a packed [T, H, d] tensor as a [1, n, H, d] tensor: the same memory, `.bnhd`.
    func tokenMajor(_ packed: Tensor, _ range: Range<Int>) -> Tensor {
        let row = packed.shape[1] * packed.shape[2]
        return try! Tensor(
            shape: [1, range.count, packed.shape[1], packed.shape[2]],
            scalars: Array(packed.scalars[(range.lowerBound * row)..<(range.upperBound * row)]))
    }

    func packedInputs(
        sequences: PackedSequences, queryHeads: Int, keyValueHeads: Int, headDimension: Int, valueDimension: Int,
        seed: UInt64
    ) throws -> (queries: Tensor, keys: Tensor, values: Tensor) {
        let (tq, tk) = (sequences.queryOffsets.last!, sequences.keyOffsets.last!)
        return (
            try Tensor.randomNormal(shape: [tq, queryHeads, headDimension], seed: seed),
            try Tensor.randomNormal(shape: [tk, keyValueHeads, headDimension], seed: seed + 1),
            try Tensor.randomNormal(shape: [tk, keyValueHeads, valueDimension], seed: seed + 2)
        )
    }

    /// Checks every sequence of a packed result against the Float64 reference of that sequence alone.
    func assertMatchesReference(
        _ result: AttentionResult, _ inputs: (queries: Tensor, keys: Tensor, values: Tensor),
        sequences: PackedSequences, mask: AttentionMask, options: AttentionOptions, _ context: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        let failures = packedReferenceFailures(
            result, queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
            mask: mask, options: options)
        XCTAssertEqual(failures, [], context, file: file, line: line)
    }

    func testEverySequenceMatchesItsOwnReference() throws {
        // Lengths around tile edges, an empty sequence, more keys than queries (a cached prefix).
        let sequences = try PackedSequences(queryLengths: [7, 1, 0, 70, 33, 5], keyLengths: [7, 45, 3, 70, 97, 0])
        let inputs = try packedInputs(
            sequences: sequences, queryHeads: 6, keyValueHeads: 2, headDimension: 13, valueDimension: 9, seed: 71)
        let masks: [AttentionMask] = [.none, .causal, .window(left: 4, right: 0), .sinks(count: 2, window: 5)]
        let kernels: [AttentionKernel] = [.automatic, .blockwise(queryBlock: 5, keyBlock: 7), .blockwise()]
        for mask in masks {
            for kernel in kernels {
                for options in [
                    AttentionOptions(kernel: kernel),
                    AttentionOptions(
                        softcap: 4, alibiSlopes: [0.1, 0.2, 0.3, 0.05, 0.15, 0.25],
                        sinkLogits: [0, 1, -1, 0.5, 2, -2], kernel: kernel),
                ] {
                    let result = try packedAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
                        mask: mask, options: options)
                    XCTAssertEqual(result.output.shape, [116, 6, 9])
                    XCTAssertEqual(result.logSumExp.shape, [116, 6])
                    assertMatchesReference(
                        result, inputs, sequences: sequences, mask: mask, options: options, "\(mask) \(kernel)")
                }
            }
        }
    }

    func testDecodeBatchOfDifferentCacheLengths() throws {
        // Many sequences at once, one new token each, against caches of different lengths: the decode kernel per
        // sequence (with key splits for the long one), bitwise the same for one and two threads.
        let sequences = try PackedSequences(queryLengths: [1, 1, 1, 1, 2], keyLengths: [1, 700, 64, 2049, 9])
        let inputs = try packedInputs(
            sequences: sequences, queryHeads: 8, keyValueHeads: 2, headDimension: 16, valueDimension: 16, seed: 5)
        for kernel in [AttentionKernel.automatic, .decode(keysPerSplit: 128)] {
            var results: [AttentionResult] = []
            for threads in [1, 2] {
                let options = AttentionOptions(kernel: kernel, threads: threads)
                let result = try packedAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
                    mask: .causal, options: options)
                assertMatchesReference(
                    result, inputs, sequences: sequences, mask: .causal, options: options, "\(kernel)")
                results.append(result)
            }
            XCTAssertEqual(results[0].output, results[1].output, "\(kernel)")
            XCTAssertEqual(results[0].logSumExp, results[1].logSumExp, "\(kernel)")
        }
    }

    func testPackedBatchEqualsEachSequenceAloneBitwise() throws {
        // One dispatch over every sequence runs each sequence's own kernel and tiles: the same bits as calling
        // `partialAttention` on each [1, n, H, d] slice (layout .bnhd).
        let sequences = try PackedSequences(lengths: [300, 1, 64, 129, 17])
        let inputs = try packedInputs(
            sequences: sequences, queryHeads: 4, keyValueHeads: 4, headDimension: 32, valueDimension: 32, seed: 9)
        for mask in [AttentionMask.none, .causal] {
            let packed = try packedAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences, mask: mask)
            for b in 0..<sequences.count {
                let range = sequences.queryRange(b)
                let alone = try partialAttention(
                    queries: tokenMajor(inputs.queries, range), keys: tokenMajor(inputs.keys, range),
                    values: tokenMajor(inputs.values, range), mask: mask, options: AttentionOptions(layout: .bnhd))
                XCTAssertEqual(
                    bitwise(tokenMajor(packed.output, range).scalars), bitwise(alone.output.scalars),
                    "sequence \(b) \(mask)")
                let lse = try Tensor(
                    shape: [range.count, 4, 1],
                    scalars: Array(packed.logSumExp.scalars[(range.lowerBound * 4)..<(range.upperBound * 4)]))
                XCTAssertEqual(
                    bitwise(headMajor(lse, 0..<range.count).scalars), bitwise(alone.logSumExp.scalars),
                    "sequence \(b) \(mask)")
            }
        }
    }

    func testRowsStagedPerWorkerGiveTheSameBitsAsTheCallWideCopy() throws {
        // 9 sequences x 4 key/value heads = 36 groups: with two threads each worker stages a group's interleaved
        // rows in its own buffer and runs the group's items (16 groups per thread or more); with three threads the
        // call copies every row once instead. One thread stages too. All three give the same bits, and match the
        // reference.
        let sequences = try PackedSequences(lengths: [200, 3, 65, 130, 64, 1, 97, 150, 40])
        let inputs = try packedInputs(
            sequences: sequences, queryHeads: 8, keyValueHeads: 4, headDimension: 24, valueDimension: 20, seed: 17)
        for mask in [AttentionMask.none, .causal] {
            var results: [AttentionResult] = []
            for threads in [1, 2, 3] {
                let options = AttentionOptions(threads: threads)
                let result = try packedAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
                    mask: mask, options: options)
                assertMatchesReference(
                    result, inputs, sequences: sequences, mask: mask, options: options, "\(mask) \(threads) threads")
                results.append(result)
            }
            for result in results.dropFirst() {
                XCTAssertEqual(bitwise(result.output), bitwise(results[0].output), "\(mask)")
                XCTAssertEqual(bitwise(result.logSumExp), bitwise(results[0].logSumExp), "\(mask)")
            }
        }
    }

    func testNothingCrossesASequenceBoundary() throws {
        // NaN and infinity in one sequence's keys and values never reach another sequence, whose output is the
        // same bits as with clean neighbours.
        let sequences = try PackedSequences(lengths: [40, 23, 70])
        var inputs = try packedInputs(
            sequences: sequences, queryHeads: 2, keyValueHeads: 1, headDimension: 8, valueDimension: 8, seed: 13)
        let clean = try packedAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences, mask: .causal)
        inputs.keys.withUnsafeMutableBufferPointer { k in
            for token in sequences.keyRange(1) { k[token * 8 + 3] = .nan }
        }
        inputs.values.withUnsafeMutableBufferPointer { v in
            for token in sequences.keyRange(1) { v[token * 8 + 5] = .infinity }
        }
        let poisoned = try packedAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences, mask: .causal)
        for b in [0, 2] {
            let rows = (sequences.queryOffsets[b] * 2 * 8)..<(sequences.queryOffsets[b + 1] * 2 * 8)
            XCTAssertEqual(Array(poisoned.output.scalars[rows]), Array(clean.output.scalars[rows]), "sequence \(b)")
        }
        let middle = (sequences.queryOffsets[1] * 2 * 8)..<(sequences.queryOffsets[2] * 2 * 8)
        XCTAssertTrue(poisoned.output.scalars[middle].allSatisfy(\.isNaN))
    }

    func testNonFiniteValuesInInterleavedRowsReachExactlyTheRowsThatSeeThem() throws {
        // Two key/value heads: rows are read in place 2 * d floats apart, so the value quarantine walks strided
        // rows. An infinity in head 1's value at token 10 reaches the rows of head 1's queries from position 10 on
        // (causal) and nothing else: the same as the [1, H, n, d] call, NaN for NaN.
        let sequences = try PackedSequences(lengths: [40, 9])
        var inputs = try packedInputs(
            sequences: sequences, queryHeads: 4, keyValueHeads: 2, headDimension: 8, valueDimension: 8, seed: 17)
        inputs.values.withUnsafeMutableBufferPointer { v in v[(10 * 2 + 1) * 8 + 3] = .infinity }
        let packed = try packedAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences, mask: .causal)
        let range = sequences.queryRange(0)
        let alone = try attention(
            queries: headMajor(inputs.queries, range), keys: headMajor(inputs.keys, range),
            values: headMajor(inputs.values, range), mask: .causal)
        let output = headMajor(packed.output, range)
        XCTAssertEqual(maxAbsoluteError(output.scalars, alone.scalars), 0)
        for head in 0..<4 {
            for query in 0..<40 {
                let row = Array(output.scalars[((head * 40 + query) * 8)..<((head * 40 + query + 1) * 8)])
                XCTAssertEqual(row.allSatisfy(\.isFinite), head < 2 || query < 10, "head \(head) query \(query)")
            }
        }
    }

    func testSequencesWithoutKeysGiveZerosOrTheirSink() throws {
        let sequences = try PackedSequences(queryLengths: [3, 2], keyLengths: [0, 4])
        let inputs = try packedInputs(
            sequences: sequences, queryHeads: 2, keyValueHeads: 2, headDimension: 4, valueDimension: 3, seed: 3)
        let plain = try packedAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences)
        XCTAssertEqual(Array(plain.output.scalars[0..<18]), [Float](repeating: 0, count: 18))
        XCTAssertEqual(Array(plain.logSumExp.scalars[0..<6]), [Float](repeating: -.infinity, count: 6))
        let sinks = try packedAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
            options: AttentionOptions(sinkLogits: [0.5, -1]))
        XCTAssertEqual(Array(sinks.output.scalars[0..<18]), [Float](repeating: 0, count: 18))
        XCTAssertEqual(Array(sinks.logSumExp.scalars[0..<6]), [0.5, -1, 0.5, -1, 0.5, -1])
        // No sequences at all, or only empty ones.
        let none = try packedAttention(
            queries: try Tensor(zeros: [0, 2, 4]), keys: try Tensor(zeros: [0, 1, 4]),
            values: try Tensor(zeros: [0, 1, 3]),
            sequences: try PackedSequences(lengths: [0, 0]))
        XCTAssertEqual(none.output.shape, [0, 2, 3])
    }

    func testChunkedPrefillMergesPerToken() throws {
        // Each sequence's keys in two packed chunks: a cached prefix that every query sees, then the queries' own
        // tokens under the causal mask. Merging the two packed results per token equals one call over all keys.
        let prefix = [5, 0, 70]
        let own = [9, 31, 2]
        let all = try PackedSequences(queryLengths: own, keyLengths: zip(prefix, own).map(+))
        let inputs = try packedInputs(
            sequences: all, queryHeads: 4, keyValueHeads: 2, headDimension: 16, valueDimension: 8, seed: 21)
        func keysOf(_ tensor: Tensor, _ part: (Int) -> Range<Int>) -> Tensor {
            let row = tensor.shape[1] * tensor.shape[2]
            var scalars: [Float] = []
            for b in 0..<all.count {
                let range = part(b)
                scalars +=
                    tensor.scalars[
                        ((all.keyOffsets[b] + range.lowerBound) * row)..<((all.keyOffsets[b] + range.upperBound) * row)]
            }
            return try! Tensor(shape: [scalars.count / row, tensor.shape[1], tensor.shape[2]], scalars: scalars)
        }
        let first = try packedAttention(
            queries: inputs.queries, keys: keysOf(inputs.keys) { 0..<prefix[$0] },
            values: keysOf(inputs.values) { 0..<prefix[$0] },
            sequences: try PackedSequences(queryLengths: own, keyLengths: prefix))
        let second = try packedAttention(
            queries: inputs.queries, keys: keysOf(inputs.keys) { prefix[$0]..<(prefix[$0] + own[$0]) },
            values: keysOf(inputs.values) { prefix[$0]..<(prefix[$0] + own[$0]) },
            sequences: try PackedSequences(lengths: own), mask: .causal)
        let merged = try mergeAttention(first, second)
        XCTAssertEqual(merged.output.shape, [42, 4, 8])
        assertMatchesReference(merged, inputs, sequences: all, mask: .causal, options: AttentionOptions(), "merged")
    }

    func testPackedCallIntoAReusedOutput() throws {
        // Rows staged per worker (36 groups on one thread), the call-wide copy (three threads: 12 groups each) and
        // a one-token sequence over 900 keys (the decode kernel): the output written into a reused tensor equals
        // the new result bitwise, its old contents (NaN) never leak, a tensor sharing the storage keeps its values,
        // and the log-sum-exp comes back.
        let sequences = try PackedSequences(
            queryLengths: [70, 1, 0, 33, 5, 129], keyLengths: [70, 900, 3, 97, 5, 129])
        let inputs = try packedInputs(
            sequences: sequences, queryHeads: 12, keyValueHeads: 6, headDimension: 16, valueDimension: 8, seed: 91)
        for threads in [1, 3] {
            let options = AttentionOptions(threads: threads)
            let expected = try packedAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
                mask: .causal, options: options)
            var output = try Tensor(shape: expected.output.shape, repeating: .nan)
            let alias = output
            for _ in 0..<2 {
                let logSumExp = try packedAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
                    mask: .causal, options: options, into: &output)
                XCTAssertEqual(bitwise(output), bitwise(expected.output), "threads \(threads)")
                XCTAssertEqual(bitwise(logSumExp), bitwise(expected.logSumExp), "threads \(threads)")
            }
            XCTAssertTrue(alias.scalars.allSatisfy(\.isNaN))
            assertMatchesReference(
                AttentionResult(output: output, logSumExp: expected.logSumExp, workspaceBytes: 0), inputs,
                sequences: sequences, mask: .causal, options: options, "into, threads \(threads)")
        }
        // A wrong output shape, or a call that is invalid in itself, throws and leaves the output as it was.
        for (shape, argumentName) in [([238, 12, 9], "output"), ([238, 12, 8], "options.keyPadding")] {
            var kept = try Tensor(shape: shape, repeating: 7)
            XCTAssertThrowsError(
                try packedAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, sequences: sequences,
                    options: AttentionOptions(keyPadding: argumentName == "output" ? nil : .lengths([1])),
                    into: &kept)
            ) { error in
                XCTAssertEqual((error as? AttentionError)?.argument, argumentName)
                if argumentName == "output" { XCTAssertTrue("\(error)".contains("[238, 12, 8]"), "\(error)") }
            }
            XCTAssertEqual(kept.shape, shape)
            XCTAssertTrue(kept.scalars.allSatisfy { $0 == 7 })
        }
    }

    func testInvalidPackedCallsThrowNamingTheArgument() throws {
        XCTAssertThrowsError(try PackedSequences(queryOffsets: [1, 3], keyOffsets: [0, 3])) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "queryOffsets[0]")
        }
        XCTAssertThrowsError(try PackedSequences(queryOffsets: [0, 4, 3], keyOffsets: [0, 1, 2])) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "queryOffsets[2]")
        }
        XCTAssertThrowsError(try PackedSequences(queryOffsets: [0, 4], keyOffsets: [0, 1, 2])) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "keyOffsets.count")
        }
        XCTAssertThrowsError(try PackedSequences(lengths: [3, -1])) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "lengths[1]")
        }
        let sequences = try PackedSequences(lengths: [3, 5])
        let q = try Tensor(zeros: [8, 4, 8])
        let kv = try Tensor(zeros: [8, 2, 8])
        func argument(_ body: () throws -> Void) -> String? {
            do { try body() } catch let error as AttentionError { return error.argument } catch { return "\(error)" }
            return nil
        }
        XCTAssertEqual(
            argument {
                _ = try packedAttention(
                    queries: try Tensor(zeros: [7, 4, 8]), keys: kv, values: kv, sequences: sequences)
            },
            "queries")
        XCTAssertEqual(
            argument {
                _ = try packedAttention(
                    queries: q, keys: try Tensor(zeros: [8, 3, 8]), values: kv, sequences: sequences)
            },
            "keys")
        XCTAssertEqual(
            argument {
                _ = try packedAttention(
                    queries: q, keys: kv, values: try Tensor(zeros: [9, 2, 8]), sequences: sequences)
            },
            "values")
        XCTAssertEqual(
            argument {
                _ = try packedAttention(
                    queries: q, keys: kv, values: kv, sequences: sequences,
                    options: AttentionOptions(bias: try Tensor(zeros: [1, 1, 1, 8])))
            }, "options.bias")
        XCTAssertEqual(
            argument {
                _ = try packedAttention(
                    queries: q, keys: kv, values: kv, sequences: sequences, options: AttentionOptions(kernel: .naive))
            }, "options.kernel")
        // Padding and layouts: a packed batch has neither; each option alone is rejected by its own name.
        let rejected: [(AttentionOptions, String)] = [
            (AttentionOptions(keyPadding: .lengths([3, 5])), "options.keyPadding"),
            (AttentionOptions(queryPadding: .lengths([3, 5])), "options.queryPadding"),
            (AttentionOptions(layout: .bnhd), "options.layout"),
            (AttentionOptions(outputLayout: .bnhd), "options.outputLayout"),
        ]
        for (options, name) in rejected {
            XCTAssertEqual(
                argument {
                    _ = try packedAttention(queries: q, keys: kv, values: kv, sequences: sequences, options: options)
                }, name)
        }
        // A block-sparse layout fits one sequence's lengths, not the other's: the error names the sequence.
        let layout = try BlockSparseLayout(
            queryBlock: 1, keyBlock: 1, queryLength: 3, keyLength: 3, blocks: [[0], [1], [2]])
        let message = argument {
            _ = try packedAttention(queries: q, keys: kv, values: kv, sequences: sequences, mask: .blockSparse(layout))
        }
        XCTAssertTrue(message?.hasSuffix("(sequence 1 of the packed batch)") == true, message ?? "no error")
        // .decode needs G * Nq <= 16 in every sequence: 2 x 9 is too many rows in sequence 1.
        let decodeMessage = argument {
            _ = try packedAttention(
                queries: try Tensor(zeros: [11, 4, 8]), keys: try Tensor(zeros: [11, 2, 8]),
                values: try Tensor(zeros: [11, 2, 8]), sequences: try PackedSequences(lengths: [2, 9]),
                options: AttentionOptions(kernel: .decode()))
        }
        XCTAssertEqual(decodeMessage, "options.kernel (sequence 1 of the packed batch)")
    }
}
