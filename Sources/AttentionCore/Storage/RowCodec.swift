// RowCodec: encodes Float32 rows into a `StorageFormat` and decodes stored rows back into Float32, 16 values per
// vector step. The tile walk decodes each key and value tile of a non-Float32 segment into a per-worker tile of
// Bc rows (L1/L2-resident) right before the micro-kernels read it, prefetching the next tile's stored bytes as it
// goes; a tile is the most ever decoded at once.
//
// Decoding is branch-free integer and float arithmetic on 16 lanes, so it vectorizes on every target (SSE2 to
// AVX-512, NEON) and needs neither F16C nor the `Float16` type (which x86_64 macOS lacks): a binary16 value's bits
// shifted into binary32 position and multiplied by 2^112 give its value exactly, normal or subnormal; the
// exponent-31 codes (infinity, NaN) are moved to exponent 255 by a select. Encoding runs once per appended row and
// is scalar.

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
            for i in 0..<d { target.storeBytes(of: float16Bits(x[i]), toByteOffset: 2 * i, as: UInt16.self) }
        case .bfloat16:
            for i in 0..<d { target.storeBytes(of: bfloat16Bits(x[i]), toByteOffset: 2 * i, as: UInt16.self) }
        case .int8(let b):
            let codes = target + 4 * blockCount
            for block in 0..<blockCount {
                let scale = blockScale(x + block * b, count: b, levels: 127)
                target.storeBytes(of: scale, toByteOffset: 4 * block, as: Float.self)
                for i in (block * b)..<((block + 1) * b) {
                    codes.storeBytes(
                        of: Int8(quantize(x[i], scale: scale, levels: 127)), toByteOffset: i, as: Int8.self)
                }
            }
        case .int4(let b):
            let codes = target + 4 * blockCount
            codes.initializeMemory(as: UInt8.self, repeating: 0, count: (d + 1) / 2)
            for block in 0..<blockCount {
                let scale = blockScale(x + block * b, count: b, levels: 7)
                target.storeBytes(of: scale, toByteOffset: 4 * block, as: Float.self)
                for i in (block * b)..<((block + 1) * b) {
                    let code = UInt8(quantize(x[i], scale: scale, levels: 7) + 8)
                    let (byte, high) = nibblePosition(i)
                    let old = codes.load(fromByteOffset: byte, as: UInt8.self)
                    codes.storeBytes(of: old | (high ? code << 4 : code), toByteOffset: byte, as: UInt8.self)
                }
            }
        }
    }

    /// Where value `i` of a 4-bit row lives: its byte and whether it is the high nibble (see `StorageFormat`).
    private func nibblePosition(_ i: Int) -> (byte: Int, high: Bool) {
        let group = i / 32 * 32
        let t = Swift.min(32, dimension - group)
        let h = (t + 1) / 2
        let j = i - group
        return j < h ? (group / 2 + j, false) : (group / 2 + j - h, true)
    }

    /// max |x| / levels over a block, or NaN when the block holds NaN or infinity.
    private func blockScale(_ x: UnsafePointer<Float>, count: Int, levels: Float) -> Float {
        var largest: Float = 0
        for i in 0..<count {
            if !x[i].isFinite { return .nan }
            largest = Swift.max(largest, abs(x[i]))
        }
        return largest / levels
    }

    /// round(x / scale) within -levels...levels; 0 for a zero or NaN scale (the scale carries NaN).
    private func quantize(_ x: Float, scale: Float, levels: Float) -> Int {
        guard scale > 0 else { return 0 }
        return Int(Swift.min(levels, Swift.max(-levels, (x / scale).rounded(.toNearestOrEven))))
    }

    // MARK: Decoding

    /// Decodes `rows` consecutive stored rows at `source` into `rows * dimension` floats at `target`, prefetching
    /// `nextRows` rows at `next` (the next tile) into L2 as it goes, about one row's bytes per decoded row.
    @inline(__always)
    package func decode(
        _ source: UnsafeRawPointer, rows: Int, into target: UnsafeMutablePointer<Float>,
        prefetching next: UnsafeRawPointer?, nextRows: Int
    ) {
        // The format is read once per tile; each case runs its own specialized loop.
        switch format {
        case .float32:
            decodeRows(source, rows, target, next, nextRows) { row, out, d in
                out.update(from: row.assumingMemoryBound(to: Float.self), count: d)
            }
        case .float16:
            decodeRows(source, rows, target, next, nextRows) { row, out, d in decodeFloat16Row(row, out, d) }
        case .bfloat16:
            decodeRows(source, rows, target, next, nextRows) { row, out, d in decodeBFloat16Row(row, out, d) }
        case .int8(let b):
            let blocks = blockCount
            decodeRows(source, rows, target, next, nextRows) { row, out, d in
                decodeInt8Row(row, out, d, blockSize: b, blocks: blocks)
            }
        case .int4(let b):
            let blocks = blockCount
            decodeRows(source, rows, target, next, nextRows) { row, out, d in
                decodeInt4Row(row, out, d, blockSize: b, blocks: blocks)
            }
        }
    }

    @inline(__always)
    private func decodeRows(
        _ source: UnsafeRawPointer, _ rows: Int, _ target: UnsafeMutablePointer<Float>, _ next: UnsafeRawPointer?,
        _ nextRows: Int, _ row: (UnsafeRawPointer, UnsafeMutablePointer<Float>, Int) -> Void
    ) {
        let (d, bytes) = (dimension, rowBytes)
        for r in 0..<rows {
            if let next, r < nextRows { prefetchBytesToL2(next + r * bytes, count: bytes) }
            row(source + r * bytes, target + r * d, d)
        }
        if let next, nextRows > rows { prefetchBytesToL2(next + rows * bytes, count: (nextRows - rows) * bytes) }
    }
}

