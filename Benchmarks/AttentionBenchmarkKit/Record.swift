// One measured case, as a table row or a JSON line.

import Foundation

/// The result of timing one kernel on one shape. JSON keys are the property names.
public struct BenchmarkRecord: Codable, Equatable, Sendable {
    public var suite: String
    public var kernel: String
    public var batch: Int
    public var queryHeads: Int
    public var keyValueHeads: Int
    public var queryLength: Int
    public var keyLength: Int
    public var headDimension: Int
    public var mask: String
    public var threads: Int
    public var medianSeconds: Double
    public var minSeconds: Double
    public var maxSeconds: Double
    public var gflops: Double
    public var workspaceBytes: Int
    public var maxAbsError: Double
    /// Decode and streaming cases: bytes of keys and values read per call / median seconds, in GB/s (1e9 bytes).
    /// Absent (not null) in JSON for other cases.
    public var gbPerSecond: Double?
    /// Median time of naive attention on the same shape, mask and threads divided by this case's; absent when naive
    /// did not run (or is the kernel itself).
    public var speedupVsNaive: Double?
    /// Growth of the process's peak resident memory while this case ran once in a fresh child process (memory
    /// suite only; see `attention-bench --help`).
    public var peakResidentBytes: Int?
    /// Decode cases over a cache: how it stores keys and values (f32, f16, bf16, q8, q4, see `StorageFormat`), the
    /// bytes one token takes in it, and the max error of the sampled rows against the Float64 reference on the
    /// original Float32 inputs (what the format costs; `maxAbsError` is against the reference on the stored values,
    /// the kernel's own exactness).
    public var storage: String?
    public var bytesPerToken: Int?
    public var errorVersusFloat32Inputs: Double?
    /// Cases timed in turn with a baseline call, round by round (padding: the sequences run one by one; packed:
    /// the sixteen calls alone; layouts: the [B, H, N, d] call): the median over the rounds of this case's time
    /// divided by the baseline's in the same round. Absent for the baseline itself and for other cases.
    public var pairedRatio: Double?

    public init(
        suite: String, kernel: String, batch: Int, queryHeads: Int, keyValueHeads: Int,
        queryLength: Int, keyLength: Int, headDimension: Int, mask: String, threads: Int,
        medianSeconds: Double, minSeconds: Double, maxSeconds: Double, gflops: Double,
        workspaceBytes: Int, maxAbsError: Double, gbPerSecond: Double? = nil
    ) {
        self.suite = suite
        self.kernel = kernel
        self.batch = batch
        self.queryHeads = queryHeads
        self.keyValueHeads = keyValueHeads
        self.queryLength = queryLength
        self.keyLength = keyLength
        self.headDimension = headDimension
        self.mask = mask
        self.threads = threads
        self.medianSeconds = medianSeconds
        self.minSeconds = minSeconds
        self.maxSeconds = maxSeconds
        self.gflops = gflops
        self.workspaceBytes = workspaceBytes
        self.maxAbsError = maxAbsError
        self.gbPerSecond = gbPerSecond
    }

    /// The CSV header: the JSON keys in the same order as `csvLine`.
    public static let csvHeader =
        "suite,kernel,batch,queryHeads,keyValueHeads,queryLength,keyLength,headDimension,mask,threads,medianSeconds,"
        + "minSeconds,maxSeconds,gflops,workspaceBytes,maxAbsError,gbPerSecond,speedupVsNaive,peakResidentBytes,"
        + "storage,bytesPerToken,errorVersusFloat32Inputs,pairedRatio"

    /// The record as one CSV line (empty fields for absent values).
    public func csvLine() -> String {
        let optional: [String] = [
            gbPerSecond.map { "\($0)" } ?? "", speedupVsNaive.map { "\($0)" } ?? "",
            peakResidentBytes.map { "\($0)" } ?? "", storage ?? "", bytesPerToken.map { "\($0)" } ?? "",
            errorVersusFloat32Inputs.map { "\($0)" } ?? "", pairedRatio.map { "\($0)" } ?? "",
        ]
        let fields: [String] = [
            suite, kernel, "\(batch)", "\(queryHeads)", "\(keyValueHeads)", "\(queryLength)", "\(keyLength)",
            "\(headDimension)", mask, "\(threads)", "\(medianSeconds)", "\(minSeconds)", "\(maxSeconds)", "\(gflops)",
            "\(workspaceBytes)", "\(maxAbsError)",
        ]
        return (fields + optional).joined(separator: ",")
    }

    /// The record as one line of JSON with sorted keys.
    public func jsonLine() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Every field is a finite number or a string, so encoding cannot fail.
        let data = try! encoder.encode(self)
        return String(decoding: data, as: UTF8.self)
    }

    public static let tableHeader =
        "suite      kernel          mask     B  Hq Hkv      Nq      Nk    d thr   median ms (min - max)        GFLOP/s   workspace    max err"

    /// The record as one aligned table row.
    public func tableRow() -> String {
        func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
            let padding = String(repeating: " ", count: Swift.max(0, width - text.count))
            return left ? text + padding : padding + text
        }
        let times = String(
            format: "%10.3f (%.3f - %.3f)", medianSeconds * 1e3, minSeconds * 1e3, maxSeconds * 1e3)
        return [
            pad(suite, 10, left: true), pad(kernel, 15, left: true), pad(mask, 6, left: true),
            pad("\(batch)", 3),
            pad("\(queryHeads)", 3), pad("\(keyValueHeads)", 3), pad("\(queryLength)", 7),
            pad("\(keyLength)", 7),
            pad("\(headDimension)", 4), pad("\(threads)", 3), pad(times, 30, left: true),
            pad(String(format: "%.2f", gflops), 10), pad(formatBytes(workspaceBytes), 11),
            pad(String(format: "%.1e", maxAbsError), 10),
        ].joined(separator: " ") + (gbPerSecond.map { String(format: "  %.1f GB/s", $0) } ?? "")
            + (speedupVsNaive.map { String(format: "  %.1fx vs naive", $0) } ?? "")
            + (peakResidentBytes.map { "  peak RSS +" + formatBytes($0) } ?? "")
            + (storage.map { "  \($0)" } ?? "") + (bytesPerToken.map { "  " + formatBytes($0) + "/token" } ?? "")
            + (errorVersusFloat32Inputs.map { String(format: "  err vs f32 inputs %.1e", $0) } ?? "")
            + (pairedRatio.map { String(format: "  %.3fx of its baseline in turn", $0) } ?? "")
    }
}

/// Bytes with a binary unit, e.g. "1.5 MiB".
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f", value) + " " + units[unit]
}
