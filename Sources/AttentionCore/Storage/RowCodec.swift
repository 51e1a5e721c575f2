// RowCodec: encodes Float32 rows into a `StorageFormat` and decodes stored rows back into Float32 with
// vectorized loops. The tile walk decodes each key and value tile of a non-Float32 segment into a per-worker tile of
// Bc rows (L1/L2-resident) right before the micro-kernels read it (keys before the scores, values after them,
// over the keys); a tile is the most ever decoded at once. (The four-row decode kernels of 16-register targets read
// 8-bit, Float16 and BFloat16 rows as stored instead, converting in registers: see `directRows`.)
//
// Decoding vectorizes on every target (SSE2 to AVX-512, NEON). Float16 uses the hardware conversion where the
// build target has one (arm64; x86_64 with F16C, e.g. -march=native or x86-64-v3). Elsewhere, and on x86_64 Apple
// platforms, which lack the `Float16` type, it is branch-free integer and float arithmetic per value: a binary16
// value's bits shifted into binary32 position and multiplied by 2^112 give its value exactly, normal or subnormal;
// the exponent-31 codes (infinity, NaN) are moved to exponent 255 by a select. Encoding runs once per appended row
// (and once per stored tensor or Float16 result): Float16 by the hardware conversion where decoding uses it, the
// other formats by loops written to vectorize (the 8- and 4-bit ones with integer maxima and rounding by addition).

import AttentionPlatform

