import AttentionCore
import XCTest
import _AttentionTestSupport

final class StorageFormatTests: XCTestCase {
    static let formats: [StorageFormat] = [
        .float32, .float16, .bfloat16, .int8(), .int4(), .int8(blockSize: 16), .int8(blockSize: 8),
        .int4(blockSize: 8), .int4(blockSize: 16), .int4(blockSize: 64),
    ]

    /// Random key/value tensors with a few large and tiny magnitudes mixed in, so that rounding, subnormal Float16
    /// values and per-block scales are all exercised.
    func inputs(keyValueHeads: Int, tokens: Int, dimension: Int, seed: UInt64) throws -> (keys: Tensor, values: Tensor)
    {
        var generator = SplitMix64(seed: seed)
        func tensor() throws -> Tensor {
            try Tensor(shape: [1, keyValueHeads, tokens, dimension]) { _ in
                let x = Float(generator.nextStandardNormal())
                switch generator.next() % 16 {
                case 0: return x * 1e-6
                case 1: return x * 300
                default: return x
                }
            }
        }
        return (try tensor(), try tensor())
    }

    func testCacheContentsAreTheInputsRoundedAsEachFormatDefinesIt() throws {
        for format in Self.formats {
            let (keys, values) = try inputs(keyValueHeads: 2, tokens: 37, dimension: 64, seed: 3)
            var cache = try KVCache(keyValueHeads: 2, headDimension: 64, storage: CacheStorage(format))
            try cache.append(keys: tokens(keys, 0..<20), values: tokens(values, 0..<20))
            try cache.append(keys: tokens(keys, 20..<37), values: tokens(values, 20..<37))
            guard let expectedKeys = roundedThrough(format, keys), let expectedValues = roundedThrough(format, values)
            else { continue }
            XCTAssertEqual(bitwise(cache.contents.keys), bitwise(expectedKeys), "\(format)")
            XCTAssertEqual(bitwise(cache.contents.values), bitwise(expectedValues), "\(format)")
            XCTAssertEqual(cache.storage.format, format)
            XCTAssertEqual(cache.bytesPerToken, 2 * 2 * format.bytesPerRow(dimension: 64))
        }
    }

    func testAppendingNeverReencodesStoredTokens() throws {
        // Tokens appended later, a thousand times larger, leave the stored tokens' bits as they were: every format
        // encodes a token from its own values only (a scale shared across tokens would change them).
        for format in Self.formats {
            let (keys, values) = try inputs(keyValueHeads: 2, tokens: 30, dimension: 64, seed: 5)
            var cache = try KVCache(keyValueHeads: 2, headDimension: 64, storage: CacheStorage(format))
            try cache.append(keys: tokens(keys, 0..<12), values: tokens(values, 0..<12))
            let before = cache.contents
            func large(_ t: Tensor) throws -> Tensor {
                try Tensor(shape: t.shape, scalars: t.scalars.map { $0 * 1000 })
            }
            try cache.append(keys: large(tokens(keys, 12..<30)), values: large(tokens(values, 12..<30)))
            XCTAssertEqual(bitwise(tokens(cache.contents.keys, 0..<12)), bitwise(before.keys), "\(format)")
            XCTAssertEqual(bitwise(tokens(cache.contents.values, 0..<12)), bitwise(before.values), "\(format)")
            if let later = roundedThrough(format, try large(tokens(keys, 12..<30))) {
                XCTAssertEqual(bitwise(tokens(cache.contents.keys, 12..<30)), bitwise(later), "\(format)")
            }
        }
    }

    func testFloat16DecodingMatchesSwiftsFloat16ForEveryBitPattern() throws {
        #if !(os(macOS) && arch(x86_64))
            // All 65536 codes, decoded 16 at a time (rows of 16) and one at a time (rows of 7: the scalar tail).
            for dimension in [16, 7] {
                let codec = RowCodec(.float16, dimension: dimension)
                let rows = (65536 + dimension - 1) / dimension
                var bits = (0..<(rows * dimension)).map { UInt16(truncatingIfNeeded: $0) }
                var decoded = [Float](repeating: 0, count: bits.count)
                bits.withUnsafeMutableBytes { source in
                    decoded.withUnsafeMutableBufferPointer { target in
                        codec.decode(
                            source.baseAddress!, rows: rows, into: target.baseAddress!)
                    }
                }
                for (code, value) in zip(bits, decoded) {
                    let expected = Float(Float16(bitPattern: code))
                    XCTAssertTrue(
                        value.bitPattern == expected.bitPattern || value.isNaN && expected.isNaN,
                        "code \(code): \(value) vs \(expected), dimension \(dimension)")
                }
            }
        #endif
    }

