import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

/// Random stored-format configurations against the Float64 reference on the values as each format defines them
/// (test support's independent rounding, never the package's codec), in three kinds: KV caches in every format with
/// random block sizes (odd ones too), dimensions the format allows, Float32 windows of the newest tokens, appends in
/// pieces, batch entries and head groupings, through every kernel and the none, causal, window and sink masks;
/// paged caches in every format, their batch entries as sequences attended in one packed call; stored-tensor
/// attention with keys, values and queries each in its own format, [B, H, N, d] or [B, N, H, d], and for some
/// configurations the stored backward (dQ, dK, dV) against the reference backward. The fixed-shape tests in StorageFormatTests and
/// StoredTensorTests name the paths they mean to reach; these draw shapes those do not (four-row decode groups over
/// odd key counts, 8-bit blocks of 8 against 16-column value passes, 4-bit rows with short nibble groups, Float32
/// windows straddling a tile, pages of a few tokens). 300 cases of each kind by default; ATTENTION_FUZZ_CASES and
/// ATTENTION_FUZZ_SEED as in RandomizedDifferentialTests. Every failure prints its seed and configuration.
final class StoredFormatFuzzTests: XCTestCase {
    /// What holds the keys and values.
    enum Kind {
        /// A `KVCache` (keys and values in one format, a Float32 window of the newest tokens).
        case cache
        /// A `PagedKVCache` holding each batch entry as a sequence, attended in one packed call.
        case paged
        /// `StoredTensor`s, each in its own format.
        case tensors
    }

    struct Configuration: CustomStringConvertible {
        var seed: UInt64
        var keyFormat = StorageFormat.float32, valueFormat = StorageFormat.float32, queryFormat = StorageFormat.float32
        var batch = 1, keyValueHeads = 1, group = 1, queryLength = 1, keyDimension = 8, valueDimension = 8
        /// Tokens per append (the cache's pieces) or one entry (a stored tensor).
        var appends: [Int] = []
        var recentTokensInFloat32 = 0
        /// Tokens per page of a paged cache.
        var pageSize = 64
        var mask = AttentionMask.causal
        var maskName = "causal"
        var options = AttentionOptions()
        /// Stored tensors: also check the backward (dQ, dK, dV against the reference backward on the stored values).
        var backward = false

        var keyLength: Int { appends.reduce(0, +) }

        var description: String {
            "seed=\(seed) keys=\(keyFormat) values=\(valueFormat) queries=\(queryFormat) B=\(batch) "
                + "Hkv=\(keyValueHeads) G=\(group) Nq=\(queryLength) appends=\(appends) Dk=\(keyDimension) "
                + "Dv=\(valueDimension) recent=\(recentTokensInFloat32) pageSize=\(pageSize) mask=\(maskName) "
                + "kernel=\(options.kernel) threads=\(options.threads ?? 0) layout=\(options.layout) "
                + "backward=\(backward)"
        }
    }

    /// A dimension for `format`: any of a few odd and round sizes for the float formats; for the block formats a
    /// multiple of the block size (1-4 blocks, at most 160 values).
    static func dimension(for format: StorageFormat, _ pick: (ClosedRange<Int>) -> Int) -> Int {
        switch format {
        case .float32, .float16, .bfloat16: return [1, 3, 8, 16, 17, 24, 32, 64, 80, 128][pick(0...9)]
        case .int8(let b), .int4(let b): return b * pick(1...Swift.max(1, Swift.min(4, 160 / b)))
        }
    }

