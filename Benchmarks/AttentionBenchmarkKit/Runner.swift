// Runs benchmark cases: validate against the Float64 reference, then time.

import AttentionCore
import _AttentionTestSupport

/// One shape, mask and kernel to time.
public struct BenchmarkCase: Sendable {
    public var suite: String
    public var kernelName: String
    public var kernel: AttentionKernel
    public var maskName: String
    public var mask: AttentionMask
    public var batch = 1
    public var queryHeads: Int
    public var keyValueHeads: Int
    public var queryLength: Int
    public var keyLength: Int
    public var headDimension: Int
    public var threads: Int
    /// Whether the case is memory-bound enough that its effective bandwidth (key and value bytes read / time) is
    /// the number to report, as for decode.
    public var reportsBandwidth = false
    /// Whether each repetition writes into one reused output tensor (`attention(..., into:)`), so that the case is
    /// timed without the first-write page faults of a new result.
    public var writesIntoOutput = false
    /// When set, the keys and values are appended to a `KVCache` of this format and the case times attention over
    /// the cache; its name (f32, f16, bf16, q8, q4) goes into the record's storage column.
    public var storage: (name: String, format: StorageFormat)? = nil
    /// When set (and `storage` is not), the case passes queries, keys and values as `StoredTensor`s of this format
    /// (queries in Float32 when the format is quantized); its name goes into the storage column.
    public var tensorStorage: (name: String, format: StorageFormat)? = nil

    public init(
        suite: String, kernelName: String, kernel: AttentionKernel, maskName: String,
        mask: AttentionMask,
        queryHeads: Int, keyValueHeads: Int, queryLength: Int, keyLength: Int, headDimension: Int,
        threads: Int
    ) {
        self.suite = suite
        self.kernelName = kernelName
        self.kernel = kernel
        self.maskName = maskName
        self.mask = mask
        self.queryHeads = queryHeads
        self.keyValueHeads = keyValueHeads
        self.queryLength = queryLength
        self.keyLength = keyLength
        self.headDimension = headDimension
        self.threads = threads
    }

    public var options: AttentionOptions { AttentionOptions(kernel: kernel, threads: threads) }
}

/// What happened to a case.
public enum BenchmarkOutcome {
    case measured(BenchmarkRecord)
    case skipped(reason: String)
}

/// The correctness gate: `kernel` with `mask` on a small grouped-query shape with odd lengths (3 queries for the
/// decode kernel, 67 otherwise) must pass the
/// tolerance rule against the Float64 reference. Returns the failing check, or nil when it passes.
public func validate(kernel: AttentionKernel, mask: AttentionMask, headDimension: Int) throws
    -> ToleranceCheck?
{
    // The decode kernel takes at most 16 rows per key/value head: three queries of a group of two.
    var queryLength = 67
    if case .decode = kernel { queryLength = 3 }
    let inputs = try attentionInputs(
        queryHeads: 4, keyValueHeads: 2, queryLength: queryLength, keyLength: 93, headDimension: headDimension,
        seed: 2024)
    let checks = try checkAttention(
        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
        options: AttentionOptions(kernel: kernel))
    if !checks.output.passes { return checks.output }
    if !checks.logSumExp.passes { return checks.logSumExp }
    // The `into:` path (the "-into" cases) must give the same output, bit for bit.
    var output = try Tensor(shape: [1, 4, queryLength, headDimension], repeating: .nan)
    try attention(
        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
        options: AttentionOptions(kernel: kernel), into: &output)
    let returned = try attention(
        queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
        options: AttentionOptions(kernel: kernel))
    if output != returned {
        throw ValidationFailure(
            description: "\(kernel) with mask \(mask): attention(..., into:) differs from attention(...)")
    }
    return nil
}

