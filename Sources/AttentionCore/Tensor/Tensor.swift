// Tensor: a dense, row-major array of Float with a shape.
//
// Attention entry points take rank-4 tensors laid out [batch, heads, sequence, headDimension]; the last axis is
// contiguous. Storage is a Swift Array, so a Tensor has value semantics with copy-on-write: copying is O(1)
// until one copy is mutated.

/// A dense row-major tensor of `Float` with value semantics.
///
/// ```swift
/// let q = try Tensor.randomNormal(shape: [1, 8, 128, 64], seed: 1)   // [batch, heads, sequence, headDim]
/// var x = try Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
/// x[1, 2] = 7                                                        // element access by index
/// print(x)   // Tensor([2, 3]: 1.0, 2.0, 3.0, 4.0, 5.0, 7.0)
/// ```
public struct Tensor: Sendable, Equatable, CustomStringConvertible {
    /// The extent of each axis. Every dimension is >= 0; a rank-0 tensor holds one scalar.
    public let shape: [Int]

    /// The elements in row-major order (the last axis varies fastest).
    public private(set) var scalars: [Float]

    /// The number of axes.
    public var rank: Int { shape.count }

    /// The number of elements (the product of the shape).
    public var count: Int { scalars.count }

    /// Creates a tensor from row-major `scalars`.
    /// - Throws: ``AttentionError`` if a dimension is negative or `scalars.count` differs from the product of
    ///   `shape`.
    public init(shape: [Int], scalars: [Float]) throws {
        let count = try Tensor.elementCount(of: shape, argument: "shape")
        guard scalars.count == count else {
            throw AttentionError.invalidValue(
                argument: "scalars.count", expected: "\(count) (the product of shape \(shape))",
                actual: "\(scalars.count)")
        }
        self.shape = shape
        self.scalars = scalars
    }

    /// Creates a tensor filled with `value`.
    public init(shape: [Int], repeating value: Float) throws {
        let count = try Tensor.elementCount(of: shape, argument: "shape")
        self.shape = shape
        self.scalars = [Float](repeating: value, count: count)
    }

    /// Creates a tensor of zeros.
    public init(zeros shape: [Int]) throws {
        try self.init(shape: shape, repeating: 0)
    }

    /// Creates a tensor whose element at each multi-index is `body(index)`, visited in row-major order.
    ///
    /// ```swift
    /// let identity = try Tensor(shape: [3, 3]) { index in index[0] == index[1] ? 1 : 0 }
    /// ```
    public init(shape: [Int], _ body: (_ index: [Int]) throws -> Float) throws {
        let count = try Tensor.elementCount(of: shape, argument: "shape")
        var scalars = [Float]()
        scalars.reserveCapacity(count)
        var index = [Int](repeating: 0, count: shape.count)
        for _ in 0..<count {
            scalars.append(try body(index))
            var axis = shape.count - 1
            while axis >= 0 {
                index[axis] += 1
                if index[axis] < shape[axis] { break }
                index[axis] = 0
                axis -= 1
            }
        }
        self.shape = shape
        self.scalars = scalars
    }

    /// A tensor of independent normal samples, reproducible from `seed`.
    ///
    /// Element k (row-major) is `mean + standardDeviation * z`, where z is the k-th
    /// `SplitMix64(seed: seed).nextStandardNormal()` (Box-Muller in Double), rounded to Float.
    public static func randomNormal(
        shape: [Int], mean: Float = 0, standardDeviation: Float = 1, seed: UInt64
    ) throws -> Tensor {
        try AttentionError.require(
            mean.isFinite, "mean", expected: "a finite number", actual: "\(mean)")
        try AttentionError.require(
            standardDeviation.isFinite && standardDeviation >= 0, "standardDeviation",
            expected: "a finite number >= 0", actual: "\(standardDeviation)")
        let count = try elementCount(of: shape, argument: "shape")
        var generator = SplitMix64(seed: seed)
        var scalars = [Float]()
        scalars.reserveCapacity(count)
        for _ in 0..<count {
            scalars.append(
                Float(Double(mean) + Double(standardDeviation) * generator.nextStandardNormal()))
        }
        return try Tensor(shape: shape, scalars: scalars)
    }

    /// A tensor of independent uniform samples in `range`, reproducible from `seed`.
    ///
    /// Element k (row-major) is `lower + (upper - lower) * u`, where u is the k-th
    /// `SplitMix64(seed: seed).nextUnitDouble()` in [0, 1), computed in Double and rounded to Float.
    public static func randomUniform(
        shape: [Int], in range: ClosedRange<Float> = -1...1, seed: UInt64
    ) throws -> Tensor {
        try AttentionError.require(
            range.lowerBound.isFinite && range.upperBound.isFinite, "range", expected: "finite bounds",
            actual: "\(range)")
        let count = try elementCount(of: shape, argument: "shape")
        var generator = SplitMix64(seed: seed)
        let lower = Double(range.lowerBound)
        let width = Double(range.upperBound) - lower
        var scalars = [Float]()
        scalars.reserveCapacity(count)
        for _ in 0..<count {
            scalars.append(Float(lower + width * generator.nextUnitDouble()))
        }
        return try Tensor(shape: shape, scalars: scalars)
    }

    /// The element at a multi-index with one entry per axis.
    ///
    /// Like `Array`'s subscript, an index out of bounds is a programming error and traps.
    public subscript(_ index: Int...) -> Float {
        get { scalars[offset(of: index)] }
        set { scalars[offset(of: index)] = newValue }
    }

    /// The row-major offset of a multi-index. Traps when the index does not fit the shape.
    public func offset(of index: [Int]) -> Int {
        precondition(
            index.count == shape.count,
            "index \(index) has \(index.count) entries but tensor has rank \(rank)")
        var offset = 0
        for axis in 0..<shape.count {
            precondition(
                index[axis] >= 0 && index[axis] < shape[axis],
                "index \(index) is out of bounds for shape \(shape)")
            offset = offset * shape[axis] + index[axis]
        }
        return offset
    }

    /// Calls `body` with a pointer to the row-major elements.
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows
        -> R
    {
        try scalars.withUnsafeBufferPointer(body)
    }

    /// Calls `body` with a mutable pointer to the row-major elements.
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (inout UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        try scalars.withUnsafeMutableBufferPointer(body)
    }

    /// Prints the shape and at most eight values (the first six and the last two), never the whole tensor.
    public var description: String {
        let shown: [String]
        if scalars.count <= 8 {
            shown = scalars.map { "\($0)" }
        } else {
            shown = scalars.prefix(6).map { "\($0)" } + ["..."] + scalars.suffix(2).map { "\($0)" }
        }
        return "Tensor(\(shape): \(shown.joined(separator: ", ")))"
    }

    /// Creates a tensor that adopts `scalars` without validation; the caller guarantees the count.
    package init(uncheckedShape shape: [Int], scalars: [Float]) {
        self.shape = shape
        self.scalars = scalars
    }

    /// The product of `shape`, validated: no negative dimension, no overflow.
    package static func elementCount(of shape: [Int], argument: String) throws -> Int {
        var count = 1
        for dimension in shape {
            guard dimension >= 0 else {
                throw AttentionError.invalidValue(
                    argument: argument, expected: "dimensions >= 0", actual: "\(shape)")
            }
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow else {
                throw AttentionError.invalidValue(
                    argument: argument, expected: "an element count that fits in Int", actual: "\(shape)")
            }
            count = product
        }
        return count
    }
}