/// The rows of one format and dimension.
package struct RowCodec: Sendable, Hashable {
    package let format: StorageFormat
    package let dimension: Int
    /// Bytes per encoded row.
    package let rowBytes: Int

    package init(_ format: StorageFormat, dimension: Int) {
        self.format = format
        self.dimension = dimension
        rowBytes = format.bytesPerRow(dimension: dimension)
    }

    /// How the four-row decode kernels read this format's rows without decoding them (keys in
    /// `scoresFromStoredRows`, values in `accumulateStoredValues`), or nil where they decode them: 8-bit rows with
    /// blocks a multiple of 8 values, Float16 where the target converts it in hardware, BFloat16 (4-bit rows are
    /// decoded, see `scoresFromStoredRows`).
    var directRows: DirectRows? {
        switch format {
        case .int8(let b): return b % 8 == 0 ? .int8(blockSize: b) : nil
        case .float16:
            #if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
                return targetConvertsFloat16 ? .float16 : nil
            #else
                return nil
            #endif
        case .bfloat16: return .bfloat16
        case .float32, .int4: return nil
        }
    }

    /// Scales per quantized row (0 for the float formats).
    private var blockCount: Int {
        switch format {
        case .float32, .float16, .bfloat16: return 0
        case .int8(let b), .int4(let b): return dimension / b
        }
    }

    // MARK: Encoding

    /// Encodes `rows` rows of `dimension` floats (consecutive at `source`) into consecutive rows at `target`.
    package func encode(_ source: UnsafePointer<Float>, rows: Int, into target: UnsafeMutableRawPointer) {
        for row in 0..<rows { encodeRow(source + row * dimension, into: target + row * rowBytes) }
    }

    private func encodeRow(_ x: UnsafePointer<Float>, into target: UnsafeMutableRawPointer) {
        let d = dimension
        switch format {
        case .float32:
            target.copyMemory(from: x, byteCount: 4 * d)
        case .float16:
            encodeFloat16(x, count: d, into: target)
        case .bfloat16:
            for i in 0..<d { target.storeBytes(of: bfloat16Bits(x[i]), toByteOffset: 2 * i, as: UInt16.self) }
        case .int8(let b):
            let codes = (target + 4 * blockCount).assumingMemoryBound(to: UInt8.self)
            encodeBlocks(x, blockSize: b, levels: 127, offset: 0, scales: target, codes: codes)
        case .int4(let b):
            let packed = (target + 4 * blockCount).assumingMemoryBound(to: UInt8.self)
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: d) { buffer in
                let codes = buffer.baseAddress!
                encodeBlocks(x, blockSize: b, levels: 7, offset: 8, scales: target, codes: codes)
                // Each group of 32 values (fewer in a last short group): its first half in the low nibbles of its
                // bytes, the second half in the high ones (see ``StorageFormat``).
                var group = 0
                while group < d {
                    let t = Swift.min(32, d - group)
                    let h = (t + 1) / 2
                    let (low, high, out) = (codes + group, codes + (group &+ h), packed + group / 2)
                    for j in 0..<(t / 2) { out[j] = low[j] | high[j] &<< 4 }
                    if t % 2 == 1 { out[h - 1] = low[h - 1] }
                    group += 32
                }
            }
        }
    }

    /// Each block's scale (Float32, at `scales`) and each value's code + `offset` as one byte (two's complement for
    /// 8-bit codes, q + 8 for 4-bit ones), `dimension` bytes at `codes`.
    private func encodeBlocks(
        _ x: UnsafePointer<Float>, blockSize b: Int, levels: Int32, offset: Int32, scales: UnsafeMutableRawPointer,
        codes: UnsafeMutablePointer<UInt8>
    ) {
        for block in 0..<blockCount {
            let (values, out) = (x + block &* b, codes + block &* b)
            let scale = blockScale(values, count: b, levels: Float(levels))
            scales.storeBytes(of: scale, toByteOffset: 4 * block, as: Float.self)
            for i in 0..<b {
                out[i] = UInt8(truncatingIfNeeded: quantize(values[i], scale: scale, levels: levels) &+ offset)
            }
        }
    }

    /// max |x| / levels over a block, or NaN when the block holds NaN or infinity. The maximum is taken over the
    /// magnitudes' bit patterns, whose integer order is their order as floats (and puts infinity and NaN above
    /// every finite value): an integer reduction, which vectorizes, where a float one would not without fast-math.
    private func blockScale(_ x: UnsafePointer<Float>, count: Int, levels: Float) -> Float {
        var largest: UInt32 = 0
        for i in 0..<count { largest = Swift.max(largest, x[i].bitPattern & 0x7fff_ffff) }
        return largest >= 0x7f80_0000 ? .nan : Float(bitPattern: largest) / levels
    }

    /// round(x / scale) to nearest even, within -levels...levels; 0 for a zero or NaN scale (the scale carries
    /// NaN). The rounding adds 1.5 * 2^23, which leaves the rounded quotient in the low bits (exact for
    /// |x / scale| < 2^22; a finite block's quotients are at most levels, or 1.5 times that when the scale is a
    /// rounded subnormal), and the scale's test is a select: a block's loop has no branch and no conversion that
    /// could trap, so it vectorizes.
    @inline(__always)
    private func quantize(_ x: Float, scale: Float, levels: Int32) -> Int32 {
        let shifted = x / scale + 12_582_912
        let code = Int32(bitPattern: shifted.bitPattern) &- 0x4B40_0000
        return scale > 0 ? Swift.min(levels, Swift.max(-levels, code)) : 0
    }

    // MARK: Decoding

    /// Decodes `rows` stored rows `rowStride` bytes apart (rows of other heads in between, as in a [B, N, H, d]
    /// layout), row by row unless they are consecutive. Rows apart are hinted eight rows ahead: at d 128 each
    /// starts a new page, which the hardware prefetchers do not follow (a C model copying one head's rows of a
    /// [4096, 8, 64] tensor: 6.9 -> 9.1 GB/s with the hints, Zen 3, 2026-12-07). Float32 rows are copied here
    /// (the C library's copy per row) rather than through the out-of-line decoder.
    @inline(__always)
    package func decode(
        _ source: UnsafeRawPointer, rows: Int, rowStride: Int, into target: UnsafeMutablePointer<Float>
    ) {
        if rowStride == rowBytes { return decode(source, rows: rows, into: target) }
        for row in 0..<rows {
            hintRow(row + 8, of: rows, source, rowStride: rowStride)
            let (from, to) = (source + row * rowStride, target + row * dimension)
            if format == .float32 {
                to.update(from: from.assumingMemoryBound(to: Float.self), count: dimension)
            } else {
                decode(from, rows: 1, into: to)
            }
        }
    }

    /// Copies `rows` stored rows `rowStride` bytes apart to consecutive rows at `target`, as stored (not
    /// decoded), hinting rows eight ahead as `decode(_:rows:rowStride:into:)` does.
    package func copyRows(_ source: UnsafeRawPointer, rows: Int, rowStride: Int, into target: UnsafeMutableRawPointer) {
        for row in 0..<rows {
            hintRow(row + 8, of: rows, source, rowStride: rowStride)
            (target + row * rowBytes).copyMemory(from: source + row * rowStride, byteCount: rowBytes)
        }
    }

    /// Prefetches the lines of row `row` (if it is one of the `rows`) of rows `rowStride` bytes apart.
    @inline(__always)
    private func hintRow(_ row: Int, of rows: Int, _ source: UnsafeRawPointer, rowStride: Int) {
        guard row < rows else { return }
        let ahead = source + row * rowStride
        for line in stride(from: 0, to: rowBytes, by: 64) { prefetchToL2(ahead + line) }
    }

    /// Decodes `rows` consecutive stored rows at `source` into `rows * dimension` floats at `target`. Called once
    /// per tile; the loops stay out of line, where the vectorizer handles each alone (inlined into the work item,
    /// the Float16 loop once stayed scalar: 7x slower).
    @inline(never)
    package func decode(_ source: UnsafeRawPointer, rows: Int, into target: UnsafeMutablePointer<Float>) {
        let (d, bytes) = (dimension, rowBytes)
        switch format {
        case .float32:
            target.update(from: source.assumingMemoryBound(to: Float.self), count: rows * d)
        case .float16:
            decodeFloat16(source.assumingMemoryBound(to: UInt16.self), count: rows * d, into: target)
        case .bfloat16:
            decodeBFloat16(source.assumingMemoryBound(to: UInt16.self), count: rows * d, into: target)
        case .int8(let b):
            decodeInt8(source, rows: rows, rowBytes: bytes, into: target, dimension: d, blockSize: b)
        case .int4(let b):
            decodeInt4(source, rows: rows, rowBytes: bytes, into: target, dimension: d, blockSize: b)
        }
    }
}