/// Validates sampled rows of a timed output against the Float64 reference; returns the max absolute error.
/// Eight rows are checked: the first and last query of the first and last head, and four in between.
public func sampledError(
    _ output: Tensor, queries: Tensor, keys: Tensor, values: Tensor, case c: BenchmarkCase
) -> Double {
    let rows = [
        (0, 0), (0, c.queryLength - 1), (c.queryHeads - 1, 0), (c.queryHeads - 1, c.queryLength - 1),
        (c.queryHeads / 2, c.queryLength / 3), (c.queryHeads / 3, c.queryLength / 2),
        (0, c.queryLength / 2 + 1), (c.queryHeads - 1, (2 * c.queryLength) / 3),
    ]
    var worst = 0.0
    for (head, query) in rows where query >= 0 && query < c.queryLength {
        let reference = referenceRow(
            Double.self, batch: 0, head: head, query: query, queries: queries, keys: keys, values: values,
            mask: c.mask, options: c.options)
        let start = output.offset(of: [0, head, query, 0])
        let actual = Array(output.scalars[start..<(start + c.headDimension)])
        worst = Swift.max(worst, maxAbsoluteError(actual, reference.output))
    }
    return worst
}

/// Times one case: inputs from fixed seeds, one warm-up, then repetitions until `budget` seconds.
public func run(_ c: BenchmarkCase, minimumRepetitions: Int, budget: Double) throws
    -> BenchmarkOutcome
{
    let inputs = try attentionInputs(
        batch: c.batch, queryHeads: c.queryHeads, keyValueHeads: c.keyValueHeads,
        queryLength: c.queryLength,
        keyLength: c.keyLength, headDimension: c.headDimension, seed: 7)
    if let storage = c.storage {
        return try runOverCache(
            c, storage: storage, inputs: inputs, budget: budget,
            minimumRepetitions: minimumRepetitions)
    }
    if let storage = c.tensorStorage {
        return try runOverStoredTensors(
            c, storage: storage, inputs: inputs, budget: budget, minimumRepetitions: minimumRepetitions)
    }
    var last: AttentionResult? = nil
    let timing: TimingSummary
    do {
        var reused = try Tensor(
            zeros: c.writesIntoOutput ? [c.batch, c.queryHeads, c.queryLength, c.headDimension] : [0])
        timing = try measureTimes(minimumRepetitions: minimumRepetitions, budget: budget) {
            if c.writesIntoOutput {
                try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: c.mask,
                    options: c.options, into: &reused)
            } else {
                last = try partialAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: c.mask,
                    options: c.options)
            }
        }
        if c.writesIntoOutput {
            // The workspace figure comes from one more call; the error check below reads the reused output.
            last = try partialAttention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: c.mask, options: c.options)
            last?.output = reused
        }
    } catch let error as AttentionError {
        if case .memoryBudgetExceeded(_, let required, let budget) = error {
            return .skipped(
                reason:
                    "\(c.kernelName) N=\(c.queryLength): its score matrix needs \(formatBytes(required)), "
                    + "over the \(formatBytes(budget)) budget")
        }
        throw error
    }
    guard let result = last else { return .skipped(reason: "no run completed") }
    let fraction = visibleFraction(of: c.mask, queryLength: c.queryLength, keyLength: c.keyLength)
    let flops = attentionFLOPs(
        batch: c.batch, queryHeads: c.queryHeads, queryLength: c.queryLength, keyLength: c.keyLength,
        headDimension: c.headDimension, visibleFraction: fraction)
    return .measured(
        BenchmarkRecord(
            suite: c.suite, kernel: c.kernelName, batch: c.batch, queryHeads: c.queryHeads,
            keyValueHeads: c.keyValueHeads, queryLength: c.queryLength, keyLength: c.keyLength,
            headDimension: c.headDimension, mask: c.maskName, threads: c.threads,
            medianSeconds: timing.median,
            minSeconds: timing.minimum, maxSeconds: timing.maximum, gflops: flops / timing.median / 1e9,
            workspaceBytes: result.workspaceBytes,
            maxAbsError: sampledError(
                result.output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, case: c),
            gbPerSecond: c.reportsBandwidth
                ? Double((inputs.keys.count + inputs.values.count) * MemoryLayout<Float>.size) / timing.median / 1e9
                : nil))
}

