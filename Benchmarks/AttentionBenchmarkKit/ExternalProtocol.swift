// `attention-bench ext ...`: the external-implementation protocol of the peers harness
// (shared/peers/ext_example.py), so this package can be timed in the same run as ONNX Runtime and PyTorch:
// read Q, K, V (float32 little-endian, [B, H, N, d]) from files, run warm-up and timed calls of the automatic
// kernel, write O, and print one JSON line {"times_s": [...], "base_rss_mb": ..., "peak_rss_mb": ..., "backend": ...}.
// Memory as the harness measures its in-process peers: the resident set once the inputs are loaded (base), the
// kernel's peak mark reset (/proc/self/clear_refs), then the peak during the calls, so peak - base is what the
// calls themselves needed (output included), not the file loading.

import AttentionCore
import Foundation
import _AttentionTestSupport

/// The arguments of one external-protocol job.
public struct ExternalJob: Equatable, Sendable {
    public var queries = "", keys = "", values = "", output = ""
    public var batch = 0, queryHeads = 0, keyValueHeads = 0, queryLength = 0, keyLength = 0, headDimension = 0
    public var causal = false
    public var scale: Float = 0
    public var threads = 1, warmup = 1, repetitions = 1

    /// Parses the harness's `--name value` pairs. Every option is required.
    public init(arguments: [String]) throws {
        var values: [String: String] = [:]
        var remaining = arguments[...]
        while let name = remaining.popFirst() {
            guard name.hasPrefix("--"), let value = remaining.popFirst() else {
                throw UsageError("ext: expected '--option value' pairs, got '\(name)'")
            }
            values[String(name.dropFirst(2))] = value
        }
        func text(_ name: String) throws -> String {
            guard let value = values[name] else { throw UsageError("ext: missing --\(name)") }
            return value
        }
        func integer(_ name: String) throws -> Int {
            guard let value = Int(try text(name)), value >= 0 else {
                throw UsageError("ext: --\(name) expects an integer >= 0, got '\(values[name] ?? "")'")
            }
            return value
        }
        queries = try text("q")
        keys = try text("k")
        self.values = try text("v")
        output = try text("out")
        batch = try integer("batch")
        queryHeads = try integer("q-heads")
        keyValueHeads = try integer("kv-heads")
        queryLength = try integer("q-len")
        keyLength = try integer("kv-len")
        headDimension = try integer("head-dim")
        causal = try integer("causal") == 1
        guard let parsedScale = Float(try text("scale")) else { throw UsageError("ext: --scale expects a number") }
        scale = parsedScale
        threads = Swift.max(1, try integer("threads"))
        warmup = try integer("warmup")
        repetitions = Swift.max(1, try integer("reps"))
    }
}

/// Runs one job and returns the JSON line to print.
public func runExternal(_ job: ExternalJob) throws -> String {
    func read(_ path: String, _ shape: [Int]) throws -> Tensor {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let count = shape.reduce(1, *)
        guard data.count == count * 4 else {
            throw UsageError("ext: \(path) has \(data.count) bytes but shape \(shape) needs \(count * 4)")
        }
        let scalars = data.withUnsafeBytes { raw in
            (0..<count).map {
                Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
            }
        }
        return try Tensor(shape: shape, scalars: scalars)
    }
    let q = try read(job.queries, [job.batch, job.queryHeads, job.queryLength, job.headDimension])
    let k = try read(job.keys, [job.batch, job.keyValueHeads, job.keyLength, job.headDimension])
    let v = try read(job.values, [job.batch, job.keyValueHeads, job.keyLength, job.headDimension])
    let options = AttentionOptions(scale: job.scale, threads: job.threads)
    let mask: AttentionMask = job.causal ? .causal : .none
    let baseResident = residentMegabytes()
    resetPeakResidentSet()
    for _ in 0..<job.warmup { _ = try attention(queries: q, keys: k, values: v, mask: mask, options: options) }
    var output = q
    var times: [Double] = []
    let clock = ContinuousClock()
    for _ in 0..<job.repetitions {
        let elapsed = try clock.measure {
            output = try attention(queries: q, keys: k, values: v, mask: mask, options: options)
        }
        times.append(elapsed.inSeconds)
    }
    let peakResident = Swift.max(baseResident, residentHighWaterMegabytes())
    var bytes = Data(capacity: output.count * 4)
    for scalar in output.scalars {
        withUnsafeBytes(of: scalar.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }
    try bytes.write(to: URL(fileURLWithPath: job.output))
    let object: [String: Any] = [
        "times_s": times, "peak_rss_mb": peakResident, "base_rss_mb": baseResident,
        "backend": "swift-attention blockwise (automatic kernel)",
    ]
    let json = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    return String(decoding: json, as: UTF8.self)
}

/// The process's peak resident set (VmHWM) in MiB since start or the last `resetPeakResidentSet`, read from
/// /proc; 0 where /proc is unavailable.
public func residentHighWaterMegabytes() -> Double { statusMegabytes("VmHWM:") }

/// The process's resident set now (VmRSS) in MiB; 0 where /proc is unavailable.
public func residentMegabytes() -> Double { statusMegabytes("VmRSS:") }

private func statusMegabytes(_ key: String) -> Double {
    Double(processStatusKilobytes(key) ?? 0) / 1024
}