    func testFloat16AndBFloat16EncodingRoundToNearestEven() throws {
        var generator = SplitMix64(seed: 99)
        var samples: [Float] = [
            0, -0, 1, -1, 65504, 65519.996, 65520, -65520, 6.0e-8, 2.98e-8, 2.9802322e-8, 5.96e-8, 1e-45,
            .infinity, -.infinity, .greatestFiniteMagnitude, 3.3895314e38, 3.4e38, .leastNormalMagnitude,
            0.000061035156, 0.00006103515 * 0.99999,
        ]
        for _ in 0..<20000 { samples.append(Float(bitPattern: UInt32(truncatingIfNeeded: generator.next()))) }
        for x in samples {
            let bf = Float(bitPattern: UInt32(bfloat16Bits(x)) << 16)
            let expected = roundedThroughBFloat16(x)
            XCTAssertTrue(bf.bitPattern == expected.bitPattern || bf.isNaN && x.isNaN, "bfloat16 of \(x): \(bf)")
            #if !(os(macOS) && arch(x86_64))
                let half = float16Bits(x)
                let swiftHalf = Float16(x).bitPattern
                XCTAssertTrue(
                    half == swiftHalf || x.isNaN && Float16(bitPattern: half).isNaN,
                    "float16 of \(x) (bits \(x.bitPattern)): \(half) vs \(swiftHalf)")
            #endif
        }
        // The codecs' row encoders (the hardware conversion where the target has one) give the same codes, in rows
        // of 16 and of 7 (a vector loop's tail).
        for (format, bits) in [(StorageFormat.float16, float16Bits), (.bfloat16, bfloat16Bits)] {
            for dimension in [16, 7] {
                let rows = samples.count / dimension
                var codes = [UInt16](repeating: 0, count: rows * dimension)
                codes.withUnsafeMutableBytes { target in
                    RowCodec(format, dimension: dimension).encode(samples, rows: rows, into: target.baseAddress!)
                }
                for (x, code) in zip(samples, codes) {
                    let expected = bits(x)
                    XCTAssertTrue(
                        code == expected || x.isNaN && code & 0x7fff > (format == .float16 ? 0x7c00 : 0x7f80),
                        "\(format) row encoding of \(x) (bits \(x.bitPattern)): \(code) vs \(expected)")
                }
            }
        }
    }