/// Prefetches `count` bytes at `start` into L2, one hint per 64-byte line.
@inline(__always)
func prefetchBytesToL2(_ start: UnsafeRawPointer, count: Int) {
    var offset = 0
    while offset < count {
        prefetchToL2(start + offset)
        offset &+= 64
    }
}

// MARK: Row decoders (16 values per step, scalar tails)

@inline(__always)
private func decodeFloat16Row(_ row: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, _ d: Int) {
    var c = 0
    while c + 16 <= d {
        store16(float16x16(row.loadUnaligned(fromByteOffset: 2 * c, as: SIMD16<UInt16>.self)), out, c)
        c += 16
    }
    while c < d {
        out[c] = float16Value(row.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self))
        c += 1
    }
}

@inline(__always)
private func decodeBFloat16Row(_ row: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, _ d: Int) {
    var c = 0
    while c + 16 <= d {
        let bits = SIMD16<UInt32>(truncatingIfNeeded: row.loadUnaligned(fromByteOffset: 2 * c, as: SIMD16<UInt16>.self))
        store16(unsafeBitCast(bits &<< 16, to: SIMD16<Float>.self), out, c)
        c += 16
    }
    while c < d {
        out[c] = Float(bitPattern: UInt32(row.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self)) << 16)
        c += 1
    }
}

@inline(__always)
private func decodeInt8Row(
    _ row: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, _ d: Int, blockSize b: Int, blocks: Int
) {
    let codes = row + 4 * blocks
    var c = 0
    if b % 16 == 0 {
        while c + 16 <= d {
            let scale = row.loadUnaligned(fromByteOffset: 4 * (c / b), as: Float.self)
            let q = SIMD16<Int32>(truncatingIfNeeded: codes.loadUnaligned(fromByteOffset: c, as: SIMD16<Int8>.self))
            store16(SIMD16<Float>(q) * scale, out, c)
            c += 16
        }
    }
    while c < d {
        let scale = row.loadUnaligned(fromByteOffset: 4 * (c / b), as: Float.self)
        out[c] = Float(codes.load(fromByteOffset: c, as: Int8.self)) * scale
        c += 1
    }
}

@inline(__always)
private func decodeInt4Row(
    _ row: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, _ d: Int, blockSize b: Int, blocks: Int
) {
    let codes = row + 4 * blocks
    var group = 0
    if b % 16 == 0 {
        // Whole groups of 32: byte i holds value i (low nibble) and value i + 16 (high nibble).
        while group + 32 <= d {
            let bytes = SIMD16<Int32>(
                truncatingIfNeeded: codes.loadUnaligned(fromByteOffset: group / 2, as: SIMD16<UInt8>.self))
            let low = SIMD16<Float>((bytes & 15) &- 8)
            let high = SIMD16<Float>((bytes &>> 4) &- 8)
            store16(low * row.loadUnaligned(fromByteOffset: 4 * (group / b), as: Float.self), out, group)
            store16(high * row.loadUnaligned(fromByteOffset: 4 * ((group + 16) / b), as: Float.self), out, group + 16)
            group += 32
        }
    }
    while group < d {
        let t = Swift.min(32, d - group)
        let h = (t + 1) / 2
        for j in 0..<t {
            let byte = codes.load(fromByteOffset: group / 2 + (j < h ? j : j - h), as: UInt8.self)
            let code = j < h ? byte & 15 : byte >> 4
            let scale = row.loadUnaligned(fromByteOffset: 4 * ((group + j) / b), as: Float.self)
            out[group + j] = Float(Int(code) - 8) * scale
        }
        group += 32
    }
}

// MARK: Scalar conversions

/// binary16 bits -> Float: shift into binary32 position and scale by 2^112 (exact for normal and subnormal values);
/// exponent 31 (infinity, NaN) goes to exponent 255.
@inline(__always)
package func float16Value(_ h: UInt16) -> Float {
    let magnitude = UInt32(h & 0x7fff) << 13
    let sign = UInt32(h & 0x8000) << 16
    if magnitude >= 0x0f80_0000 { return Float(bitPattern: magnitude | 0x7000_0000 | sign) }
    return Float(bitPattern: (Float(bitPattern: magnitude) * 0x1p112).bitPattern | sign)
}

/// 16 binary16 values -> Float, the same arithmetic as `float16Value` on every lane.
@inline(__always)
func float16x16(_ h: SIMD16<UInt16>) -> SIMD16<Float> {
    let wide = SIMD16<UInt32>(truncatingIfNeeded: h)
    let magnitude = (wide & 0x7fff) &<< 13
    let scaled = unsafeBitCast(unsafeBitCast(magnitude, to: SIMD16<Float>.self) * 0x1p112, to: SIMD16<UInt32>.self)
    let bits = scaled.replacing(with: magnitude | 0x7000_0000, where: magnitude .>= 0x0f80_0000)
    return unsafeBitCast(bits | ((wide & 0x8000) &<< 16), to: SIMD16<Float>.self)
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
