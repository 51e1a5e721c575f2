import AttentionCore
import XCTest
import _AttentionTestSupport

final class SparseAttentionTests: XCTestCase {
    /// The element mask a layout stands for (head `head`), as a predicate.
    private func elementMask(_ layout: BlockSparseLayout, head: Int = 0) -> AttentionMask {
        let single = layout.forHead(head)
        return .custom { q, k in single.keyBlocks(queryBlock: q / single.queryBlock).contains(k / single.keyBlock) }
    }

    func testBlockSparseEqualsReferenceWithTheElementMask() throws {
        let (n, block) = (150, 16)
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: n, keyLength: n, headDimension: 24, seed: 1)
        let layouts: [(String, BlockSparseLayout)] = [
            ("local", try .local(length: n, blockSize: block, windowBlocks: 1)),
            ("local causal", try .local(length: n, blockSize: block, windowBlocks: 2, mask: .causal)),
            ("global", try .global(length: n, blockSize: block, globalBlocks: [0, 5])),
            ("strided per head", try .strided(length: n, blockSize: block, stride: 3, offsets: [0, 1, 2, 4])),
            (
                "bigBird",
                try .bigBird(length: n, blockSize: block, windowBlocks: 1, globalBlocks: [0], random: 2, seed: 7)
            ),
            (
                "topK",
                try .topK(
                    queries: inputs.queries, keys: inputs.keys, blockSize: block, keyBlocksPerQuery: 3, mask: .causal,
                    sinkBlocks: 1)
            ),
            (
                "topK max",
                try .topK(
                    queries: inputs.queries, keys: inputs.keys, blockSize: block, keyBlocksPerQuery: 2, scoring: .maxKey
                )
            ),
        ]
        for (name, layout) in layouts {
            for mask in [AttentionMask.none, .causal] {
                let output = try blockSparseAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: layout, mask: mask)
                var options = AttentionOptions()
                options.headMasks = (0..<4).map { elementMask(layout, head: $0) }
                let check = checkOutput(
                    output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                    options: options)
                XCTAssertTrue(check.passes, "\(name) \(mask): \(check)")
            }
        }
    }

    func testEveryBlockEqualsDenseAndEmptyQueryBlocksGiveZeros() throws {
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 70, keyLength: 90, headDimension: 8, seed: 2)
        let all = try BlockSparseLayout(
            queryBlock: 16, keyBlock: 32, queryLength: 70, keyLength: 90, blocks: Array(repeating: [0, 1, 2], count: 5))
        XCTAssertEqual(all.density, 1)
        let sparse = try blockSparseAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: all)
        let dense = try attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values)
        XCTAssertLessThan(maxAbsoluteError(sparse.scalars, dense.scalars.map(Double.init)), 1e-5)
        // Query block 1 (positions 16..<32) visits nothing.
        let holes = try BlockSparseLayout(
            queryBlock: 16, keyBlock: 32, queryLength: 70, keyLength: 90, blocks: [[0], [], [2], [0, 2], [1]])
        let output = try blockSparseAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: holes)
        for head in 0..<2 {
            for q in 16..<32 {
                for c in 0..<8 { XCTAssertEqual(output[0, head, q, c], 0) }
            }
        }
        XCTAssertTrue(
            checkOutput(
                output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: elementMask(holes)
            )
            .passes)
    }

    func testBuildersProduceTheDocumentedPatterns() throws {
        // 6 blocks of 4 positions (the last one shorter).
        let local = try BlockSparseLayout.local(length: 22, blockSize: 4, windowBlocks: 1)
        XCTAssertEqual(
            (0..<6).map { Array(local.keyBlocks(queryBlock: $0)) },
            [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5]])
        let causal = try BlockSparseLayout.local(length: 22, blockSize: 4, windowBlocks: 1, mask: .causal)
        XCTAssertEqual(
            (0..<6).map { Array(causal.keyBlocks(queryBlock: $0)) }, [[0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])
        let global = try BlockSparseLayout.global(length: 22, blockSize: 4, globalBlocks: [2])
        XCTAssertEqual(
            (0..<6).map { Array(global.keyBlocks(queryBlock: $0)) },
            [[0, 2], [1, 2], [0, 1, 2, 3, 4, 5], [2, 3], [2, 4], [2, 5]])
        let strided = try BlockSparseLayout.strided(
            length: 22, blockSize: 4, stride: 2, offsets: [0, 1], mask: .causal)
        XCTAssertEqual(strided.heads, 2)
        XCTAssertEqual(
            (0..<6).map { Array(strided.keyBlocks(head: 0, queryBlock: $0)) },
            [[0], [0, 1], [0, 2], [0, 2, 3], [0, 2, 4], [0, 2, 4, 5]])
        XCTAssertEqual(
            (0..<6).map { Array(strided.keyBlocks(head: 1, queryBlock: $0)) },
            [[0], [1], [1, 2], [1, 3], [1, 3, 4], [1, 3, 5]])
        // BigBird: local + global + exactly `random` extra blocks where enough remain, reproducible from the seed.
        let bigBird = try BlockSparseLayout.bigBird(
            length: 64, blockSize: 4, windowBlocks: 1, globalBlocks: [0], random: 2, seed: 3)
        let again = try BlockSparseLayout.bigBird(
            length: 64, blockSize: 4, windowBlocks: 1, globalBlocks: [0], random: 2, seed: 3)
        XCTAssertEqual(bigBird, again)
        for qb in 1..<15 {
            let fixed = Set(
                try BlockSparseLayout.local(length: 64, blockSize: 4, windowBlocks: 1).keyBlocks(queryBlock: qb)
            ).union([0])
            let blocks = Set(bigBird.keyBlocks(queryBlock: qb))
            XCTAssertTrue(blocks.isSuperset(of: fixed))
            XCTAssertEqual(blocks.count, fixed.count + 2, "query block \(qb)")
        }
        // Top-k: key block 3 holds keys aligned with every query, so it is chosen for every query block; the diagonal
        // and the sink are always there.
        var keys = try Tensor(zeros: [1, 1, 24, 2])
        let queries = try Tensor(shape: [1, 1, 24, 2], repeating: 1)
        for row in 12..<16 { keys[0, 0, row, 0] = 5; keys[0, 0, row, 1] = 5 }
        let topK = try BlockSparseLayout.topK(
            queries: queries, keys: keys, blockSize: 4, keyBlocksPerQuery: 1, sinkBlocks: 1)
        XCTAssertEqual(
            (0..<6).map { Array(topK.keyBlocks(queryBlock: $0)) },
            [[0, 3], [0, 1, 3], [0, 2, 3], [0, 3], [0, 3, 4], [0, 3, 5]])
    }

    func testLayoutValidationAndMismatches() throws {
        XCTAssertThrowsError(
            try BlockSparseLayout(queryBlock: 4, keyBlock: 4, queryLength: 8, keyLength: 8, blocks: [[1, 0], [0]])
        ) {
            XCTAssertEqual("\($0)", "blocks[0] is [1, 0] but expected strictly increasing key blocks")
        }
        XCTAssertThrowsError(
            try BlockSparseLayout(queryBlock: 4, keyBlock: 4, queryLength: 8, keyLength: 8, blocks: [[2], [0]])
        ) {
            XCTAssertEqual("\($0)", "blocks[0][0] is 2 but expected a key block in 0..<2")
        }
        XCTAssertThrowsError(
            try BlockSparseLayout(queryBlock: 4, keyBlock: 4, queryLength: 8, keyLength: 8, blocks: [[0]])
        ) {
            XCTAssertEqual(($0 as? AttentionError)?.argument, "blocks.count")
        }
        XCTAssertThrowsError(
            try BlockSparseLayout(queryBlock: 0, keyBlock: 4, queryLength: 8, keyLength: 8, blocks: []))
        // A builder's mask describes a block pattern: .none or .causal; every builder refuses the others by name.
        let square = try attentionInputs(queryHeads: 1, queryLength: 8, keyLength: 8, headDimension: 4, seed: 2)
        let builders: [(AttentionMask) throws -> BlockSparseLayout] = [
            { try .local(length: 8, blockSize: 4, windowBlocks: 1, mask: $0) },
            { try .global(length: 8, blockSize: 4, globalBlocks: [0], mask: $0) },
            { try .strided(length: 8, blockSize: 4, stride: 2, mask: $0) },
            { try .bigBird(length: 8, blockSize: 4, windowBlocks: 1, globalBlocks: [0], random: 1, seed: 3, mask: $0) },
            {
                try .topK(
                    queries: square.queries, keys: square.keys, blockSize: 4, keyBlocksPerQuery: 1, mask: $0)
            },
        ]
        for (index, build) in builders.enumerated() {
            for mask: AttentionMask in [
                .window(left: 1, right: 0), .sinks(count: 1, window: 2), .custom { _, _ in true },
            ] {
                XCTAssertThrowsError(try build(mask), "builder \(index)") {
                    XCTAssertEqual(($0 as? AttentionError)?.argument, "mask", "builder \(index)")
                }
            }
            XCTAssertNoThrow(try build(.none))
            XCTAssertNoThrow(try build(.causal))
        }
        let layout = try BlockSparseLayout.local(length: 32, blockSize: 8, windowBlocks: 1)
        let inputs = try attentionInputs(queryHeads: 2, queryLength: 40, keyLength: 40, headDimension: 4, seed: 1)
        XCTAssertThrowsError(
            try blockSparseAttention(queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: layout)
        ) {
            XCTAssertEqual(
                "\($0)",
                "mask layout is a layout for queryLength 32 and keyLength 32 but expected a layout for "
                    + "queryLength 40 and keyLength 40")
        }
        let perHead = try BlockSparseLayout.strided(length: 40, blockSize: 8, stride: 2, offsets: [0, 1])
        var wrongCount = AttentionOptions()
        wrongCount.headMasks = [.none]
        XCTAssertThrowsError(
            try blockSparseAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: perHead, options: wrongCount)
        ) { XCTAssertEqual(($0 as? AttentionError)?.argument, "options.headMasks.count") }
        let threeHeads = try BlockSparseLayout.strided(length: 40, blockSize: 8, stride: 2, offsets: [0, 1, 2])
        XCTAssertThrowsError(
            try blockSparseAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, layout: threeHeads)
        ) { XCTAssertEqual(($0 as? AttentionError)?.argument, "layout.heads") }
    }

    func testTopKAttention() throws {
        let inputs = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 33, keyLength: 57, headDimension: 8, seed: 3)
        // k >= every visible key: dense attention.
        for mask in [AttentionMask.none, .causal, .window(left: 5, right: 2)] {
            let output = try topKAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 57, mask: mask)
            let check = checkOutput(
                output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask)
            XCTAssertTrue(check.passes, "\(mask): \(check)")
        }
        // k = 5: the reference restricted to each row's 5 best keys (chosen in Double; these seeded scores have no
        // near-ties at the cut).
        let k = 5
        let scale = 1 / Double(8).squareRoot()
        var chosen = Set<[Int]>()
        for head in 0..<4 {
            for q in 0..<33 {
                let scores = (0..<57).map { j in
                    (0..<8).reduce(0.0) {
                        $0 + Double(inputs.queries[0, head, q, $1]) * Double(inputs.keys[0, head / 2, j, $1])
                    }
                        * scale
                }
                for j in (0..<57).sorted(by: { scores[$0] > scores[$1] }).prefix(k) { chosen.insert([head, q, j]) }
            }
        }
        let output = try topKAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: k)
        var options = AttentionOptions()
        let best = chosen
        options.headMasks = (0..<4).map { head in .custom { q, j in best.contains([head, q, j]) } }
        let check = checkOutput(
            output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, options: options)
        XCTAssertTrue(check.passes, "\(check)")
        // Threads: bitwise identical.
        let single = try topKAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: k,
            options: AttentionOptions(threads: 1))
        XCTAssertEqual(
            bitwise(single),
            bitwise(
                try topKAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: k,
                    options: AttentionOptions(threads: 3))))
        // A row with no visible key: zeros.
        let none = try topKAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 3,
            mask: .custom { q, _ in q != 0 })
        for c in 0..<8 { XCTAssertEqual(none[0, 0, 0, c], 0) }
        XCTAssertThrowsError(
            try topKAttention(queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 0)
        ) {
            XCTAssertEqual(($0 as? AttentionError)?.argument, "keysPerQuery")
        }
        XCTAssertThrowsError(
            try topKAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 2,
                options: AttentionOptions(softcap: 5))
        ) { XCTAssertEqual(($0 as? AttentionError)?.argument, "options.softcap") }
    }

    func testTopKRowWithAKeptNaNScoreIsNaNLikeDense() throws {
        var inputs = try attentionInputs(queryHeads: 1, queryLength: 2, keyLength: 4, headDimension: 4, seed: 9)
        inputs.queries[0, 0, 0, 0] = .nan
        let output = try topKAttention(
            queries: inputs.queries, keys: inputs.keys, values: inputs.values, keysPerQuery: 2)
        let dense = try attention(queries: inputs.queries, keys: inputs.keys, values: inputs.values)
        for c in 0..<4 {
            XCTAssertTrue(output[0, 0, 0, c].isNaN)
            XCTAssertTrue(dense[0, 0, 0, c].isNaN)
            XCTAssertTrue(output[0, 0, 1, c].isFinite)
        }
    }
}