    func testQuantizedRowsAreEncodedByteForByteAsTheFormatDocumentsThem() throws {
        /// The row as `StorageFormat`'s table and notes lay it out, written from them here: the block scales as
        /// little-endian binary32, then the codes (4-bit: q + 8, byte i of each group of 32 holding value i low and
        /// value i + ceil(t / 2) high).
        func documented(_ row: [Float], _ format: StorageFormat) -> [UInt8] {
            let (b, levels, fourBit): (Int, Float, Bool)
            switch format {
            case .int8(let size): (b, levels, fourBit) = (size, 127, false)
            case .int4(let size): (b, levels, fourBit) = (size, 7, true)
            default: preconditionFailure("a quantized format")
            }
            var scales: [Float] = []
            var q: [Int] = []
            for start in stride(from: 0, to: row.count, by: b) {
                let block = row[start..<(start + b)]
                let s = block.contains { !$0.isFinite } ? Float.nan : block.map { abs($0) }.max()! / levels
                scales.append(s)
                for x in block {
                    q.append(s > 0 ? Int(Swift.max(-levels, Swift.min(levels, (x / s).rounded(.toNearestOrEven)))) : 0)
                }
            }
            var bytes = scales.flatMap { scale in
                (0..<4).map { UInt8(truncatingIfNeeded: scale.bitPattern >> (8 * $0)) }
            }
            guard fourBit else { return bytes + q.map { UInt8(bitPattern: Int8($0)) } }
            for group in stride(from: 0, to: row.count, by: 32) {
                let t = Swift.min(32, row.count - group)
                let h = (t + 1) / 2
                for i in 0..<h {
                    let high = i + h < t ? UInt8(q[group + i + h] + 8) : 0
                    bytes.append(UInt8(q[group + i] + 8) | high << 4)
                }
            }
            return bytes
        }
        var generator = SplitMix64(seed: 41)
        func row(_ d: Int) -> [Float] {
            (0..<d).map { i in
                let x = Float(generator.nextStandardNormal())
                switch generator.next() % 32 {
                case 0: return x * 300
                case 1: return x * 1e-30
                case 2: return 0
                case 3: return -0.0
                default: return x
                }
            }
        }
        // Rows that exercise the edges: exact ties (largest 127 or 7: the scale is 1, so k + 0.5 is a tie), all
        // zeros, NaN and infinity in one block only, subnormal blocks whose scale rounds or underflows to zero.
        let ties127: [Float] = (0..<32).map { $0 == 0 ? 127 : Float($0 % 9) - 4.5 }
        let ties7: [Float] = (0..<32).map { $0 == 0 ? -7 : Float($0 % 7) - 3.5 }
        let special: [Float] = (0..<32).map { [Float.nan, .infinity, -.infinity, 5][$0 / 8] }
        let tiny: [Float] = (0..<32).map { i in Float(bitPattern: UInt32(i % 16 + 1)) * (i < 16 ? 1 : 700) }
        func check(_ sample: [Float], _ format: StorageFormat) {
            var encoded = [UInt8](repeating: 0xA5, count: format.bytesPerRow(dimension: sample.count))
            encoded.withUnsafeMutableBytes { target in
                RowCodec(format, dimension: sample.count).encode(sample, rows: 1, into: target.baseAddress!)
            }
            XCTAssertEqual(encoded, documented(sample, format), "\(format) of \(sample)")
        }
        let edges = [ties127, ties7, [Float](repeating: 0, count: 32), special, tiny]
        for format in [StorageFormat.int8(), .int8(blockSize: 16), .int8(blockSize: 8), .int4(), .int4(blockSize: 8)] {
            for sample in edges + (0..<50).map({ _ in row(64) }) { check(sample, format) }
        }
        // 4-bit rows whose last group is short, of an even and of an odd count; blocks of 7 and of 1.
        for (format, rowLength) in [
            (StorageFormat.int4(blockSize: 8), 40), (.int4(blockSize: 7), 21), (.int4(blockSize: 1), 3),
            (.int8(blockSize: 7), 21),
        ] {
            for _ in 0..<20 { check(row(rowLength), format) }
        }
    }

    func testEveryFormatMatchesTheReferenceOnItsStoredValues() throws {
        // Odd shapes and groupings; the cache's kernels (decode for few rows, blockwise, naive) against the Float64
        // reference on the values as the format defines them. One token of four query heads per key/value head
        // (four rows: the decode kernel scores 8-bit keys as stored on targets without AVX-512), with an odd number
        // of keys in the last tile, at d 64 and 32.
        let shapes: [(hq: Int, hkv: Int, nq: Int, nk: Int, d: Int)] = [
            (4, 2, 1, 239, 32), (8, 2, 3, 203, 64), (3, 1, 7, 7, 16), (8, 8, 1, 1, 128), (2, 1, 113, 217, 80),
            (8, 2, 1, 301, 64), (4, 1, 1, 131, 32),
        ]
        for format in Self.formats {
            for (index, shape) in shapes.enumerated() {
                guard (try? format.validate(dimension: shape.d, argument: "", dimensionName: "")) != nil else {
                    continue
                }
                let all = try attentionInputs(
                    queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.nq, keyLength: shape.nk,
                    headDimension: shape.d, seed: UInt64(40 + index))
                var cache = try KVCache(keyValueHeads: shape.hkv, headDimension: shape.d, storage: CacheStorage(format))
                let half = shape.nk / 2
                try cache.append(keys: tokens(all.keys, 0..<half), values: tokens(all.values, 0..<half))
                try cache.append(
                    keys: tokens(all.keys, half..<shape.nk), values: tokens(all.values, half..<shape.nk))
                guard let keys = roundedThrough(format, all.keys), let values = roundedThrough(format, all.values)
                else { continue }
                for (mask, kernel) in [
                    (AttentionMask.causal, AttentionKernel.automatic), (.none, .blockwise(queryBlock: 7, keyBlock: 16)),
                    (.window(left: 40, right: 0), .decode(keysPerSplit: 64)), (.causal, .naive),
                ] {
                    if case .decode = kernel, shape.hq / shape.hkv * shape.nq > 16 { continue }
                    let output = try cache.attention(
                        queries: all.queries, mask: mask, options: AttentionOptions(kernel: kernel))
                    let check = checkOutput(output, queries: all.queries, keys: keys, values: values, mask: mask)
                    XCTAssertTrue(check.passes, "\(format) \(shape) \(mask) \(kernel): \(check)")
                }
            }
        }
    }