/// `run` for a case over a cache: the keys and values go into a `KVCache` of the case's format, and attention over
/// the cache is timed. The sampled rows are checked against the Float64 reference on the cache's decoded contents
/// (the kernel's exactness) and on the original inputs (the format's cost); GB/s counts the bytes the cache stores.
func runOverCache(
    _ c: BenchmarkCase, storage: (name: String, format: StorageFormat),
    inputs: (queries: Tensor, keys: Tensor, values: Tensor), budget: Double, minimumRepetitions: Int
) throws -> BenchmarkOutcome {
    var cache = try KVCache(
        batch: c.batch, keyValueHeads: c.keyValueHeads, headDimension: c.headDimension,
        storage: CacheStorage(storage.format))
    try cache.append(keys: inputs.keys, values: inputs.values)
    var last: AttentionResult? = nil
    let timing = try measureTimes(minimumRepetitions: minimumRepetitions, budget: budget) {
        last = try cache.partialAttention(queries: inputs.queries, mask: c.mask, options: c.options)
    }
    guard let result = last else { return .skipped(reason: "no run completed") }
    let stored = cache.contents
    return .measured(
        storedRecord(
            c, storage: storage.name, bytesPerToken: cache.bytesPerToken, timing: timing, result: result,
            inputs: inputs, stored: (inputs.queries, stored.keys, stored.values),
            gbPerSecond: Double(cache.bytesPerToken * cache.count) / timing.median / 1e9))
}

/// `run` for a case over stored tensors: the inputs are encoded once, then attention over the stored tensors is
/// timed (errors as for `runOverCache`).
func runOverStoredTensors(
    _ c: BenchmarkCase, storage: (name: String, format: StorageFormat),
    inputs: (queries: Tensor, keys: Tensor, values: Tensor), budget: Double, minimumRepetitions: Int
) throws -> BenchmarkOutcome {
    let (queries, keys, values) = try storedInputs(inputs, format: storage.format)
    var last: AttentionResult? = nil
    let timing = try measureTimes(minimumRepetitions: minimumRepetitions, budget: budget) {
        last = try partialAttention(
            queries: queries, keys: keys, values: values, mask: c.mask, options: c.options)
    }
    guard let result = last else { return .skipped(reason: "no run completed") }
    return .measured(
        storedRecord(
            c, storage: storage.name,
            bytesPerToken: 2 * c.keyValueHeads * storage.format.bytesPerRow(dimension: c.headDimension),
            timing: timing, result: result, inputs: inputs,
            stored: (Tensor(queries), Tensor(keys), Tensor(values)), gbPerSecond: nil))
}

/// A case's inputs encoded in `format` (queries in Float32 when the format is quantized: queries are activations).
func storedInputs(
    _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), format: StorageFormat
) throws -> (queries: StoredTensor, keys: StoredTensor, values: StoredTensor) {
    (
        try StoredTensor(inputs.queries, format: format.isQuantized ? .float32 : format),
        try StoredTensor(inputs.keys, format: format), try StoredTensor(inputs.values, format: format)
    )
}

/// The record of a case over stored data: errors sampled against the Float64 reference on the stored values (the
/// kernel's exactness) and on the Float32 inputs (the format's cost).
private func storedRecord(
    _ c: BenchmarkCase, storage: String, bytesPerToken: Int, timing: TimingSummary, result: AttentionResult,
    inputs: (queries: Tensor, keys: Tensor, values: Tensor), stored: (queries: Tensor, keys: Tensor, values: Tensor),
    gbPerSecond: Double?
) -> BenchmarkRecord {
    let flops = attentionFLOPs(
        batch: c.batch, queryHeads: c.queryHeads, queryLength: c.queryLength, keyLength: c.keyLength,
        headDimension: c.headDimension,
        visibleFraction: visibleFraction(of: c.mask, queryLength: c.queryLength, keyLength: c.keyLength))
    var record = BenchmarkRecord(
        suite: c.suite, kernel: c.kernelName, batch: c.batch, queryHeads: c.queryHeads,
        keyValueHeads: c.keyValueHeads, queryLength: c.queryLength, keyLength: c.keyLength,
        headDimension: c.headDimension, mask: c.maskName, threads: c.threads, medianSeconds: timing.median,
        minSeconds: timing.minimum, maxSeconds: timing.maximum, gflops: flops / timing.median / 1e9,
        workspaceBytes: result.workspaceBytes,
        maxAbsError: sampledError(
            result.output, queries: stored.queries, keys: stored.keys, values: stored.values, case: c),
        gbPerSecond: gbPerSecond)
    record.storage = storage
    record.bytesPerToken = bytesPerToken
    record.errorVersusFloat32Inputs = sampledError(
        result.output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, case: c)
    return record
}

