import AttentionCore
import XCTest
import _AttentionTestSupport

/// Key padding (`AttentionOptions.keyPadding`), bias broadcasting over queries, and keys removed by a -infinity
/// bias, on every kernel, against the Float64 reference (whose visibility is written out in test support).
final class SequencePaddingTests: XCTestCase {
    let kernels: [AttentionKernel] = [
        .automatic, .naive, .blockwise(queryBlock: 5, keyBlock: 7), .blockwise(queryBlock: 64, keyBlock: 64),
    ]

    /// Sets element [b, h, n, c] of a rank-4 tensor.
    func set(_ tensor: inout Tensor, _ index: [Int], _ value: Float) {
        let offset = tensor.offset(of: index)
        tensor.withUnsafeMutableBufferPointer { $0[offset] = value }
    }

    // MARK: The -infinity bias

    func testNaNKeyBehindMinusInfinityBiasNeverReachesTheRow() throws {
        // The reproducer: q = [1, 0]; k = [[1, 0], [NaN, 1]]; v = [[1, 2], [3, 4]]; bias [0, -inf] gives [1, 2], as
        // `.custom { _, j in j == 0 }` does.
        let q = try Tensor(shape: [1, 1, 1, 2], scalars: [1, 0])
        let k = try Tensor(shape: [1, 1, 2, 2], scalars: [1, 0, .nan, 1])
        let v = try Tensor(shape: [1, 1, 2, 2], scalars: [1, 2, 3, 4])
        let bias = try Tensor(shape: [1, 1, 1, 2], scalars: [0, -.infinity])
        for kernel in kernels + [.decode(), .decode(keysPerSplit: 1)] {
            let result = try partialAttention(
                queries: q, keys: k, values: v, options: AttentionOptions(bias: bias, kernel: kernel))
            XCTAssertEqual(result.output.scalars, [1, 2], "\(kernel)")
            XCTAssertEqual(result.logSumExp.scalars, [1 / Float(2).squareRoot()], "\(kernel)")
            let masked = try attention(queries: q, keys: k, values: v, mask: .custom { _, j in j == 0 })
            XCTAssertEqual(result.output, masked, "\(kernel)")
        }
    }

