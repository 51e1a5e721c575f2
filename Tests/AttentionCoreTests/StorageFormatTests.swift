import AttentionCore
import XCTest
import _AttentionTestSupport

final class StorageFormatTests: XCTestCase {
    static let formats: [StorageFormat] = [
        .float32, .float16, .bfloat16, .int8(), .int4(), .int8(blockSize: 16),
        .int4(blockSize: 8),
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
            var cache = try KVCache(keyValueHeads: 2, headDimension: 64, format: format)
            try cache.append(keys: tokens(keys, 0..<20), values: tokens(values, 0..<20))
            try cache.append(keys: tokens(keys, 20..<37), values: tokens(values, 20..<37))
            guard let expectedKeys = roundedThrough(format, keys), let expectedValues = roundedThrough(format, values)
            else { continue }
            XCTAssertEqual(cache.contents.keys, expectedKeys, "\(format)")
            XCTAssertEqual(cache.contents.values, expectedValues, "\(format)")
            XCTAssertEqual(cache.format, format)
            XCTAssertEqual(cache.bytesPerToken, 2 * 2 * format.bytesPerRow(dimension: 64))
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
    }

    func testEveryFormatMatchesTheReferenceOnItsStoredValues() throws {
        // Odd shapes and groupings; the cache's kernels (decode for few rows, blockwise, naive) against the Float64
        // reference on the values as the format defines them.
        let shapes: [(hq: Int, hkv: Int, nq: Int, nk: Int, d: Int)] = [
            (4, 2, 1, 239, 32), (8, 2, 3, 203, 64), (3, 1, 7, 7, 16), (8, 8, 1, 1, 128), (2, 1, 113, 217, 80),
        ]
        for format in Self.formats {
            for (index, shape) in shapes.enumerated() {
                guard (try? format.validate(dimension: shape.d, argument: "", dimensionName: "")) != nil else {
                    continue
                }
                let all = try attentionInputs(
                    queryHeads: shape.hq, keyValueHeads: shape.hkv, queryLength: shape.nq, keyLength: shape.nk,
                    headDimension: shape.d, seed: UInt64(40 + index))
                var cache = try KVCache(keyValueHeads: shape.hkv, headDimension: shape.d, format: format)
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
            var cache = try KVCache(keyValueHeads: 8, headDimension: 64, format: format)
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
        for format in Self.formats {
            for kernel in [AttentionKernel.automatic, .blockwise(), .naive] {
                var all = try attentionInputs(
                    queryHeads: 2, keyValueHeads: 1, queryLength: 1, keyLength: 50, headDimension: 32, seed: 8)
                all.keys[0, 0, 49, 3] = .nan
                all.values[0, 0, 48, 5] = .infinity
                var cache = try KVCache(keyValueHeads: 1, headDimension: 32, format: format)
                try cache.append(keys: all.keys, values: all.values)
                let hidden = try cache.attention(
                    queries: all.queries, mask: .custom { _, j in j < 48 },
                    options: AttentionOptions(kernel: kernel))
                XCTAssertTrue(hidden.scalars.allSatisfy(\.isFinite), "\(format) \(kernel)")
                let seen = try cache.attention(queries: all.queries, options: AttentionOptions(kernel: kernel))
                XCTAssertTrue(seen.scalars.allSatisfy { !$0.isFinite }, "\(format) \(kernel): \(seen.scalars)")
            }
        }
    }

    func testFormatsThatDoNotFitTheHeadDimensionThrowNamingIt() throws {
        XCTAssertThrowsError(try KVCache(keyValueHeads: 1, headDimension: 48, format: .int8())) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "headDimension")
            XCTAssertEqual(
                "\(error)",
                "headDimension is 48 but expected a multiple of format's block size 32 (int8(blockSize: 32))")
        }
        XCTAssertThrowsError(
            try KVCache(keyValueHeads: 1, headDimension: 64, valueDimension: 40, format: .int4(blockSize: 16))
        ) { error in XCTAssertEqual((error as? AttentionError)?.argument, "valueDimension") }
        XCTAssertThrowsError(try KVCache(keyValueHeads: 1, headDimension: 64, format: .int4(blockSize: 0))) { error in
            XCTAssertEqual((error as? AttentionError)?.argument, "format.blockSize")
        }
    }
}