/// The storage formats the decode suite times, by the names the records carry.
public let decodeStorages: [(name: String, format: StorageFormat)] = [
    ("f32", .float32), ("f16", .float16), ("bf16", .bfloat16), ("q8", .int8()), ("q4", .int4()),
]

/// The cases of the `naive` suite: naive attention over a sequence-length sweep, unmasked and causal.
public func naiveSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) -> [BenchmarkCase] {
    let lengths = configuration.quick ? [128, 256, 512, 1024] : [256, 512, 1024, 2048, 4096]
    return sequenceSweep(
        suite: "naive", kernels: [("naive", .naive)], configuration, defaultLengths: lengths,
        defaultHeadDimensions: [64], allThreads: allThreads)
}

/// The cases of the `blockwise` suite: the blockwise kernel beside naive (H = 8, d = 64 and 128, unmasked and
/// causal, 1 and all threads), plus grouped-query attention with 32 query and 8 key/value heads.
public func blockwiseSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) -> [BenchmarkCase] {
    let lengths =
        configuration.quick
        ? [512, 1024, 2048] : configuration.full ? [512, 1024, 2048, 4096, 8192, 16384] : [512, 1024, 2048, 4096]
    let blockwise = AttentionKernel.blockwise(queryBlock: configuration.queryBlock, keyBlock: configuration.keyBlock)
    var cases = sequenceSweep(
        suite: "blockwise", kernels: [("blockwise", blockwise), ("naive", .naive)], configuration,
        defaultLengths: lengths, defaultHeadDimensions: [64, 128], allThreads: allThreads)
    let groupedLength = configuration.quick ? 1024 : 2048
    for threads in threadCounts(configuration, allThreads: allThreads) {
        for (kernelName, kernel) in [("blockwise", blockwise), ("naive", AttentionKernel.naive)]
        where configuration.kernels?.contains(kernelName) ?? true {
            cases.append(
                BenchmarkCase(
                    suite: "blockwise", kernelName: kernelName, kernel: kernel, maskName: "causal", mask: .causal,
                    queryHeads: 32, keyValueHeads: 8, queryLength: groupedLength, keyLength: groupedLength,
                    headDimension: 128, threads: threads))
        }
    }
    // Right after each d = 128 blockwise case, the same case over stored tensors (f16 unless --storage names other
    // formats), so that the two are timed minutes apart at most and their GFLOP/s compare.
    let stored = decodeStorages.filter {
        $0.name != "f32" && (configuration.storages?.contains($0.name) ?? ($0.name == "f16"))
    }
    return cases.flatMap { c -> [BenchmarkCase] in
        guard c.kernelName == "blockwise" && c.headDimension == 128 else { return [c] }
        return [c]
            + stored.map { storage in
                var copy = c
                copy.tensorStorage = storage
                return copy
            }
    }
}

func threadCounts(_ configuration: BenchmarkConfiguration, allThreads: Int) -> [Int] {
    configuration.threads ?? (allThreads > 1 ? [1, allThreads] : [1])
}

