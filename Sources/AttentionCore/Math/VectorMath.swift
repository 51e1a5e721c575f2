// Vectorized elementary math on SIMD16<Float>: exp, exp2 and dot products.
//
// exp(x): Cody-Waite range reduction x = n*ln2 + r with |r| <= ln2/2 (ln2 split into an 9-bit head and a tail so
// n*head is exact), a degree-7 polynomial for e^r (1 + r + r^2 * P5(r), the classic single-precision minimax
// coefficients from Moshier's Cephes library), and 2^n applied by adding n to the exponent bits.
// exp2(x): n = round(x), f = x - n (exact), a degree-6 minimax polynomial for 2^f, and the same scaling.
//
// Everything is plain multiply and add on purpose: on Swift's default x86_64 target (SSE2) a fused
// multiply-add would be a libm call per lane. Rounding to the nearest integer uses the 1.5*2^23 "magic number"
// trick instead of `rounded()`, which is also a libm call there.
//
// Accuracy (measured by VectorMathTests against Foundation's Double exp): <= 2 ulp over [-87.33, 88.72] for
// exp and [-126, 128) for exp2. Results that would be subnormal are flushed to +0 (exp(x) for x < -87.3365,
// exp2(x) for x < -126); these are weights below 1.2e-38, which no softmax row can notice. exp(-inf) = 0,
// exp(+inf) = +inf, exp(NaN) = NaN.

import AttentionPlatform

/// Vectorized math on `SIMD16<Float>` and contiguous buffers.
package enum VectorMath {
    /// e^x for each lane, accurate to 2 ulp for results in Float's normal range (see the file header).
    ///
    /// ```swift
    /// let y = VectorMath.exp(SIMD16<Float>(repeating: 1))   // every lane 2.7182817
    /// ```
    @inlinable
    package static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> { vectorExp(x) }

    /// 2^x for each lane, accurate to 2 ulp for results in Float's normal range (see the file header).
    @inlinable
    package static func exp2(_ x: SIMD16<Float>) -> SIMD16<Float> { vectorExp2(x) }

    /// tanh(x) for each lane, within 2 ulp.
    @inlinable
    package static func tanh(_ x: SIMD16<Float>) -> SIMD16<Float> { vectorTanh(x) }

    /// The dot product of two equally long Float arrays, accumulated in Float with 64 lanes in flight.
    /// - Throws: ``AttentionError/invalidValue(argument:expected:actual:)`` when the lengths differ.
    /// - Complexity: O(n).
    package static func dot(_ x: [Float], _ y: [Float]) throws -> Float {
        try AttentionError.require(
            x.count == y.count, "y.count", expected: "\(x.count) (x.count)", actual: "\(y.count)")
        return x.withUnsafeBufferPointer { x in
            y.withUnsafeBufferPointer { y in
                dotProduct(x.baseAddress, y.baseAddress, count: x.count)
            }
        }
    }
}

// MARK: - Kernels' building blocks

/// Rounds to the nearest integer (ties to even) for |x| < 2^22, returning the rounded value and the same value
/// as Int32 lanes. Adding 1.5*2^23 pushes the fraction bits out of the significand.
@inlinable @inline(__always)
package func roundToNearest(_ x: SIMD16<Float>) -> (value: SIMD16<Float>, integer: SIMD16<Int32>) {
    let magic = SIMD16<Float>(repeating: 12_582_912)
    let shifted = x + magic
    let integer =
        unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- SIMD16<Int32>(repeating: 0x4B40_0000)
    return (shifted - magic, integer)
}

/// e^r for |r| <= ln2/2 (a little beyond is fine): 1 + r + r^2 * P5(r).
@inlinable @inline(__always)
package func expPolynomial(_ r: SIMD16<Float>) -> SIMD16<Float> {
    var p = SIMD16<Float>(repeating: 1.987_569_150_0e-4)
    p = p * r + 1.398_199_950_7e-3
    p = p * r + 8.333_451_907_3e-3
    p = p * r + 4.166_579_589_4e-2
    p = p * r + 1.666_666_545_9e-1
    p = p * r + 5.000_000_120_1e-1
    return p * (r * r) + r + 1
}

/// y * 2^n by integer addition to the exponent field; valid while the result stays normal.
@inlinable @inline(__always)
package func scaleByPowerOfTwo(_ y: SIMD16<Float>, _ n: SIMD16<Int32>) -> SIMD16<Float> {
    unsafeBitCast(unsafeBitCast(y, to: SIMD16<Int32>.self) &+ (n &<< 23), to: SIMD16<Float>.self)
}