// MARK: Row decoders
//
// Written so that LLVM vectorizes them on every target: plain loops over whole tiles for the 16-bit formats, and
// 16-lane conversions from registers for the quantized ones. Written with SIMD16 conversions and lane selects, the
// Float16 decode ran as outlined stdlib calls and a per-lane loop (2026-12-02): 6.5x slower than Float32.

@inline(never)
private func decodeFloat16(_ codes: UnsafePointer<UInt16>, count: Int, into out: UnsafeMutablePointer<Float>) {
    #if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
        if targetConvertsFloat16 { return decodeFloat16Natively(codes, count: count, into: out) }
    #endif
    for c in 0..<count { out[c] = float16Value(codes[c]) }
}

#if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
    /// Whether the build target converts Float16 in hardware: always on arm64; on x86_64 with F16C in the target
    /// (one vcvtph2ps per 8 values). Without F16C, Swift's conversion would call a library routine per value, so the
    /// bit arithmetic (4-6 operations per value) serves instead.
    @inline(__always)
    var targetConvertsFloat16: Bool {
        #if arch(arm64)
            return true
        #else
            return swift_attention_target_features() & Int32(SWIFT_ATTENTION_F16C) != 0
        #endif
    }

    /// Float16 to Float32 by the type's own conversion: fcvtl on arm64, vcvtph2ps where the target has F16C.
    @inline(never)
    private func decodeFloat16Natively(
        _ codes: UnsafePointer<UInt16>, count: Int, into out: UnsafeMutablePointer<Float>
    ) {
        let halves = UnsafeRawPointer(codes).assumingMemoryBound(to: Float16.self)
        for c in 0..<count { out[c] = Float(halves[c]) }
    }
#endif

