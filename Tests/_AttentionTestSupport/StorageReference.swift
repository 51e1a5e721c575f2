// The storage formats as their definitions state them, written out independently of the package's codec: what a
// Float32 value becomes when stored as Float16 (Swift's own `Float16` conversion), BFloat16 (the nearer of the
// two neighbouring bfloat16 values, ties to even, found by comparing distances in Double) and symmetric per-block
// int8 / int4 (s = max |x| / levels, q = round(x / s) to nearest even, value q * s). Tests compare the caches'
// decoded contents with these, then run the Float64 reference on these values.

import AttentionCore

/// `x` rounded to the nearest Float16 and back (nil where the platform has no `Float16`: x86_64 macOS).
public func roundedThroughFloat16(_ x: Float) -> Float? {
    #if !(os(macOS) && arch(x86_64))
        return Float(Float16(x))
    #else
        return nil
    #endif
}

/// `x` rounded to the nearest bfloat16 (ties to even), by comparing the two candidates' distances in Double.
public func roundedThroughBFloat16(_ x: Float) -> Float {
    if !x.isFinite { return x }
    let truncated = x.bitPattern & 0xffff_0000
    let down = Float(bitPattern: truncated)
    let up = Float(bitPattern: truncated + 0x1_0000)  // next bfloat16 away from zero (may be infinity)
    // Past the largest bfloat16, "up" is infinity, which rounding treats as the next power of two, 2^128.
    let upValue = up.isInfinite ? (x < 0 ? -0x1p128 : 0x1p128) : Double(up)
    let (dDown, dUp) = (abs(Double(x) - Double(down)), abs(Double(x) - upValue))
    if dDown < dUp { return down }
    if dUp < dDown { return up }
    return (truncated >> 16) & 1 == 0 ? down : up
}

/// Symmetric per-block quantization of each row of length `rowLength`: blocks of `blockSize` values, scale
/// max |x| / levels (127 or 7), values round(x / s) * s; a block with a non-finite value becomes NaN throughout.
public func roundedThroughBlocks(_ scalars: [Float], rowLength: Int, blockSize: Int, levels: Float) -> [Float] {
    var out = scalars
    for blockStart in stride(from: 0, to: scalars.count, by: blockSize) {
        let block = scalars[blockStart..<(blockStart + blockSize)]
        if block.contains(where: { !$0.isFinite }) {
            for i in block.indices { out[i] = .nan }
            continue
        }
        let scale = (block.map { abs($0) }.max() ?? 0) / levels
        for i in block.indices {
            // q is an integer code: a negative value that rounds to code 0 decodes to +0, not -0.
            let q = scale == 0 ? 0 : (scalars[i] / scale).rounded(.toNearestOrEven)
            out[i] = (q == 0 ? 0 : q) * scale
        }
    }
    return out
}

/// A tensor's values as a cache of `format` stores them (nil for float16 where the platform lacks `Float16`).
public func roundedThrough(_ format: StorageFormat, _ tensor: Tensor) -> Tensor? {
    let d = tensor.shape.last ?? 1
    var scalars: [Float]
    switch format {
    case .float32: scalars = tensor.scalars
    case .float16:
        guard roundedThroughFloat16(0) != nil else { return nil }
        scalars = tensor.scalars.map { roundedThroughFloat16($0)! }
    case .bfloat16: scalars = tensor.scalars.map(roundedThroughBFloat16)
    case .int8(let b): scalars = roundedThroughBlocks(tensor.scalars, rowLength: d, blockSize: b, levels: 127)
    case .int4(let b): scalars = roundedThroughBlocks(tensor.scalars, rowLength: d, blockSize: b, levels: 7)
    }
    return try! Tensor(shape: tensor.shape, scalars: scalars)
}