    static func configuration(seed: UInt64, kind: Kind) -> Configuration {
        var random = SplitMix64(seed: seed)
        func pick(_ range: ClosedRange<Int>) -> Int { range.lowerBound + Int(random.next() % UInt64(range.count)) }
        func chance(_ percent: Int) -> Bool { pick(0...99) < percent }
        func format() -> StorageFormat {
            let block = [1, 2, 3, 5, 8, 8, 16, 16, 32, 32, 64][pick(0...10)]
            switch pick(0...4) {
            case 0: return .float32
            case 1: return .float16
            case 2: return .bfloat16
            case 3: return .int8(blockSize: block)
            default: return .int4(blockSize: block)
            }
        }
        var c = Configuration(seed: seed)
        c.keyFormat = format()
        // A cache stores keys and values in one format; stored tensors may differ.
        let tensors = kind == .tensors
        c.valueFormat = !tensors || chance(50) ? c.keyFormat : format()
        c.queryFormat = tensors ? [.float32, .float16, .bfloat16][pick(0...2)] : .float32
        c.keyDimension = dimension(for: c.keyFormat, pick)
        let valueFits = (try? c.valueFormat.validate(dimension: c.keyDimension, argument: "", dimensionName: "")) != nil
        c.valueDimension = valueFits && chance(70) ? c.keyDimension : dimension(for: c.valueFormat, pick)
        c.batch = pick(1...2)
        c.keyValueHeads = pick(1...3)
        // Four query heads per key/value head and one query is the shape the direct-row decode kernels take.
        c.group = [1, 2, 3, 4, 4, 4, 8][pick(0...6)]
        c.queryLength = chance(60) ? 1 : pick(1...12)
        c.appends = (0..<(tensors ? 1 : pick(1...3))).map { _ in chance(10) ? pick(0...2) : pick(1...260) }
        if c.keyLength == 0 { c.appends[0] = 1 }
        c.recentTokensInFloat32 = kind == .cache && chance(40) ? pick(1...40) : 0
        c.pageSize = pick(1...48)
        let (left, right, sinks) = (pick(0...60), pick(0...3), pick(0...4))
        let masks: [(String, AttentionMask)] = [
            ("none", .none), ("causal", .causal), ("window(\(left),\(right))", .window(left: left, right: right)),
            ("sinks(\(sinks),\(left + 1))", .sinks(count: sinks, window: left + 1)),
        ]
        (c.maskName, c.mask) = masks[pick(0...(masks.count - 1))]
        let rows = c.group * c.queryLength
        switch pick(0...3) {
        case 0: c.options.kernel = .automatic
        case 1: c.options.kernel = kind == .paged ? .automatic : .naive  // paged calls take no naive kernel
        case 2:
            c.options.kernel = .blockwise(
                queryBlock: [1, 5, 16, 64][pick(0...3)], keyBlock: [1, 7, 32, 64][pick(0...3)])
        default: c.options.kernel = rows <= 16 ? .decode(keysPerSplit: [nil, 16, 40, 128][pick(0...3)]) : .automatic
        }
        c.options.threads = pick(1...3)
        if tensors {
            c.options.layout = chance(40) ? .bnhd : .bhnd
            c.backward = c.options.layout == .bhnd && chance(30)
        }
        return c
    }

    /// Tokens `0 ..< count - recent` of `tensor` as `format` stores them, the rest as given.
    static func stored(_ tensor: Tensor, _ format: StorageFormat, recent: Int) -> Tensor? {
        guard let rounded = roundedThrough(format, tensor) else { return nil }
        let n = tensor.shape[2]
        let boundary = Swift.max(0, n - recent)
        return concatenateTokens([tokens(rounded, 0..<boundary), tokens(tensor, boundary..<n)])
    }

    /// Batch entry `b` of a rank-4 tensor, as [1, H, N, d].
    static func entry(_ tensor: Tensor, _ b: Int) -> Tensor {
        let s = tensor.shape
        return try! Tensor(shape: [1, s[1], s[2], s[3]]) { i in tensor[b, i[1], i[2], i[3]] }
    }