/// Float32 -> binary16 codes, rounded to nearest even: the type's own conversion where the target converts in
/// hardware (vcvtps2ph with F16C, one per 8 values; fcvtn on arm64), else `float16Bits`, which gives the same codes
/// (`StorageFormatTests`) at about 35 cycles a value: encoding a 32 MiB attention output for a Float16 result took
/// 96 ms that way on Zen 3, against 7 ms for BFloat16's rounding (2026-12-07).
@inline(never)
private func encodeFloat16(_ x: UnsafePointer<Float>, count: Int, into target: UnsafeMutableRawPointer) {
    #if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
        if targetConvertsFloat16 {
            for i in 0..<count { target.storeBytes(of: Float16(x[i]).bitPattern, toByteOffset: 2 * i, as: UInt16.self) }
            return
        }
    #endif
    for i in 0..<count { target.storeBytes(of: float16Bits(x[i]), toByteOffset: 2 * i, as: UInt16.self) }
}

@inline(never)
private func decodeBFloat16(_ codes: UnsafePointer<UInt16>, count: Int, into out: UnsafeMutablePointer<Float>) {
    for c in 0..<count { out[c] = Float(bitPattern: UInt32(codes[c]) &<< 16) }
}

@inline(never)
private func decodeInt8(
    _ source: UnsafeRawPointer, rows: Int, rowBytes: Int, into target: UnsafeMutablePointer<Float>, dimension d: Int,
    blockSize b: Int
) {
    let blocks = d / b
    for r in 0..<rows {
        let row = source + r * rowBytes
        let scales = row.assumingMemoryBound(to: Float.self)
        let codes = (row + 4 * blocks).assumingMemoryBound(to: Int8.self)
        let out = target + r * d
        if b % 16 == 0 {
            // Block by block, so that no lane group divides to find its scale (an integer division per 16 values
            // cost more than the conversion), with wrapping index arithmetic: with checked `stride` and block
            // products, the loop control took about a third of the decode's time (perf, Zen 2, 2026-12-06).
            var offset = 0
            for block in 0..<blocks {
                let scale = SIMD16<Float>(repeating: scales[block])
                let end = offset &+ b
                while offset < end {
                    let q = UnsafeRawPointer(codes + offset).loadUnaligned(as: SIMD16<Int8>.self)
                    store16(floats(q) * scale, out, offset)
                    offset &+= 16
                }
            }
        } else {
            for i in 0..<d { out[i] = Float(codes[i]) * scales[i / b] }
        }
    }
}

@inline(never)
private func decodeInt4(
    _ source: UnsafeRawPointer, rows: Int, rowBytes: Int, into target: UnsafeMutablePointer<Float>, dimension d: Int,
    blockSize b: Int
) {
    let blocks = d / b
    if d % 32 == 0 && b % 32 == 0 {
        // Every group of 32 values whole and inside one block (the default blocks of 32): block by block with
        // wrapping index arithmetic, as in decodeInt8. The general loop below spent about half its time on its
        // control (perf, Zen 2, 2026-12-06).
        for r in 0..<rows {
            let row = source + r &* rowBytes
            let scales = row.assumingMemoryBound(to: Float.self)
            let codes = row + 4 &* blocks
            let out = target + r &* d
            var group = 0
            for block in 0..<blocks {
                let scale = SIMD16<Float>(repeating: scales[block])
                let end = group &+ b
                while group < end {
                    let q = (codes + group &>> 1).loadUnaligned(as: SIMD16<UInt8>.self)
                    store16(floats(unsafeBitCast((q & 15) &- 8, to: SIMD16<Int8>.self)) * scale, out, group)
                    store16(floats(unsafeBitCast((q &>> 4) &- 8, to: SIMD16<Int8>.self)) * scale, out, group &+ 16)
                    group &+= 32
                }
            }
        }
        return
    }
    for r in 0..<rows {
        let row = source + r * rowBytes
        let scales = row.assumingMemoryBound(to: Float.self)
        let codes = (row + 4 * blocks).assumingMemoryBound(to: UInt8.self)
        var group = 0
        // The scale index of value `group` and of value `group + 16`, kept without dividing (see decodeInt8).
        var (block, blockEnd) = (0, b)
        while group < d {
            // Group of t values: byte j holds value j (low nibble) and value j + h (high nibble).
            let t = Swift.min(32, d - group)
            let h = (t + 1) / 2
            let bytes = codes + group / 2
            let out = target + r * d + group
            if t == 32 && b % 16 == 0 {
                let q = UnsafeRawPointer(bytes).loadUnaligned(as: SIMD16<UInt8>.self)
                while group >= blockEnd { (block, blockEnd) = (block + 1, blockEnd + b) }
                let upper = group + 16 >= blockEnd ? block + 1 : block
                store16(floats(unsafeBitCast((q & 15) &- 8, to: SIMD16<Int8>.self)) * scales[block], out, 0)
                store16(floats(unsafeBitCast((q &>> 4) &- 8, to: SIMD16<Int8>.self)) * scales[upper], out, 16)
            } else {
                for j in 0..<t {
                    let code = j < h ? bytes[j] & 15 : bytes[j - h] &>> 4
                    out[j] = nibbleValue(code) * scales[(group + j) / b]
                }
            }
            group += 32
        }
    }
}