@inlinable @inline(__always)
package func vectorExp(_ x: SIMD16<Float>) -> SIMD16<Float> {
    // Clamp so the integer arithmetic below cannot overflow; out-of-range lanes are fixed up at the end.
    // `replacing(where: x .< bound)` keeps NaN lanes NaN (a comparison with NaN is false).
    let lowest: Float = -87.336_54  // -126 * ln2: below this e^x is subnormal
    let highest: Float = 88.722_8  // just below ln(Float.greatestFiniteMagnitude)
    var clamped = x.replacing(with: lowest, where: x .< lowest)
    clamped.replace(with: highest, where: clamped .> highest)
    let (n, integer) = roundToNearest(clamped * 1.442_695_04)
    // ln2 = 0.693359375 - 2.12194440e-4; n * 0.693359375 is exact for |n| <= 2^15.
    let r = (clamped - n * 0.693_359_375) + n * 2.121_944_4e-4
    var result = scaleByPowerOfTwo(expPolynomial(r), integer)
    result.replace(with: 0, where: x .< lowest)
    result.replace(with: .infinity, where: x .> highest)
    result.replace(with: x, where: x .!= x)
    return result
}

@inlinable @inline(__always)
package func vectorExp2(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let lowest: Float = -126
    let highest: Float = 127.999_99
    let tooLow = x .< lowest
    var clamped = x.replacing(with: lowest, where: tooLow)
    clamped.replace(with: highest, where: clamped .> highest)
    var result = exp2Reduced(clamped)
    result.replace(with: 0, where: tooLow)
    result.replace(with: .infinity, where: x .> highest)
    result.replace(with: x, where: x .!= x)
    return result
}

/// 2^x for x <= 0 (and -inf, NaN): `vectorExp2` without the overflow handling the softmax never needs, since its
/// arguments are scores minus their running maximum. Lanes below -127 (and -inf) are clamped to -127, where
/// n = round(x) = -127 builds the power 2^n with a zero exponent field, i.e. +0.0: they come out as exactly 0 with no
/// compare and select (as does everything below -126.5, whose true value is subnormal). 2^n is a Float multiplied
/// in rather than n added to the exponent bits, so a NaN input stays NaN whatever its payload bits.
@inlinable @inline(__always)
package func vectorExp2OfNonPositive(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let clamped = x.replacing(with: -127, where: x .< -127)
    let (n, integer) = roundToNearest(clamped)
    let power = unsafeBitCast((integer &+ 127) &<< 23, to: SIMD16<Float>.self)
    return exp2Polynomial(clamped - n) * power
}

/// 2^x for x in [-126, 128): n = round(x), f = x - n (exact, |f| <= 1/2), 2^f by a degree-6 polynomial, then n
/// added to the exponent. The coefficients are a minimax fit of 2^f on [-1/2, 1/2] for relative error (1.9e-9 in
/// exact arithmetic, made for this package with a Lawson-weighted least-squares iteration).
@inlinable @inline(__always)
package func exp2Reduced(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let (n, integer) = roundToNearest(x)
    return scaleByPowerOfTwo(exp2Polynomial(x - n), integer)
}

/// 2^f for |f| <= 1/2: the degree-6 minimax polynomial of `exp2Reduced`.
@inlinable @inline(__always)
package func exp2Polynomial(_ f: SIMD16<Float>) -> SIMD16<Float> {
    var p = SIMD16<Float>(repeating: 1.535_086_63e-4)
    p = multiplyAdd(p, f, SIMD16<Float>(repeating: 1.339_997_40e-3))
    p = multiplyAdd(p, f, SIMD16<Float>(repeating: 9.618_470_45e-3))
    p = multiplyAdd(p, f, SIMD16<Float>(repeating: 5.550_328_64e-2))
    p = multiplyAdd(p, f, SIMD16<Float>(repeating: 2.402_264_77e-1))
    p = multiplyAdd(p, f, SIMD16<Float>(repeating: 6.931_471_82e-1))
    return multiplyAdd(p, f, SIMD16<Float>(repeating: 1))
}

