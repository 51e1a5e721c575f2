// SplitMix64: the documented, seedable generator behind every random tensor in this package.
//
// Algorithm: Steele, Lea and Flood, "Fast splittable pseudorandom number generators" (OOPSLA 2014). The state
// advances by the golden-ratio increment 0x9E3779B97F4A7C15 and each output is the state passed through a
// 64-bit finalizer (xor-shift 30, multiply, xor-shift 27, multiply, xor-shift 31). The same seed gives the
// same sequence on every platform, so a run can be reproduced from its seed alone.

/// A small, fast, reproducible random number generator (SplitMix64).
///
/// ```swift
/// var generator = SplitMix64(seed: 42)
/// let bits = generator.next()            // same value on every machine
/// let x = Float.random(in: 0..<1, using: &generator)
/// ```
package struct SplitMix64: RandomNumberGenerator, Sendable, Hashable {
    /// The generator's whole state; two generators with equal state produce equal sequences.
    package private(set) var state: UInt64

    /// Creates a generator whose sequence is determined by `seed`.
    package init(seed: UInt64) {
        state = seed
    }

    /// Returns the next 64 random bits. O(1).
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform Double in [0, 1) made from the top 53 bits of `next()`.
    package mutating func nextUnitDouble() -> Double {
        Double(next() >> 11) * 0x1p-53
    }

    /// A standard normal Double (mean 0, variance 1) by the Box-Muller transform of two `nextUnitDouble()`
    /// draws; the second value of the pair is discarded so that every call consumes exactly two draws.
    package mutating func nextStandardNormal() -> Double {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1 - nextUnitDouble()
        let u2 = nextUnitDouble()
        return (-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2)
    }
}
