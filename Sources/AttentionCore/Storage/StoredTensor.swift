// StoredTensor: a dense row-major tensor whose rows (its last axis) are encoded in a StorageFormat, so that
// queries, keys, values and outputs can be held in Float16 or BFloat16 (or keys and values in 8- and 4-bit blocks)
// and handed to the kernels as they are.
//
// Shapes are those of `Tensor`; only the element encoding differs. Row r of a tensor whose last axis has D values
// occupies bytes [r * R, (r + 1) * R), R = format.bytesPerRow(dimension: D), laid out as `StorageFormat` documents.
// The kernels decode key and value tiles as they load them (never a Float32 copy of K or V); see
// Attention+Stored.swift for where queries and outputs are converted.

/// A dense row-major tensor whose rows are stored in a ``StorageFormat``: half-precision activations, keys and
/// values as a model holds them, or 8- and 4-bit quantized keys and values.
///
/// The last axis is the row: each row of D values is encoded on its own into `format.bytesPerRow(dimension: D)`
/// bytes, so rows stay a fixed stride apart (the layout is documented byte by byte on ``StorageFormat``).
///
/// ```swift
/// let k = try Tensor.randomNormal(shape: [1, 8, 4096, 64], seed: 2)
/// let k16 = try StoredTensor(k, format: .float16)        // half the bytes
/// let back = Tensor(k16)                                // k rounded to Float16, as Float32 again
/// ```
public struct StoredTensor: Sendable, Equatable {
    /// The extent of each axis; the last one is the row that `format` encodes. Rank >= 1.
    public let shape: [Int]
    /// How each row is encoded.
    public let format: StorageFormat
    /// The encoded rows, `rowCount * format.bytesPerRow(dimension: rowLength)` bytes.
    public let bytes: [UInt8]

    /// Values per row: the last dimension.
    public var rowLength: Int { shape[shape.count - 1] }
    /// The number of rows: the product of every dimension but the last.
    public var rowCount: Int { shape.dropLast().reduce(1, *) }

    /// Encodes `tensor` row by row (its last axis) into `format`.
    ///
    /// Float16 and BFloat16 round to nearest even; quantized formats compute each block's scale from the block's
    /// own values (see ``StorageFormat``).
    /// - Throws: ``AttentionError`` if the tensor has rank 0, or the format cannot encode rows of its last dimension
    ///   (a block size that does not divide it, named `format.blockSize` or `shape`).
    /// - Complexity: O(tensor.count).
    public init(_ tensor: Tensor, format: StorageFormat) throws {
        try Self.validate(shape: tensor.shape, format: format)
        let codec = RowCodec(format, dimension: tensor.shape[tensor.rank - 1])
        let rows = tensor.shape.dropLast().reduce(1, *)
        // Encoding writes every byte of every row (scales, codes and a 4-bit row's padding nibble), so the storage
        // is not zero-filled first.
        let bytes = [UInt8](unsafeUninitializedCapacity: rows * codec.rowBytes) { target, initialized in
            if rows > 0 && codec.rowBytes > 0 {
                tensor.withUnsafeBufferPointer { source in
                    codec.encode(source.baseAddress!, rows: rows, into: UnsafeMutableRawPointer(target.baseAddress!))
                }
            }
            initialized = rows * codec.rowBytes
        }
        self.shape = tensor.shape
        self.format = format
        self.bytes = bytes
    }

    /// Adopts bytes already encoded in `format` (for instance read from a model file), without converting them.
    /// - Throws: ``AttentionError`` for a shape or format as in ``init(_:format:)``, or a byte count other than
    ///   `rowCount * format.bytesPerRow(dimension: rowLength)` (named `bytes.count`).
    public init(shape: [Int], format: StorageFormat, bytes: [UInt8]) throws {
        try Self.validate(shape: shape, format: format)
        let expected = shape.dropLast().reduce(1, *) * format.bytesPerRow(dimension: shape[shape.count - 1])
        try AttentionError.require(
            bytes.count == expected, "bytes.count",
            expected: "\(expected) (\(shape.dropLast().reduce(1, *)) rows of \(format) with \(shape.last!) values)",
            actual: "\(bytes.count)")
        self.shape = shape
        self.format = format
        self.bytes = bytes
    }

    private static func validate(shape: [Int], format: StorageFormat) throws {
        guard !shape.isEmpty else {
            throw AttentionError.shapeMismatch(
                argument: "shape", expected: "rank >= 1", actual: shape,
                reason: "a stored tensor encodes rows along its last axis")
        }
        let count = try Tensor.elementCount(of: shape, argument: "shape")
        let d = shape[shape.count - 1]
        try format.validate(dimension: d, argument: "format", dimensionName: "shape.last")
        // At most 4 bytes per value (plus 4 per block of >= 1 value): 8 * count bounds the byte count.
        guard count <= Int.max / 8 else {
            throw AttentionError.invalidValue(
                argument: "shape", expected: "a byte count that fits in Int", actual: "\(shape)")
        }
    }

    /// The codec of this tensor's rows.
    package var codec: RowCodec { RowCodec(format, dimension: rowLength) }

    /// Calls `body` with a pointer to the encoded rows (nil when there are none).
    package func withRows<R>(_ body: (UnsafeRawPointer?) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { try body($0.count > 0 ? $0.baseAddress : nil) }
    }
}

extension Tensor {
    /// Decodes a stored tensor into Float32: exactly the values its format represents (Float16 and BFloat16 convert
    /// exactly; quantized values become q * s).
    /// - Complexity: O(stored.rowCount * stored.rowLength).
    public init(_ stored: StoredTensor) {
        self.init(stored, threads: 1)
    }

    /// `init(_:)` on up to `threads` workers, 64 rows at a time (stored-tensor attention decodes its queries so).
    /// Every element is decoded, so large storage is not zero-filled first (`overwrittenScalars`).
    package init(_ stored: StoredTensor, threads: Int) {
        let (rows, width, codec) = (stored.rowCount, stored.rowLength, stored.codec)
        var scalars = overwrittenScalars(count: rows * width)
        stored.withRows { source in
            guard let source, rows > 0, width > 0 else { return }
            scalars.withUnsafeMutableBufferPointer { target in
                let shared = UncheckedSendable((source, target.baseAddress!))
                let chunk = 64
                Parallel.forEach(items: (rows + chunk - 1) / chunk, threads: threads) { _, item in
                    let (source, target) = shared.value
                    let first = item * chunk
                    codec.decode(
                        source + first * codec.rowBytes, rows: Swift.min(chunk, rows - first),
                        into: target + first * width)
                }
            }
        }
        self.init(uncheckedShape: stored.shape, scalars: scalars)
    }
}