/// tanh(x) for each lane, within 2 ulp (measured by VectorMathTests): for |x| < 0.625 an odd polynomial
/// x + x^3 P(x^2) (a relative-error minimax fit made for this package), above it 1 - 2 / (e^(2|x|) + 1) with the
/// sign restored. NaN stays NaN; +-inf gives +-1.
@inlinable @inline(__always)
package func vectorTanh(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let magnitude = x.replacing(with: -x, where: x .< 0)
    let large = 1 - 2 / (vectorExp(magnitude + magnitude) + 1)
    let square = x * x
    var p = SIMD16<Float>(repeating: -5.712_326_6e-3)
    p = multiplyAdd(p, square, SIMD16<Float>(repeating: 2.064_628_34e-2))
    p = multiplyAdd(p, square, SIMD16<Float>(repeating: -5.374_217_41e-2))
    p = multiplyAdd(p, square, SIMD16<Float>(repeating: 1.333_147_59e-1))
    p = multiplyAdd(p, square, SIMD16<Float>(repeating: -3.333_328_37e-1))
    let small = multiplyAdd(x * square, p, x)
    var result = large.replacing(with: -large, where: x .< 0)
    result.replace(with: small, where: magnitude .< 0.625)
    return result
}

/// The lanes' sum, as a balanced tree (the stdlib's `.sum()` is a sequential scalar loop).
@inlinable @inline(__always)
package func horizontalSum(_ v: SIMD16<Float>) -> Float {
    let a = v.lowHalf + v.highHalf
    let b = a.lowHalf + a.highHalf
    let c = b.lowHalf + b.highHalf
    return c[0] + c[1]
}

/// The lane-wise maximum as one compare and one blend. (The stdlib's `pointwiseMax` is a scalar loop with a
/// compare per lane.) A NaN in `b` is ignored; a NaN in `a` is kept.
@inlinable @inline(__always)
package func vectorMax(_ a: SIMD16<Float>, _ b: SIMD16<Float>) -> SIMD16<Float> {
    a.replacing(with: b, where: a .< b)
}

/// The lanes' maximum, as a balanced tree.
@inlinable @inline(__always)
package func horizontalMax(_ v: SIMD16<Float>) -> Float {
    let a = v.lowHalf.replacing(with: v.highHalf, where: v.lowHalf .< v.highHalf)
    let b = a.lowHalf.replacing(with: a.highHalf, where: a.lowHalf .< a.highHalf)
    let c = b.lowHalf.replacing(with: b.highHalf, where: b.lowHalf .< b.highHalf)
    return Swift.max(c[0], c[1])
}

/// The lanes' minimum, as a balanced tree.
@inlinable @inline(__always)
package func horizontalMin(_ v: SIMD16<Float>) -> Float {
    let a = v.lowHalf.replacing(with: v.highHalf, where: v.highHalf .< v.lowHalf)
    let b = a.lowHalf.replacing(with: a.highHalf, where: a.highHalf .< a.lowHalf)
    let c = b.lowHalf.replacing(with: b.highHalf, where: b.highHalf .< b.lowHalf)
    return Swift.min(c[0], c[1])
}

/// Loads 16 floats from `pointer + offset` (no alignment requirement).
@inlinable @inline(__always)
package func load16(_ pointer: UnsafePointer<Float>, _ offset: Int) -> SIMD16<Float> {
    UnsafeRawPointer(pointer + offset).loadUnaligned(as: SIMD16<Float>.self)
}

/// Stores 16 floats at `pointer + offset` (no alignment requirement).
@inlinable @inline(__always)
package func store16(_ value: SIMD16<Float>, _ pointer: UnsafeMutablePointer<Float>, _ offset: Int) {
    UnsafeMutableRawPointer(pointer + offset).storeBytes(of: value, as: SIMD16<Float>.self)
}

/// target[i] = source[i] * scale for i in 0..<count, 16 floats at a time (the ranges must not overlap).
@inline(__always)
package func scaledCopy(
    _ source: UnsafePointer<Float>, scale: Float, count: Int, into target: UnsafeMutablePointer<Float>
) {
    var i = 0
    while i + 16 <= count {
        store16(load16(source, i) * scale, target, i)
        i += 16
    }
    for i in i..<count { target[i] = source[i] * scale }
}

/// Sum of x[i] * y[i] for i in 0..<count, with four 16-lane accumulators (64 products in flight).
package func dotProduct(_ x: UnsafePointer<Float>?, _ y: UnsafePointer<Float>?, count: Int) -> Float {
    guard let x, let y, count > 0 else { return 0 }
    var a0 = SIMD16<Float>()
    var a1 = SIMD16<Float>()
    var a2 = SIMD16<Float>()
    var a3 = SIMD16<Float>()
    var i = 0
    while i + 64 <= count {
        a0 += load16(x, i) * load16(y, i)
        a1 += load16(x, i + 16) * load16(y, i + 16)
        a2 += load16(x, i + 32) * load16(y, i + 32)
        a3 += load16(x, i + 48) * load16(y, i + 48)
        i += 64
    }
    while i + 16 <= count {
        a0 += load16(x, i) * load16(y, i)
        i += 16
    }
    var total = horizontalSum((a0 + a1) + (a2 + a3))
    while i < count {
        total += x[i] * y[i]
        i += 1
    }
    return total
}

