// Command-line options of attention-bench, parsed without dependencies.

/// A rejected command line; `description` says which option and why.
public struct UsageError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What one run of attention-bench should do.
public struct BenchmarkConfiguration: Equatable, Sendable {
    public enum OutputFormat: String, Sendable { case table, json, csv }

    public var suites: [String] = ["blockwise", "memory"]
    public var quick = false
    public var format = OutputFormat.table
    public var threads: [Int]? = nil
    public var sequenceLengths: [Int]? = nil
    public var headDimensions: [Int]? = nil
    public var full = false
    public var heads = 8
    public var minimumRepetitions = 3
    public var queryBlock: Int? = nil
    public var kernels: [String]? = nil
    /// The storage formats to time (f32, f16, bf16, q8, q4): decode suite caches (default all), blockwise suite
    /// stored tensors beside the d = 128 cases (default f16).
    public var storages: [String]? = nil
    public var keyBlock: Int? = nil
    public var help = false
    /// Where to write the SVG chart (`--chart FILE.svg`), if anywhere.
    public var chartPath: String? = nil

    public static let knownSuites = [
        "naive", "blockwise", "decode", "window", "streaming", "linear", "sparse", "padding", "packed", "layouts",
        "serving", "cache-growth", "backward", "memory",
    ]

    public init() {}