/// Every head dimension x thread count x mask (none, causal) x sequence length x kernel, queries = keys = N.
func sequenceSweep(
    suite: String, kernels: [(String, AttentionKernel)], _ configuration: BenchmarkConfiguration,
    defaultLengths: [Int], defaultHeadDimensions: [Int], allThreads: Int
) -> [BenchmarkCase] {
    let lengths = configuration.sequenceLengths ?? defaultLengths
    var cases: [BenchmarkCase] = []
    for headDimension in configuration.headDimensions ?? defaultHeadDimensions {
        for threads in threadCounts(configuration, allThreads: allThreads) {
            for (maskName, mask) in [("none", AttentionMask.none), ("causal", .causal)] {
                for n in lengths {
                    for (kernelName, kernel) in kernels where configuration.kernels?.contains(kernelName) ?? true {
                        cases.append(
                            BenchmarkCase(
                                suite: suite, kernelName: kernelName, kernel: kernel, maskName: maskName, mask: mask,
                                queryHeads: configuration.heads, keyValueHeads: configuration.heads, queryLength: n,
                                keyLength: n, headDimension: headDimension, threads: threads))
                    }
                }
            }
        }
    }
    return cases
}

/// The cases of the `decode` suite: one new token of Llama-3-8B's attention layout (H_q = 32, H_kv = 8, d = 128)
/// against a KV cache of 4096, 32768 and 131072 tokens (--sizes overrides the lengths), with the decode kernel
/// beside the prefill (blockwise) kernel and naive attention. Reports effective GB/s (K and V bytes / time).
public func decodeSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) -> [BenchmarkCase] {
    let lengths = configuration.sequenceLengths ?? (configuration.quick ? [4096, 32768] : [4096, 32768, 131072])
    var cases: [BenchmarkCase] = []
    let kernels: [(String, AttentionKernel)] = [("decode", .decode()), ("blockwise", .blockwise()), ("naive", .naive)]
    for threads in threadCounts(configuration, allThreads: allThreads) {
        for length in lengths {
            for (kernelName, kernel) in kernels where configuration.kernels?.contains(kernelName) ?? true {
                var c = BenchmarkCase(
                    suite: "decode", kernelName: kernelName, kernel: kernel, maskName: "none", mask: .none,
                    queryHeads: 32, keyValueHeads: 8, queryLength: 1, keyLength: length,
                    headDimension: configuration.headDimensions?.first ?? 128, threads: threads)
                c.reportsBandwidth = true
                cases.append(c)
                // The decode kernel over a cache in every storage format.
                if kernelName == "decode" {
                    for storage in decodeStorages where configuration.storages?.contains(storage.name) ?? true {
                        var stored = c
                        stored.kernelName = "decode-cache"
                        stored.storage = storage
                        cases.append(stored)
                    }
                }
            }
        }
    }
    return cases
}

/// The cases of the `window` suite: causal sliding-window attention (each query sees itself and the 1023 keys
/// before it) beside full causal attention, H = 8, d = 64, N = 4096..16384, one thread and all. Visible work
/// counts only the window, so equal GFLOP/s means the window costs O(N * window). The window also runs as
/// "blockwise-into", writing into a reused output: a new 32 MiB result (N = 16384) costs page faults that an 8 MiB
/// one (N = 4096), recycled by the allocator, does not (4-5 ms per call in huge pages, see `zeroedScalars`; 18-23 ms
/// before), which skews the growth from 4096 to 16384.
public func windowSuite(_ configuration: BenchmarkConfiguration, allThreads: Int) -> [BenchmarkCase] {
    let lengths = configuration.sequenceLengths ?? (configuration.quick ? [4096, 8192] : [4096, 8192, 16384])
    var cases: [BenchmarkCase] = []
    for threads in threadCounts(configuration, allThreads: allThreads) {
        for n in lengths {
            for (maskName, mask) in [("win1024", AttentionMask.window(left: 1023, right: 0)), ("causal", .causal)] {
                for into in maskName == "win1024" ? [false, true] : [false] {
                    var c = BenchmarkCase(
                        suite: "window", kernelName: into ? "blockwise-into" : "blockwise", kernel: .blockwise(),
                        maskName: maskName, mask: mask, queryHeads: configuration.heads,
                        keyValueHeads: configuration.heads, queryLength: n, keyLength: n,
                        headDimension: configuration.headDimensions?.first ?? 64, threads: threads)
                    c.writesIntoOutput = into
                    cases.append(c)
                }
            }
        }
    }
    return cases
}