    func testNonFiniteKeysAndValuesBehindMinusInfinityBiasNeverReachTheOutput() throws {
        // Columns 3 and 40 are removed by the bias for every row; their keys hold NaN and infinity, their values
        // infinity and NaN. With softcap and ALiBi on too, the -inf still removes them.
        let nk = 71
        var inputs = try attentionInputs(
            batch: 2, queryHeads: 4, keyValueHeads: 2, queryLength: 9, keyLength: nk, headDimension: 13, seed: 41)
        let bias = try Tensor(shape: [2, 1, 1, nk]) { i in i[3] == 3 || i[3] == 40 ? -.infinity : Float(i[3] % 5) }
        for b in 0..<2 {
            for h in 0..<2 {
                set(&inputs.keys, [b, h, 3, 5], .nan)
                set(&inputs.keys, [b, h, 40, 0], .infinity)
                set(&inputs.values, [b, h, 3, 2], .infinity)
                set(&inputs.values, [b, h, 40, 7], .nan)
            }
        }
        for kernel in kernels {
            for options in [
                AttentionOptions(bias: bias, kernel: kernel),
                AttentionOptions(softcap: 3, alibiSlopes: [0.1, 0.2, 0.3, 0.4], bias: bias, kernel: kernel),
            ] {
                let output = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options)
                XCTAssertTrue(output.scalars.allSatisfy(\.isFinite), "\(kernel)")
                try assertMatchesReference(inputs, mask: .causal, options: options)
            }
        }
    }

    func testBiasBroadcastsOverQueries() throws {
        // A [B, 1, 1, Nk] bias (the shape of a key-padding mask) and a [1, Hq, 1, Nk] one, against the reference
        // and against the same bias expanded over the queries.
        let (nq, nk) = (23, 50)
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 6, keyValueHeads: 3, queryLength: nq, keyLength: nk, headDimension: 24, seed: 5)
        for shape in [[2, 1, 1, nk], [1, 6, 1, nk]] {
            let bias = try Tensor.randomNormal(shape: shape, seed: 8)
            let expanded = try Tensor(shape: [shape[0], shape[1], nq, nk]) { i in bias[i[0], i[1], 0, i[3]] }
            for kernel in kernels {
                try assertMatchesReference(inputs, mask: .causal, options: AttentionOptions(bias: bias, kernel: kernel))
                let broadcast = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
                    options: AttentionOptions(bias: bias, kernel: kernel))
                let full = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal,
                    options: AttentionOptions(bias: expanded, kernel: kernel))
                XCTAssertEqual(broadcast, full, "\(shape) \(kernel)")
            }
        }
    }

    // MARK: Key padding

    /// The three ways to say "sequence 0 has 37 real keys, sequence 1 none, sequence 2 all 70, sequence 3 keys
    /// 20..<61".
    let paddings: [(String, SequencePadding)] = [
        ("lengths", .lengths([37, 0, 70, 61])),
        ("ranges", .ranges([0..<37, 5..<5, 0..<70, 20..<61])),
        (
            "realTokens",
            .realTokens(
                (0..<4).flatMap { b in
                    (0..<70).map { j in [j < 37, false, true, j >= 20 && j < 61][b] }
                })
        ),
    ]

    func testSequencePaddingMatchesTheReference() throws {
        let (nq, nk) = (29, 70)
        let inputs = try attentionInputs(
            batch: 4, queryHeads: 4, keyValueHeads: 2, queryLength: nq, keyLength: nk, headDimension: 19, seed: 7)
        let masks: [AttentionMask] = [
            .none, .causal, .window(left: 9, right: 2), .sinks(count: 3, window: 11),
            .custom { q, k in (q + k) % 3 != 0 },
        ]
        for (name, padding) in paddings {
            for mask in masks {
                for kernel in kernels {
                    try assertMatchesReference(
                        inputs, mask: mask, options: AttentionOptions(keyPadding: padding, kernel: kernel, threads: 3))
                }
                // With learned sinks, ALiBi and a bias on top.
                try assertMatchesReference(
                    inputs, mask: mask,
                    options: AttentionOptions(
                        alibiSlopes: [0.1, 0.2, 0.3, 0.4],
                        bias: try Tensor.randomNormal(shape: [4, 1, 1, nk], seed: 2),
                        keyPadding: padding, sinkLogits: [0, 1, -1, 2]))
            }
            // The sequence with no real keys: zeros and log-sum-exp -inf.
            let result = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                options: AttentionOptions(keyPadding: padding))
            let dv = 19
            let perBatch = 4 * nq
            XCTAssertTrue(result.output.scalars[(perBatch * dv)..<(2 * perBatch * dv)].allSatisfy { $0 == 0 }, name)
            XCTAssertTrue(result.logSumExp.scalars[perBatch..<(2 * perBatch)].allSatisfy { $0 == -.infinity }, name)
        }
    }

    func testSequencePaddingOnTheDecodeKernelAndCaches() throws {
        // One new token per sequence (4 query heads per key/value head), split over several workers.
        let nk = 301
        let inputs = try attentionInputs(
            batch: 3, queryHeads: 8, keyValueHeads: 2, queryLength: 1, keyLength: nk, headDimension: 64, seed: 11)
        let padding = SequencePadding.lengths([301, 17, 150])
        for kernel in [AttentionKernel.decode(), .decode(keysPerSplit: 40), .automatic] {
            try assertMatchesReference(
                inputs, options: AttentionOptions(keyPadding: padding, kernel: kernel, threads: 2))
        }
        var cache = try KVCache(batch: 3, keyValueHeads: 2, headDimension: 64)
        try cache.append(keys: inputs.keys, values: inputs.values)
        let cached = try cache.attention(queries: inputs.queries, options: AttentionOptions(keyPadding: padding))
        let direct = try attention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values,
            options: AttentionOptions(keyPadding: padding))
        XCTAssertEqual(cached, direct)
    }

    func testPaddedCallEqualsEachSequenceAtItsTrueLength() throws {
        // Right padding with NaN and infinity in the padding: each sequence's rows equal (bitwise) a call on that
        // sequence alone at its true key length, on every thread count.
        let (nq, nk, d) = (40, 130, 32)
        let lengths = [130, 64, 1, 97]
        var inputs = try attentionInputs(
            batch: 4, queryHeads: 2, queryLength: nq, keyLength: nk, headDimension: d, seed: 13)
        for (b, length) in lengths.enumerated() {
            for h in 0..<2 {
                for j in length..<nk {
                    set(&inputs.keys, [b, h, j, j % d], .nan)
                    set(&inputs.values, [b, h, j, (j + 1) % d], j % 2 == 0 ? .infinity : .nan)
                }
            }
        }
        for kernel in [AttentionKernel.blockwise(), .naive, .blockwise(queryBlock: 3, keyBlock: 16)] {
            for threads in [1, 2] {
                let padded = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                    options: AttentionOptions(keyPadding: .lengths(lengths), kernel: kernel, threads: threads))
                XCTAssertTrue(padded.scalars.allSatisfy(\.isFinite), "\(kernel)")
                for (b, length) in lengths.enumerated() {
                    let alone = try attention(
                        queries: slice(inputs.queries, batch: b, keys: nq),
                        keys: slice(inputs.keys, batch: b, keys: length),
                        values: slice(inputs.values, batch: b, keys: length),
                        options: AttentionOptions(kernel: kernel, threads: threads))
                    XCTAssertEqual(
                        bitwise(slice(padded, batch: b, keys: nq)), bitwise(alone), "batch \(b), \(kernel), \(threads)")
                }
            }
        }
    }

    func testSelfAttentionPaddedBatchEqualsEachSequenceAlone() throws {
        // Queries and keys padded alike (an encoder batch, right padding, garbage in the padding): each sequence's
        // real rows equal (bitwise) the sequence run alone at its true length, padding rows are zeros with
        // log-sum-exp -inf, for no mask and causal, on every thread count.
        let (n, d) = (130, 24)
        let lengths = [130, 64, 1, 97, 0]
        var inputs = try attentionInputs(
            batch: 5, queryHeads: 4, keyValueHeads: 2, queryLength: n, keyLength: n, headDimension: d, seed: 17)
        for (b, length) in lengths.enumerated() {
            for j in length..<n {
                for h in 0..<4 { set(&inputs.queries, [b, h, j, 0], .nan) }
                for h in 0..<2 {
                    set(&inputs.keys, [b, h, j, 1], .infinity)
                    set(&inputs.values, [b, h, j, 2], .nan)
                }
            }
        }
        let padding = SequencePadding.lengths(lengths)
        for mask in [AttentionMask.none, .causal] {
            for kernel in [AttentionKernel.blockwise(), .naive, .blockwise(queryBlock: 3, keyBlock: 16)] {
                for threads in [1, 2] {
                    let options = AttentionOptions(
                        keyPadding: padding, queryPadding: padding, kernel: kernel, threads: threads)
                    let padded = try partialAttention(
                        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask, options: options)
                    for (b, length) in lengths.enumerated() {
                        let label = "batch \(b), \(mask), \(kernel), \(threads) threads"
                        let alone = try partialAttention(
                            queries: slice(inputs.queries, batch: b, keys: length),
                            keys: slice(inputs.keys, batch: b, keys: length),
                            values: slice(inputs.values, batch: b, keys: length), mask: mask,
                            options: AttentionOptions(kernel: kernel, threads: threads))
                        for h in 0..<4 {
                            for i in 0..<n {
                                let lse = padded.logSumExp[b, h, i]
                                if i < length {
                                    XCTAssertEqual(lse, alone.logSumExp[0, h, i], label)
                                    for c in 0..<d {
                                        XCTAssertEqual(padded.output[b, h, i, c], alone.output[0, h, i, c], label)
                                    }
                                } else {
                                    XCTAssertEqual(lse, -.infinity, label)
                                    for c in 0..<d { XCTAssertEqual(padded.output[b, h, i, c], 0, label) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    func testQueryPaddingMatchesTheReference() throws {
        // Every form, with key padding alike or none, masks, the decode kernel for short rows, and learned sinks
        // (a padding row's log-sum-exp is then its sink logit).
        let n = 70
        let inputs = try attentionInputs(
            batch: 4, queryHeads: 4, keyValueHeads: 2, queryLength: n, keyLength: n, headDimension: 9, seed: 19)
        for (_, padding) in paddings {
            for keyPadding in [padding, nil] {
                for mask in [AttentionMask.none, .causal, .window(left: 5, right: 5)] {
                    for kernel in kernels {
                        try assertMatchesReference(
                            inputs, mask: mask,
                            options: AttentionOptions(keyPadding: keyPadding, queryPadding: padding, kernel: kernel))
                    }
                }
                try assertMatchesReference(
                    inputs,
                    options: AttentionOptions(keyPadding: keyPadding, queryPadding: padding, sinkLogits: [1, 2, 3, 4]))
            }
        }
        let short = try attentionInputs(
            batch: 3, queryHeads: 8, keyValueHeads: 2, queryLength: 2, keyLength: 90, headDimension: 16, seed: 3)
        for kernel in [AttentionKernel.decode(), .decode(keysPerSplit: 7)] {
            try assertMatchesReference(
                short, mask: .causal,
                options: AttentionOptions(
                    keyPadding: .lengths([90, 40, 0]), queryPadding: .ranges([1..<2, 0..<0, 0..<2]), kernel: kernel))
        }
    }

    /// Batch entry `b` of a rank-4 tensor, its first `keys` positions along axis 2.
    func slice(_ tensor: Tensor, batch b: Int, keys: Int) -> Tensor {
        let s = tensor.shape
        return try! Tensor(shape: [1, s[1], keys, s[3]]) { i in tensor[b, i[1], i[2], i[3]] }
    }

    func testSequencePaddingIsValidated() throws {
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 2, queryLength: 3, keyLength: 5, headDimension: 4, seed: 1)
        func assertThrows(_ padding: SequencePadding, _ argument: String, _ mentioning: [String]) {
            XCTAssertThrowsError(
                try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                    options: AttentionOptions(keyPadding: padding))
            ) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(argument), text)
                for word in mentioning { XCTAssertTrue(text.contains(word), "\(word) not in \(text)") }
            }
        }
        assertThrows(.lengths([5]), "options.keyPadding lengths.count", ["2", "1"])
        assertThrows(.lengths([5, 6]), "options.keyPadding lengths[1]", ["0...5", "6"])
        assertThrows(.lengths([-1, 2]), "options.keyPadding lengths[0]", ["-1"])
        assertThrows(.ranges([0..<5]), "options.keyPadding ranges.count", ["2", "1"])
        assertThrows(.ranges([0..<5, 2..<6]), "options.keyPadding ranges[1]", ["0..<5", "2..<6"])
        assertThrows(.realTokens([true, false]), "options.keyPadding realTokens.count", ["10", "2"])
        XCTAssertThrowsError(
            try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                options: AttentionOptions(queryPadding: .lengths([3, 4])))
        ) { error in
            XCTAssertEqual(
                "\(error)", "options.queryPadding lengths[1] is 4 but expected 0...3 (the query length)")
        }
        XCTAssertThrowsError(
            try topKAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 2,
                options: AttentionOptions(keyPadding: .lengths([5, 2]))))
    }

    // MARK: Reference independence

    func testMaskSpansAgreeWithTheTextbookDefinitions() throws {
        // The library's span code (through `allows` and tile coverage) against the definitions written out in test
        // support, for every mask kind, on square, tall and wide calls.
        let layout = try BlockSparseLayout(
            queryBlock: 4, keyBlock: 3, queryLength: 13, keyLength: 17, blocks: [[0, 2], [1], [], [0, 5]])
        let masks: [AttentionMask] = [
            .none, .causal, .window(left: 3, right: 1), .window(left: 0, right: 0), .window(left: .max, right: 2),
            .sinks(count: 2, window: 4), .sinks(count: 0, window: 1), .blockSparse(layout),
            .custom { q, k in (q * 7 + k) % 4 != 0 }, .intersection(.causal, .window(left: 5, right: 0)),
            .intersection(.sinks(count: 3, window: 2), .custom { _, k in k != 1 }),
        ]
        for (nq, nk) in [(13, 17), (13, 13), (17, 13), (1, 17)] {
            for (index, mask) in masks.enumerated() {
                if case .blockSparse = mask, (nq, nk) != (13, 17) { continue }
                for i in 0..<nq {
                    for j in 0..<nk {
                        XCTAssertEqual(
                            mask.allows(query: i, key: j, queryLength: nq, keyLength: nk),
                            textbookVisible(mask, query: i, key: j, queryLength: nq, keyLength: nk),
                            "mask \(index) query \(i) key \(j) (\(nq) x \(nk))")
                    }
                }
                // Coverage of every 4 x 3 tile: never empty with a visible pair, never full with a hidden one.
                for i0 in stride(from: 0, to: nq, by: 4) {
                    for j0 in stride(from: 0, to: nk, by: 3) {
                        let (queries, keys) = (i0..<min(i0 + 4, nq), j0..<min(j0 + 3, nk))
                        let visible = queries.flatMap { i in
                            keys.map { j in textbookVisible(mask, query: i, key: j, queryLength: nq, keyLength: nk) }
                        }
                        let coverage = mask.coverage(queries: queries, keys: keys, queryLength: nq, keyLength: nk)
                        let tile = "mask \(index) tile \(i0), \(j0)"
                        if coverage == .empty { XCTAssertFalse(visible.contains(true), tile) }
                        if coverage == .full { XCTAssertFalse(visible.contains(false), tile) }
                        // Exact for structured masks; a predicate's tiles may be conservatively partial.
                        if !mask.hasPredicate {
                            XCTAssertEqual(
                                coverage,
                                !visible.contains(true) ? .empty : !visible.contains(false) ? .full : .partial,
                                tile)
                        }
                    }
                }
            }
        }
    }
}