/// Four, eight floats at `pointer` (unaligned), and their stores.
@inline(__always)
package func load4(_ pointer: UnsafePointer<Float>) -> SIMD4<Float> {
    UnsafeRawPointer(pointer).loadUnaligned(as: SIMD4<Float>.self)
}

@inline(__always)
package func load8(_ pointer: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(pointer).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always)
package func store4(_ value: SIMD4<Float>, _ pointer: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: SIMD4<Float>.self)
}

@inline(__always)
package func store8(_ value: SIMD8<Float>, _ pointer: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: SIMD8<Float>.self)
}

/// Lanes 4 j ..< 4 j + 4 of `v` (j a constant after inlining: two half extractions).
@inline(__always)
package func quarter(_ v: SIMD16<Float>, _ j: Int) -> SIMD4<Float> {
    let half = j < 2 ? v.lowHalf : v.highHalf
    return j % 2 == 0 ? half.lowHalf : half.highHalf
}

/// acc + a * b: one fused multiply-add (one rounding) when the build target has FMA (`-Xcc -march=native` on a
/// CPU with FMA, every arm64 build) or the `FusedMultiplyAdd` package trait forces it; otherwise a multiply and an
/// add, because on Swift's default x86_64 target a fused multiply-add is a libm call per lane (see the README's
/// "Build flags" section). The target test is a constant the compiler folds (see AttentionPlatform.h).
@inlinable @inline(__always)
package func multiplyAdd(_ a: SIMD16<Float>, _ b: SIMD16<Float>, _ acc: SIMD16<Float>) -> SIMD16<Float> {
    #if FusedMultiplyAdd
        return acc.addingProduct(a, b)
    #else
        if swift_attention_target_has_fma() != 0 { return acc.addingProduct(a, b) }
        return acc + a * b
    #endif
}

/// `multiplyAdd` on eight lanes (one 256-bit register on AVX2). A concrete copy, not one generic function: in a
/// function generic over `SIMD` the operators resolve to the protocol's lane-by-lane implementations.
@inlinable @inline(__always)
package func multiplyAdd(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ acc: SIMD8<Float>) -> SIMD8<Float> {
    #if FusedMultiplyAdd
        return acc.addingProduct(a, b)
    #else
        if swift_attention_target_has_fma() != 0 { return acc.addingProduct(a, b) }
        return acc + a * b
    #endif
}

/// The sum of `count` floats in four independent vector chains (one add per 16 floats): NaN or infinite whenever a
/// value is, and, as a side effect, a pass that streams memory in with many cache misses in flight.
@inline(__always)
package func streamingSum(_ values: UnsafePointer<Float>, count: Int) -> Float {
    var (p0, p1, p2, p3) = (SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>())
    var i = 0
    while i + 64 <= count {
        p0 += load16(values, i)
        p1 += load16(values, i + 16)
        p2 += load16(values, i + 32)
        p3 += load16(values, i + 48)
        i += 64
    }
    var probe = (p0 + p1) + (p2 + p3)
    while i + 16 <= count {
        probe += load16(values, i)
        i += 16
    }
    var tail: Float = 0
    while i < count {
        tail += values[i]
        i += 1
    }
    return horizontalSum(probe) + tail
}

/// Hints the CPU to start loading the cache line holding `address` into L2 (x86 `prefetcht1`, arm64 `prfm
/// pldl2keep`; nothing where there is no such instruction). Never faults, never changes a result. It is
/// `__builtin_prefetch` from AttentionPlatform: a C call is nounwind, so it stays a plain call under the thread
/// sanitizer, where binding LLVM's intrinsic directly (`@_silgen_name`) failed to compile. Locality 2 measured as
/// fast as 1 in the decode kernel and faster than 3 or 0.
@inline(__always)
package func prefetchToL2(_ address: UnsafeRawPointer) {
    swift_attention_prefetch_l2(address)
}

/// Prefetches `count` floats at `start` into L2, one hint per 64-byte line.
@inline(__always)
package func prefetchToL2(_ start: UnsafePointer<Float>, count: Int) {
    var offset = 0
    while offset < count {
        prefetchToL2(UnsafeRawPointer(start + offset))
        offset &+= 16
    }
}
