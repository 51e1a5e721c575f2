// The `cache-growth` suite: a KVCache filled one token at a time to 131,072 tokens (H_kv = 8, d = 128, Float32:
// 1 GiB of keys and values), once growing in place in reserved address space (`reserved`, the default) and once
// doubling an array (`doubling`, what every KVCache did before), each in a fresh child process so that one
// mode's pages and allocator state cannot reach the other's peak.

import AttentionCore
import Foundation

/// The suite's records: for each mode, one record per doubling range of cache lengths [n/2, n) (n = 2, 4, ...,
/// 131072; 16384 with --quick or the first --seq-len) with the mean time of one `append` of a token in that range
/// (`medianSeconds`), the fastest and slowest append (`minSeconds`, `maxSeconds`: a doubling cache's copy shows
/// here), the child's peak resident growth so far (`peakResidentBytes`) and the cache's own storage count
/// (`workspaceBytes`). Both modes run in turn in children of `executable`. Then, in this process, whether the
/// storage costs decode speed: one decode step (H_q = 32, one query) over a cache of a quarter of the tokens filled
/// one token at a time in each mode, timed alternately (`decode-reserved`, `decode-doubling`, with GB/s).
public func cacheGrowthSuite(
    _ configuration: BenchmarkConfiguration, allThreads: Int, executable: String
) throws -> [BenchmarkRecord] {
    let tokens = configuration.sequenceLengths?.first ?? (configuration.quick ? 16384 : 131_072)
    let growth = try ["reserved", "doubling"].flatMap { mode -> [BenchmarkRecord] in
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["growth-child", mode, "\(tokens)"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let text = String(data: data, encoding: .utf8) else {
            throw UsageError("growth child for \(mode) failed (status \(process.terminationStatus))")
        }
        return try text.split(separator: "\n").map { line in
            try JSONDecoder().decode(BenchmarkRecord.self, from: Data(line.utf8))
        }
    }
    let (hq, hkv, d, n) = (32, 8, 128, Swift.max(1, tokens / 4))
    let key = try Tensor.randomNormal(shape: [1, hkv, 1, d], seed: 3)
    let value = try Tensor.randomNormal(shape: [1, hkv, 1, d], seed: 4)
    let query = try Tensor.randomNormal(shape: [1, hq, 1, d], seed: 5)
    let caches = try [true, false].map { reserves in
        var cache = try KVCache(keyValueHeads: hkv, headDimension: d, reservesAddressSpace: reserves)
        for _ in 0..<n { try cache.append(keys: key, values: value) }
        return cache
    }
    var decode: [BenchmarkRecord] = []
    for threads in threadCounts(configuration, allThreads: allThreads) {
        let options = AttentionOptions(threads: threads)
        var outputs: [Tensor?] = [nil, nil]
        let timings = try alternateTimes(
            minimumRepetitions: configuration.minimumRepetitions, budget: configuration.quick ? 0.5 : 2.0,
            caches.indices.map { i in { outputs[i] = try caches[i].attention(queries: query, options: options) } })
        guard let reserved = outputs[0], reserved == outputs[1] else {
            throw ValidationFailure(description: "decode over the reserved and the doubling cache differ")
        }
        for (kernel, timing) in zip(["decode-reserved", "decode-doubling"], timings) {
            decode.append(
                BenchmarkRecord(
                    suite: "cache-growth", kernel: kernel, batch: 1, queryHeads: hq, keyValueHeads: hkv,
                    queryLength: 1, keyLength: n, headDimension: d, mask: "causal", threads: threads,
                    medianSeconds: timing.median, minSeconds: timing.minimum, maxSeconds: timing.maximum,
                    gflops: 4 * Double(n * hq * d) / timing.median / 1e9, workspaceBytes: caches[0].storageBytes,
                    maxAbsError: 0, gbPerSecond: Double(caches[0].bytesPerToken * n) / timing.median / 1e9))
        }
    }
    return growth + decode
}

/// Runs in the child: appends `tokens` single tokens to a fresh cache of the mode and returns the records (JSON
/// lines) of `cacheGrowthSuite`. The appended token is the same random one each time (its values do not matter
/// to the cost of storing it); its last append is checked against the cache's contents.
public func runGrowthChild(_ arguments: [String]) throws -> String {
    guard arguments.count == 2, ["reserved", "doubling"].contains(arguments[0]), let total = Int(arguments[1]),
        total >= 2
    else {
        throw UsageError("growth-child expects: reserved|doubling TOKENS (>= 2)")
    }
    let (hkv, d) = (8, 128)
    let key = try Tensor.randomNormal(shape: [1, hkv, 1, d], seed: 1)
    let value = try Tensor.randomNormal(shape: [1, hkv, 1, d], seed: 2)
    let before = peakResidentSetBytes()
    var cache = try KVCache(
        keyValueHeads: hkv, headDimension: d, reservesAddressSpace: arguments[0] == "reserved")
    let clock = ContinuousClock()
    var lines: [String] = []
    var times: [Double] = []
    var rangeEnd = 2
    while cache.count < total {
        let start = clock.now
        try cache.append(keys: key, values: value)
        times.append((clock.now - start).inSeconds)
        if cache.count == Swift.min(rangeEnd, total) {
            let mean = times.reduce(0, +) / Double(times.count)
            var record = BenchmarkRecord(
                suite: "cache-growth", kernel: arguments[0], batch: 1, queryHeads: hkv, keyValueHeads: hkv,
                queryLength: 1, keyLength: cache.count, headDimension: d, mask: "none", threads: 1,
                medianSeconds: mean, minSeconds: times.min()!, maxSeconds: times.max()!, gflops: 0,
                workspaceBytes: cache.storageBytes, maxAbsError: 0)
            record.peakResidentBytes = peakResidentSetBytes() - before
            record.bytesPerToken = cache.bytesPerToken
            lines.append(record.jsonLine())
            times = []
            rangeEnd *= 2
        }
    }
    let stored = cache.contents.keys
    for h in 0..<hkv {
        for i in 0..<d where stored[0, h, total - 1, i] != key[0, h, 0, i] {
            throw ValidationFailure(description: "growth child: the last key was not stored (\(arguments[0]))")
        }
    }
    return lines.joined(separator: "\n")
}

/// One line per mode: the peak resident growth beside the cache's final bytes, and the slowest single append;
/// then the two modes' ratio of peaks.
public func cacheGrowthSummaries(_ records: [BenchmarkRecord]) -> [String] {
    let growth = records.filter { $0.suite == "cache-growth" }
    var lines: [String] = []
    var peaks: [String: Double] = [:]
    for mode in ["reserved", "doubling"] {
        let members = growth.filter { $0.kernel == mode }
        guard let last = members.max(by: { $0.keyLength < $1.keyLength }),
            let peak = members.compactMap(\.peakResidentBytes).max()
        else { continue }
        let cacheBytes = Double(last.bytesPerToken ?? 0) * Double(last.keyLength)
        peaks[mode] = Double(peak)
        let slowest = members.map(\.maxSeconds).max() ?? 0
        // Each record covers the appends after the previous record's length, up to its own.
        let ordered = members.sorted { $0.keyLength < $1.keyLength }
        let total = zip(ordered, [0] + ordered.map(\.keyLength)).reduce(0.0) { sum, pair in
            sum + pair.0.medianSeconds * Double(pair.0.keyLength - pair.1)
        }
        lines.append(
            "cache-growth: \(mode) to \(last.keyLength) tokens: peak resident growth "
                + "\(formatBytes(peak)) for \(formatBytes(Int(cacheBytes))) of tokens ("
                + String(format: "%.2fx", Double(peak) / cacheBytes) + "), slowest append "
                + String(format: "%.1f ms", slowest * 1e3) + ", all appends " + String(format: "%.2f s", total))
    }
    if let reserved = peaks["reserved"], let doubling = peaks["doubling"] {
        lines.append("cache-growth: peak resident, reserved / doubling: " + String(format: "%.2f", reserved / doubling))
    }
    for record in growth where record.kernel == "decode-reserved" {
        if let other = growth.first(where: {
            $0.kernel == "decode-doubling" && $0.threads == record.threads
        }), let a = record.gbPerSecond, let b = other.gbPerSecond {
            lines.append(
                "cache-growth: decode at \(record.keyLength) tokens, \(record.threads) thread"
                    + "\(record.threads == 1 ? "" : "s"): reserved / doubling GB/s "
                    + String(format: "%.2f (%.1f vs %.1f)", a / b, a, b))
        }
    }
    return lines
}