    /// Runs the configurations of one kind and fails the test once per failing configuration.
    func check(_ kind: Kind) throws {
        let environment = ProcessInfo.processInfo.environment
        let cases = environment["ATTENTION_FUZZ_CASES"].flatMap(Int.init) ?? 300
        let first = environment["ATTENTION_FUZZ_SEED"].flatMap(UInt64.init) ?? 1
        func fail(_ seed: UInt64, _ message: String) {
            XCTFail("reproduce with ATTENTION_FUZZ_SEED=\(seed) ATTENTION_FUZZ_CASES=1: \(message)")
        }
        var checked = 0
        for seed in first..<(first + UInt64(cases)) {
            let c = Self.configuration(seed: seed, kind: kind)
            let all = try attentionInputs(
                batch: c.batch, queryHeads: c.keyValueHeads * c.group, keyValueHeads: c.keyValueHeads,
                queryLength: c.queryLength, keyLength: c.keyLength, headDimension: c.keyDimension,
                valueDimension: c.valueDimension, seed: seed)
            guard let keys = Self.stored(all.keys, c.keyFormat, recent: c.recentTokensInFloat32),
                let values = Self.stored(all.values, c.valueFormat, recent: c.recentTokensInFloat32),
                let queries = roundedThrough(c.queryFormat, all.queries)
            else { continue }  // Float16 where the platform has no Float16 type
            checked += 1
            do {
                switch kind {
                case .cache:
                    var cache = try KVCache(
                        batch: c.batch, keyValueHeads: c.keyValueHeads, headDimension: c.keyDimension,
                        valueDimension: c.valueDimension,
                        storage: CacheStorage(c.keyFormat, recentTokensInFloat32: c.recentTokensInFloat32))
                    var start = 0
                    for count in c.appends {
                        let range = start..<(start + count)
                        try cache.append(keys: tokens(all.keys, range), values: tokens(all.values, range))
                        start += count
                    }
                    // What the cache holds, bit for bit: the format's rounding of every token outside the window.
                    let contents = cache.contents
                    if bitwise(contents.keys) != bitwise(keys) || bitwise(contents.values) != bitwise(values) {
                        fail(seed, "contents differ from the format's rounding: \(c)")
                        continue
                    }
                    let output = try cache.attention(queries: all.queries, mask: c.mask, options: c.options)
                    let check = checkOutput(
                        output, queries: queries, keys: keys, values: values, mask: c.mask, options: c.options)
                    if !check.passes { fail(seed, "\(c) :: \(check)") }
                case .paged:
                    let (nq, nk) = (c.queryLength, c.keyLength)
                    let pages = c.batch * ((nk + c.pageSize - 1) / c.pageSize)
                    var cache = try PagedKVCache(
                        blockCount: pages, blockSize: c.pageSize, keyValueHeads: c.keyValueHeads,
                        headDimension: c.keyDimension, valueDimension: c.valueDimension, format: c.keyFormat)
                    let sequences = (0..<c.batch).map { _ in cache.addSequence() }
                    var start = 0
                    for count in c.appends {
                        let range = start..<(start + count)
                        for (b, sequence) in sequences.enumerated() {
                            try cache.append(
                                keys: tokens(Self.entry(all.keys, b), range),
                                values: tokens(Self.entry(all.values, b), range), to: sequence)
                        }
                        start += count
                    }
                    let packed = try Tensor(
                        shape: [c.batch * nq, c.keyValueHeads * c.group, c.keyDimension],
                        scalars: (0..<c.batch).flatMap { packedRows(all.queries, batch: $0, 0..<nq) })
                    let result = try cache.attention(
                        queries: packed, sequences: sequences, queryCounts: Array(repeating: nq, count: c.batch),
                        mask: c.mask, options: c.options)
                    for b in 0..<c.batch {
                        let check = checkOutput(
                            headMajor(result.output, (b * nq)..<((b + 1) * nq)), queries: Self.entry(queries, b),
                            keys: Self.entry(keys, b), values: Self.entry(values, b), mask: c.mask,
                            options: c.options)
                        if !check.passes { fail(seed, "\(c) sequence \(b) :: \(check)") }
                    }
                case .tensors:
                    // [B, N, H, d] tensors are the same values with axes 1 and 2 swapped; the output comes back so.
                    let tokenMajor = c.options.layout == .bnhd
                    let laidOut = { (t: Tensor) in tokenMajor ? swappingHeadsAndTokens(t) : t }
                    let output = try attention(
                        queries: StoredTensor(laidOut(all.queries), format: c.queryFormat),
                        keys: StoredTensor(laidOut(all.keys), format: c.keyFormat),
                        values: StoredTensor(laidOut(all.values), format: c.valueFormat), mask: c.mask,
                        options: c.options)
                    var headMajorOptions = c.options
                    headMajorOptions.layout = .bhnd
                    let check = checkOutput(
                        laidOut(output), queries: queries, keys: keys, values: values, mask: c.mask,
                        options: headMajorOptions)
                    if !check.passes { fail(seed, "\(c) :: \(check)") }
                    // Where no row sees two keys, dQ and dK are exactly zero and the plain Float32 loop computes
                    // them exactly (D and dP are the same sum in the same order), so the tolerance rule has no
                    // comparator; the kernel's blocked products leave rounding-level noise there, which
                    // BackwardTests.testSingleVisibleKeyGradientsAreCancellationNoise bounds instead.
                    let seesTwoKeys = (0..<c.queryLength).contains { i in
                        (0..<c.keyLength).lazy.filter {
                            textbookVisible(
                                c.mask, query: i, key: $0, queryLength: c.queryLength, keyLength: c.keyLength)
                        }.count >= 2
                    }
                    if c.backward && seesTwoKeys {
                        let outputGradient = try Tensor.randomNormal(
                            shape: [c.batch, c.keyValueHeads * c.group, c.queryLength, c.valueDimension],
                            seed: seed &+ 7)
                        let checks = try checkStoredGradients(
                            queries: all.queries, keys: all.keys, values: all.values, outputGradient: outputGradient,
                            formats: (c.queryFormat, c.keyFormat, c.valueFormat, c.queryFormat), mask: c.mask,
                            options: c.options)
                        for (name, check) in (checks ?? [:]).sorted(by: { $0.key < $1.key }) where !check.passes {
                            fail(seed, "\(c) \(name) :: \(check)")
                        }
                    }
                }
            } catch {
                fail(seed, "\(c) threw \(error)")
            }
        }
        XCTAssertGreaterThan(checked, 0, "every configuration was skipped")
    }

    func testRandomStoredCachesMatchTheReferenceOnTheirStoredValues() throws {
        try check(.cache)
    }

    func testRandomPagedCachesMatchTheReferenceOnTheirStoredValues() throws {
        try check(.paged)
    }

    func testRandomStoredTensorsMatchTheReferenceOnTheirStoredValues() throws {
        try check(.tensors)
    }
}