    /// Parses `arguments` (without the program name).
    public init(arguments: [String]) throws {
        var remaining = arguments[...]
        func value(for option: String) throws -> String {
            guard let next = remaining.popFirst() else { throw UsageError("\(option) needs a value") }
            return next
        }
        func integers(for option: String, minimum: Int) throws -> [Int] {
            let text = try value(for: option)
            let parsed = text.split(separator: ",").map { Int($0) }
            guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil && $0! >= minimum }) else {
                throw UsageError("\(option) expects comma-separated integers >= \(minimum), got '\(text)'")
            }
            return parsed.map { $0! }
        }
        while let argument = remaining.popFirst() {
            switch argument {
            case "--help", "-h": help = true
            case "--quick": quick = true
            case "--json": format = .json
            case "--csv": format = .csv
            case "--chart":
                let path = try value(for: argument)
                guard path.hasSuffix(".svg") else {
                    throw UsageError("--chart expects a file name ending in .svg, got '\(path)'")
                }
                chartPath = path
            case "--suite":
                let names = try value(for: argument).split(separator: ",").map(String.init)
                for name in names where !Self.knownSuites.contains(name) {
                    throw UsageError(
                        "--suite '\(name)' is unknown; known suites: \(Self.knownSuites.joined(separator: ", "))"
                    )
                }
                suites = names
            case "--threads": threads = try integers(for: argument, minimum: 1)
            case "--sizes": sequenceLengths = try integers(for: argument, minimum: 1)
            case "--head-dim": headDimensions = try integers(for: argument, minimum: 1)
            case "--full": full = true
            case "--heads": heads = try integers(for: argument, minimum: 1)[0]
            case "--repetitions": minimumRepetitions = try integers(for: argument, minimum: 1)[0]
            case "--kernels": kernels = try value(for: argument).split(separator: ",").map(String.init)
            case "--storage": storages = try value(for: argument).split(separator: ",").map(String.init)
            case "--query-block": queryBlock = try integers(for: argument, minimum: 1)[0]
            case "--key-block": keyBlock = try integers(for: argument, minimum: 1)[0]
            default: throw UsageError("unknown option '\(argument)'; see --help")
            }
        }
    }

    public static let helpText = """
        attention-bench: throughput and memory of this package's attention kernels against naive attention.

        usage: attention-bench [options]
               attention-bench ext --q FILE --k FILE --v FILE --out FILE ...   (the peers harness protocol,
                                                                                see shared/peers/ext_example.py)

          --suite NAMES       comma-separated suites to run (default: blockwise,memory: blockwise beside naive, then
                              each kernel's memory in a child process; a few minutes). Known: \(knownSuites.joined(separator: ", "))
          --quick             a smaller sweep: one to two minutes (98 s on a 2-vCPU Zen 3 VM)
          --full              the whole sweep (blockwise up to N = 16384; takes tens of minutes)
          --json              one JSON object per case per line instead of the table
          --csv               CSV with a header line instead of the table
          --chart FILE.svg    also write an SVG chart: throughput and memory (log scale) against N for naive and
                              blockwise, unmasked and causal, from this run's blockwise-suite records
          --threads LIST      thread counts to run, e.g. 1,2 (default: 1 and all processors)
          --sizes LIST        sequence lengths N (queries = keys = N), e.g. 512,1024; for decode the KV cache
                              lengths, for streaming the session checkpoints
          --head-dim LIST     head dimensions (default: 64 for naive; 64,128 for blockwise)
          --heads H           query heads = key/value heads (default 8)
          --repetitions R     minimum timed repetitions per case (default 3; more run until ~1 s is spent)
          --kernels LIST      only these kernels of the chosen suites, e.g. blockwise
          --storage LIST      decode suite: the cache formats timed beside the tensor call (decode-cache rows),
                              from f32, f16, bf16, q8, q4 (default all; "none" for none), and a "storage:"
                              line per thread count with each format's time over f32's at 32768 keys, the
                              formats called in turn (median of the rounds' ratios); blockwise suite:
                              the formats of stored-tensor rows beside each d = 128 case (default f16), and
                              a "storage:" line for each at N 2048, timed in turn with the Float32 call
          --query-block Br    blockwise kernel: query positions per block and head (default: 64 / group size)
          --key-block Bc      blockwise kernel: keys per tile (default 64)
          --help              this text

        Every case is validated against the Float64 reference (small shape, plus sampled rows of the timed output)
        before it is timed. Times are medians with min/max over the repetitions, after one warm-up run.
        Suites: naive (naive alone), blockwise (blockwise beside naive, d = 64 and 128, plus GQA 32/8), decode (one
        token, H_q = 32, H_kv = 8, d = 128, KV 4096..131072: decode kernel vs blockwise vs naive, with GB/s and the
        machine's measured read bandwidth), window (sliding window of 1024 vs full causal, N = 4096..16384),
        streaming (a StreamingLLM session through StreamingKVCache, 4 sinks + 1020 window, per-token time at
        checkpoints up to 100,000 tokens, the checkpoints timed side by side on copies of the session's cache, vs
        recomputing the window's attention for every token), linear (linear
        attention, identity map non-causal (linear-id) and elu+1 causal (linear-elu); the -into cases write
        into a reused output; N = 1024..16384 (65536 with --full), beside blockwise
        softmax causal; GFLOP/s counts 4 * B * H * N * d^2 for linear attention), sparse (block-sparse attention,
        N = 16384, H = 8, d = 64, blocks of 64, local / bigBird / strided / topK layouts at about 5, 10, 25, 50%
        density, one thread by default, beside the dense blockwise kernel; GFLOP/s count only listed blocks, and
        topk-build rows time building the top-k layout), padding (8 sequences of N/16, 3N/16, ..., 15N/16
        tokens padded to N = 2048, H = 8, d = 64, no mask and causal: one call with key and query padding
        (padded-batch; padded-into writing into a reused output) beside the eight sequences run one by one
        (per-sequence), timed in turn; GFLOP/s count the real work, and a line per case gives the medians of the
        per-round time ratios), packed (16 sequences of 64..4096 tokens, geometric, H = 8, d = 64, no mask and
        causal: one packedAttention call over [T, H, d] (packed; packed-into writing into a reused output) beside the
        sixteen calls on each sequence alone (per-sequence), timed in turn, with the same lines), layouts (the
        blockwise suite's shapes on [B, H, N, d] and on [B, N, H, d] tensors read in place, timed in turn; a line
        per thread count gives the median over the shapes of each shape's median per-round ratio),
        serving (16 sequences of 1024..32768 tokens, geometric, H_q = 32, H_kv = 8, d = 128: one decode step for all
        from a PagedKVCache with blocks of 64 and of 16 (paged-b64, paged-b16; prompts appended 512 tokens at a time,
        round robin) and with blocks of 64 and 256 appended a block at a time (paged-b64-scattered,
        paged-b256-scattered) beside sixteen KVCache calls (contiguous), timed alternately, with GB/s; and the fused
        rotary embedding's cost per step (rope-step) beside a decode step over 4096 tokens (decode-4096)), cache-growth
        (a KVCache filled one token at a time to 131072 tokens, H_kv = 8, d = 128, Float32, growing in reserved address
        space (reserved) and by doubling an array (doubling), each in a child process: mean, fastest and slowest append
        per doubling range of lengths, and peak resident memory growth), backward (attentionGradients, H = 8, d = 64 and
        128, N = 1024..8192, no mask and causal, beside the forward call and a naive backward that materializes P and dP
        (N <= 2048, one thread); GFLOP/s count 2.5x the forward's visible multiply-adds; then a multi-query case (H
        query heads, one key/value head) at the largest N, and linear attention's backward beside its forward
        (linear-backward, elu + 1)), memory (naive and blockwise, and the backward beside the naive backward, H = 8,
        d = 64, causal, all threads, N = 1024..65536 for blockwise and as far as naive's matrices fit in half the
        physical memory; every case runs once in a fresh child process that reports its peak resident memory growth).

        GFLOP/s = 4 * batch * queryHeads * Nq * Nk * headDim * visibleFraction / median seconds, where
        visibleFraction is the share of (query, key) pairs the mask lets through (about 1/2 for causal).
        workspace = bytes of scratch the kernel allocated (for naive: the whole score matrix; for streaming: the
        cache's storage). GB/s (decode, streaming) = bytes of keys and values read per call / median seconds.
        growth lines (window, streaming): the median time at the longest N over the shortest, beside the growth of
        the visible work for the window (a rate flat in N gives equal ratios), per-token for streaming; the window's
        "paired" line times the two lengths alternately, call by call, and gives the median round's ratio.
        speedup vs naive = naive's median / the case's median on the same shape, mask and threads (naive runs
        first). peak RSS (memory suite) = the child process's peak resident set (VmHWM on Linux) after the
        call minus before it, with the inputs already allocated and locked in memory (mlockall, so reclaim cannot
        page them out mid-call): what the call itself added at its peak, output included.

        At start the bench prints the CPU, cores, the build (target features, fused multiply-add, micro-kernel
        shape, the CPU's features; a warning when the build leaves some unused) and the GFLOP/s its own
        micro-kernels reach on one core with L1-resident data, beside the same core's plain multiply-add rate in
        interleaved windows (the fastest of 48 windows each, over 2.4 s); compare kernel GFLOP/s within a run to
        those figures for a practical % of peak.
        """
}
