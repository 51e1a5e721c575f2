// StorageFormat: how the rows of a stored tensor or a key/value cache are encoded in memory, byte by byte.
//
// Every format encodes one row (the last dimension, D values) into a fixed number of bytes, so rows stay a fixed
// stride apart and a tile of rows is one contiguous run. The kernels decode a tile as they load it (see
// RowCodec.swift) and always accumulate in Float32; no format is ever expanded into a Float32 copy of a whole
// tensor or cache.

/// How the values of each row (the head dimension) are stored.
///
/// Byte layout of one row of D values (all multi-byte fields little-endian, as on every platform Swift runs on):
///
/// | format | bytes per row | layout |
/// |---|---|---|
/// | `float32` | 4 D | IEEE 754 binary32 |
/// | `float16` | 2 D | IEEE 754 binary16, rounded to nearest even; magnitudes past 65504 become infinity |
/// | `bfloat16` | 2 D | the upper 16 bits of binary32, rounded to nearest even (NaN stays NaN) |
/// | `int8(blockSize: b)` | 4 D / b + D | D / b binary32 scales, then D signed bytes q |
/// | `int4(blockSize: b)` | 4 D / b + ceil(D / 2) | D / b binary32 scales, then the 4-bit codes, two per byte |
///
/// Quantized rows are cut into blocks of b consecutive values, each with its own scale s = max |x| / 127 (8-bit) or
/// max |x| / 7 (4-bit) over the block, and each value stored as q = round(x / s) (to nearest even, within
/// -127...127 or -7...7); it decodes as q * s. The quantization is symmetric and per token: a row is encoded once,
/// from its own values only, so appending to a cache never re-encodes stored tokens. A block whose values are all
/// zero has s = 0. A block holding NaN or infinity gets s = NaN and decodes to NaN throughout, so a non-finite
/// input stays non-finite (and is discarded exactly when its key is masked, as in Float32).
///
/// 4-bit codes are q + 8 (1...15). Values are packed in groups of 32 (the last group may be shorter, of t values):
/// byte i of a group holds value i in its low nibble and value i + h in its high nibble, h = ceil(t / 2) (16 for a
/// whole group), so one 16-byte load unpacks into two runs of 16 consecutive values without shuffles.
///
/// Accuracy (the README reports it measured per format): float16 keeps 11 significant bits (relative error <= 2^-11
/// per value), bfloat16 8 bits (<= 2^-8); int8 an absolute error <= s / 2 = max |x| / 254 per value, int4 <=
/// max |x| / 14.
public enum StorageFormat: Sendable, Hashable, CustomStringConvertible {
    /// IEEE binary32, 4 bytes per value.
    case float32
    /// IEEE binary16, 2 bytes per value.
    case float16
    /// bfloat16 (binary32's upper half), 2 bytes per value.
    case bfloat16
    /// Signed 8-bit values with one Float32 scale per block of `blockSize` values (which must divide the row length).
    case int8(blockSize: Int = 32)
    /// Signed 4-bit values with one Float32 scale per block of `blockSize` values (which must divide the row length).
    case int4(blockSize: Int = 32)

    /// Bytes one row of `dimension` values takes (the formats must be valid for it, see `validate`).
    public func bytesPerRow(dimension d: Int) -> Int {
        switch self {
        case .float32: return 4 * d
        case .float16, .bfloat16: return 2 * d
        case .int8(let b): return 4 * (d / b) + d
        case .int4(let b): return 4 * (d / b) + (d + 1) / 2
        }
    }

    /// Whether the format is 8- or 4-bit quantized.
    public var isQuantized: Bool {
        switch self {
        case .float32, .float16, .bfloat16: return false
        case .int8, .int4: return true
        }
    }

    /// The format as it is written in Swift, e.g. "float16" or "int8(blockSize: 32)".
    public var description: String {
        switch self {
        case .float32: return "float32"
        case .float16: return "float16"
        case .bfloat16: return "bfloat16"
        case .int8(let b): return "int8(blockSize: \(b))"
        case .int4(let b): return "int4(blockSize: \(b))"
        }
    }

    /// Throws unless the format can encode rows of `dimension` values: a quantized format's block size must be >= 1
    /// and divide the dimension.
    /// - Parameters:
    ///   - argument: the name the caller gave the format, for the error (e.g. `"format"`).
    ///   - dimensionName: the name the caller gave the dimension (e.g. `"headDimension"`).
    package func validate(dimension d: Int, argument: String, dimensionName: String) throws {
        switch self {
        case .float32, .float16, .bfloat16: return
        case .int8(let b), .int4(let b):
            try AttentionError.require(b >= 1, "\(argument).blockSize", expected: ">= 1", actual: "\(b)")
            try AttentionError.require(
                d % b == 0, dimensionName, expected: "a multiple of \(argument)'s block size \(b) (\(self))",
                actual: "\(d)")
        }
    }
}