    func testStoredCachesAreBitwiseIdenticalForEveryThreadCount() throws {
        let all = try attentionInputs(
            queryHeads: 32, keyValueHeads: 8, queryLength: 1, keyLength: 3000, headDimension: 64, seed: 5)
        for format in Self.formats {
            var cache = try KVCache(keyValueHeads: 8, headDimension: 64, storage: CacheStorage(format))
            try cache.append(keys: all.keys, values: all.values)
            let one = try cache.attention(queries: all.queries, options: AttentionOptions(threads: 1))
            for threads in [2, 3, 8] {
                let many = try cache.attention(queries: all.queries, options: AttentionOptions(threads: threads))
                XCTAssertEqual(one.scalars.map(\.bitPattern), many.scalars.map(\.bitPattern), "\(format) \(threads)")
            }
        }
    }

    func testNonFiniteKeysAndValuesFollowTheFloat32RulesInEveryFormat() throws {
        // A NaN key and an infinite value hidden by the mask never reach the output; seen, they poison their rows.
        for (format, queryHeads) in Self.formats.flatMap({ format in [2, 4].map { (format, $0) } }) {
            for kernel in [AttentionKernel.automatic, .blockwise(), .naive] {
                var all = try attentionInputs(
                    queryHeads: queryHeads, keyValueHeads: 1, queryLength: 1, keyLength: 50, headDimension: 64,
                    seed: 8)
                all.keys[0, 0, 49, 3] = .nan
                all.values[0, 0, 48, 5] = .infinity
                var cache = try KVCache(keyValueHeads: 1, headDimension: 64, storage: CacheStorage(format))
                try cache.append(keys: all.keys, values: all.values)
                let hidden = try cache.attention(
                    queries: all.queries, mask: .custom { _, j in j < 48 },
                    options: AttentionOptions(kernel: kernel))
                XCTAssertTrue(hidden.scalars.allSatisfy(\.isFinite), "\(format) \(kernel)")
                // And the answer is attention over the other keys as stored.
                if let keys = roundedThrough(format, all.keys), let values = roundedThrough(format, all.values) {
                    let check = checkOutput(
                        hidden, queries: all.queries, keys: keys, values: values, mask: .custom { _, j in j < 48 })
                    XCTAssertTrue(check.passes, "\(format) \(kernel): \(check)")
                }
                let seen = try cache.attention(queries: all.queries, options: AttentionOptions(kernel: kernel))
                XCTAssertTrue(seen.scalars.allSatisfy { !$0.isFinite }, "\(format) \(kernel): \(seen.scalars)")
            }
        }
    }