/// 16 signed bytes as floats. Converted lane by lane from a register, this compiles to one widening and one
/// conversion (vpmovsxbd + vcvtdq2ps on AVX-512); `SIMD16<Float>(SIMD16<Int32>(truncatingIfNeeded:))` became two
/// outlined stdlib calls, and a lane loop reading memory stayed scalar (the stores might alias the codes).
@inline(__always)
private func floats(_ q: SIMD16<Int8>) -> SIMD16<Float> {
    var result = SIMD16<Float>()
    for i in 0..<16 { result[i] = Float(q[i]) }
    return result
}

/// A 4-bit code's value, code - 8, as a Float: 2^23 + code has the code in its low mantissa bits, so subtracting
/// 2^23 + 8 is exact (and vectorizes as integer OR and one float subtraction).
@inline(__always)
private func nibbleValue(_ code: UInt8) -> Float {
    Float(bitPattern: 0x4B00_0000 | UInt32(code)) - 8_388_616
}

// MARK: Scalar conversions

/// binary16 bits -> Float: shift into binary32 position and scale by 2^112 (exact for normal and subnormal values);
/// exponent 31 (infinity, NaN) goes to exponent 255.
@inline(__always)
package func float16Value(_ h: UInt16) -> Float {
    let magnitude = UInt32(h & 0x7fff) &<< 13
    let sign = UInt32(h & 0x8000) &<< 16
    let scaled = (Float(bitPattern: magnitude) * 0x1p112).bitPattern
    return Float(bitPattern: (magnitude >= 0x0f80_0000 ? magnitude | 0x7000_0000 : scaled) | sign)
}

/// Float -> binary16 bits, rounded to nearest even: overflow gives infinity, NaN stays a (quiet) NaN.
package func float16Bits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    let sign = UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000)
    let exponent = Int((bits >> 23) & 0xff)
    let mantissa = bits & 0x7f_ffff
    if exponent == 0xff { return sign | 0x7c00 | (mantissa != 0 ? 0x200 | UInt16(mantissa >> 13) : 0) }
    let e = exponent - 112  // the binary16 exponent field
    if e >= 31 { return sign | 0x7c00 }
    // Keep `shift` low bits off the 24-bit significand: 13 for normal results, more for subnormal ones.
    let significand = exponent == 0 ? mantissa : mantissa | 0x80_0000
    let shift = e >= 1 ? 13 : 14 - e
    if shift > 24 { return sign }
    var result = significand >> UInt32(shift)
    let remainder = significand & ((1 << UInt32(shift)) - 1)
    let halfway = UInt32(1) << UInt32(shift - 1)
    if remainder > halfway || (remainder == halfway && result & 1 == 1) { result += 1 }
    // For normal results, add the exponent; a carry out of the significand correctly bumps it (up to infinity).
    if e >= 1 { result = (UInt32(e) << 10) + (result - 0x400) }
    return sign | UInt16(truncatingIfNeeded: result)
}

/// Float -> bfloat16 bits (the upper half of binary32), rounded to nearest even; NaN stays a (quiet) NaN.
package func bfloat16Bits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x40 }
    let rounded = bits &+ 0x7fff &+ ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: rounded >> 16)
}