    func testFormatsThatDoNotFitTheHeadDimensionThrowNamingIt() throws {
        XCTAssertThrowsError(try KVCache(keyValueHeads: 1, headDimension: 48, storage: .int8)) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "headDimension")
            XCTAssertEqual(
                "\(error)",
                "headDimension is 48 but expected a multiple of format's block size 32 (int8(blockSize: 32))")
        }
        XCTAssertThrowsError(
            try KVCache(
                keyValueHeads: 1, headDimension: 64, valueDimension: 40, storage: CacheStorage(.int4(blockSize: 16)))
        ) { error in XCTAssertEqual((error as? AttentionError)?.argument, "valueDimension") }
        XCTAssertThrowsError(
            try KVCache(keyValueHeads: 1, headDimension: 64, storage: CacheStorage(.int4(blockSize: 0)))
        ) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "format.blockSize")
        }
        XCTAssertThrowsError(
            try KVCache(keyValueHeads: 1, headDimension: 48, storage: CacheStorage(.float16, hadamardRotation: true))
        ) { error in
            XCTAssertEqual("\(error)", "headDimension is 48 but expected a power of two for hadamardRotation")
        }
        XCTAssertThrowsError(
            try KVCache(keyValueHeads: 1, headDimension: 64, storage: CacheStorage(.int8(), recentTokensInFloat32: -1))
        ) { error in XCTAssertEqual((error as? AttentionError)?.argument, "recentTokensInFloat32") }
    }

    func testTheNewestTokensStayInFloat32UpToTheWindowsExactBoundary() throws {
        // Recent window R = 5: after every append, the last min(count, 5) tokens are exact and the older ones are the
        // format's rounding of the inputs (encoded once, when they left the window), in appends of every size.
        let (keys, values) = try inputs(keyValueHeads: 2, tokens: 40, dimension: 32, seed: 21)
        let rounded = (roundedThrough(.int4(), keys)!, roundedThrough(.int4(), values)!)
        var cache = try KVCache(
            keyValueHeads: 2, headDimension: 32, storage: CacheStorage(.int4(), recentTokensInFloat32: 5))
        var count = 0
        for chunk in [1, 3, 1, 1, 7, 5, 4, 6, 12] {
            try cache.append(
                keys: tokens(keys, count..<(count + chunk)), values: tokens(values, count..<(count + chunk)))
            count += chunk
            let boundary = Swift.max(0, count - 5)
            XCTAssertEqual(
                cache.contents.keys, concatenated(tokens(rounded.0, 0..<boundary), tokens(keys, boundary..<count)),
                "\(count)")
            XCTAssertEqual(
                cache.contents.values, concatenated(tokens(rounded.1, 0..<boundary), tokens(values, boundary..<count)),
                "\(count)")
            let queries = try Tensor.randomNormal(shape: [1, 4, 1, 32], seed: UInt64(count))
            let output = try cache.attention(queries: queries)
            let check = checkOutput(output, queries: queries, keys: cache.contents.keys, values: cache.contents.values)
            XCTAssertTrue(check.passes, "\(count): \(check)")
        }
    }

    func testHadamardRotationIsTheOrthonormalWalshHadamardMatrixAndItsOwnInverse() throws {
        for d in [1, 2, 8, 64, 128] {
            let x = try Tensor.randomNormal(shape: [1, 1, 3, d], seed: UInt64(d))
            let rotated = hadamardRotatedRows(x)
            // Sylvester's construction: H[i][j] = (-1)^popcount(i & j), scaled by 1 / sqrt(d), in Float64.
            for row in 0..<3 {
                for i in 0..<d {
                    var sum = 0.0
                    for j in 0..<d {
                        sum += ((i & j).nonzeroBitCount % 2 == 0 ? 1 : -1) * Double(x[0, 0, row, j])
                    }
                    let expected = sum / Double(d).squareRoot()
                    XCTAssertEqual(
                        Double(rotated[0, 0, row, i]), expected, accuracy: 1e-6 * Swift.max(1, abs(expected)))
                }
            }
            let back = hadamardRotatedRows(rotated)
            XCTAssertLessThan(maxAbsoluteError(back.scalars, x.scalars.map(Double.init)), 1e-5, "d \(d)")
        }
    }

    func testRotatedCachesMatchTheReferenceAndShrinkTheQuantizationErrorOfOutliers() throws {
        // Keys with a few outlier channels, as real models have: rotation spreads them, so 4-bit blocks lose less.
        var all = try attentionInputs(
            queryHeads: 4, keyValueHeads: 2, queryLength: 1, keyLength: 300, headDimension: 64, seed: 31)
        for head in 0..<2 { for t in 0..<300 { all.keys[0, head, t, 5] *= 20; all.values[0, head, t, 9] *= 20 } }
        let exact = referenceAttention(queries: all.queries, keys: all.keys, values: all.values)
        var errors: [Bool: Double] = [:]
        for rotate in [false, true] {
            var cache = try KVCache(
                keyValueHeads: 2, headDimension: 64, storage: CacheStorage(.int4(), hadamardRotation: rotate))
            try cache.append(keys: all.keys, values: all.values)
            let output = try cache.attention(queries: all.queries)
            errors[rotate] = maxAbsoluteError(output.scalars, exact.output)
            // Exactness on what the cache holds: its contents are the stored rows rotated back, so the kernel's
            // output may differ from the reference on them by the rotations' rounding as well (a few ulps of the
            // values per butterfly pass): bound it by 2x the plain Float32 error plus log2(64) * 8 ulps.
            let contents = cache.contents
            let check = checkOutput(output, queries: all.queries, keys: contents.keys, values: contents.values)
            let largest = contents.values.scalars.map { abs(Double($0)) }.max()!
            XCTAssertLessThanOrEqual(
                check.kernelError, check.bound + 6 * 8 * Double(Float.ulpOfOne) * largest, "rotate \(rotate): \(check)")
        }
        XCTAssertLessThan(errors[true]!, errors[false]!, "\(errors)")
    }

    func testQuantizationErrorStaysWithinEachFormatsProvableBound() throws {
        // Against attention on the original Float32 inputs, a format perturbs each key by at most dk and each value
        // by at most dv (per value: |x| 2^-11 for float16, 2^-8 for bfloat16, block max / 254 for int8, / 14 for
        // int4). A score then moves by at most delta = scale * max_r ||q_r||_1 * dk, which scales every softmax weight
        // by a factor in [e^-2delta, e^2delta]; so |O' - O| <= (e^(2 delta) - 1) max|v'| + dv. The Float32 kernel's
        // own rounding adds at most the tolerance rule's bound on the stored values.
        let all = try attentionInputs(
            queryHeads: 8, keyValueHeads: 2, queryLength: 1, keyLength: 500, headDimension: 64, seed: 13)
        let exact = referenceAttention(queries: all.queries, keys: all.keys, values: all.values)
        let largestQueryNorm = (0..<8).map { h in (0..<64).reduce(0.0) { $0 + abs(Double(all.queries[0, h, 0, $1])) } }
            .max()!
        for format in Self.formats where format != .float32 {
            guard let storedKeys = roundedThrough(format, all.keys),
                let storedValues = roundedThrough(format, all.values)
            else { continue }
            func perturbation(_ original: Tensor) -> Double {
                let x = original.scalars.map { abs(Double($0)) }
                switch format {
                case .float16: return x.max()! * 0x1p-11
                case .bfloat16: return x.max()! * 0x1p-8
                case .int8(let b), .int4(let b):
                    let levels = format == .int8(blockSize: b) ? 127.0 : 7.0
                    return stride(from: 0, to: x.count, by: b).map { x[$0..<($0 + b)].max()! }.max()! / (2 * levels)
                case .float32: return 0
                }
            }
            let delta = largestQueryNorm / 8 * perturbation(all.keys)
            let largestValue = storedValues.scalars.map { abs(Double($0)) }.max()!
            let bound = (exp(2 * delta) - 1) * largestValue + perturbation(all.values)
            var cache = try KVCache(keyValueHeads: 2, headDimension: 64, storage: CacheStorage(format))
            try cache.append(keys: all.keys, values: all.values)
            let output = try cache.attention(queries: all.queries)
            let kernel = checkOutput(output, queries: all.queries, keys: storedKeys, values: storedValues)
            let error = maxAbsoluteError(output.scalars, exact.output)
            XCTAssertLessThanOrEqual(error, bound + kernel.bound, "\(format): error \(error), bound \(bound)")
            print("quantization error of \(format) vs Float32 inputs: \(error) (bound \(bound))")
        }
    }
}

/// Two [1, H, n, D] tensors joined along the tokens.
private func concatenated(_ a: Tensor, _ b: Tensor) -> Tensor {
    let (heads, d) = (a.shape[1], a.shape[3])
    var out: [Float] = []
    for h in 0..<heads {
        out += tokens(a, 0..<a.shape[2]).scalars[(h * a.shape[2] * d)..<((h + 1) * a.shape[2] * d)]
        out += b.scalars[(h * b.shape[2] * d)..<((h + 1) * b.shape[2] * d)]
    }
    return try! Tensor(shape: [1, heads, a.shape[2] + b.shape[2], d], scalars: out)
}
