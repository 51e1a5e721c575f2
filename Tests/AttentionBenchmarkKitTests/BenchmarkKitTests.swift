import AttentionBenchmarkKit
import AttentionCore
import Foundation
import XCTest

final class BenchmarkKitTests: XCTestCase {
    func testMedianMinMax() {
        XCTAssertEqual(TimingSummary(samples: [3, 1, 2]), TimingSummary(samples: [1, 2, 3]))
        let odd = TimingSummary(samples: [5, 1, 9])
        XCTAssertEqual(odd.median, 5)
        XCTAssertEqual(odd.minimum, 1)
        XCTAssertEqual(odd.maximum, 9)
        XCTAssertEqual(odd.repetitions, 3)
        XCTAssertEqual(TimingSummary(samples: [4, 1, 2, 10]).median, 3)
    }

    func testMeasureRespectsRepetitionLimits() {
        var calls = 0
        let summary = measureTimes(warmup: 2, minimumRepetitions: 4, maximumRepetitions: 6, budget: 10) { calls += 1 }
        XCTAssertEqual(summary.repetitions, 6)
        XCTAssertEqual(calls, 8)
        calls = 0
        _ = measureTimes(warmup: 0, minimumRepetitions: 3, maximumRepetitions: 100, budget: 0) {
            calls += 1
        }
        XCTAssertEqual(calls, 3)
    }

    func testMedianRatioPairsTheRounds() {
        // Per round 2, 3 and 5: the median round is 3, where the ratio of the medians would be 10 / 2 = 5.
        XCTAssertEqual(medianRatio([2, 30, 10], [1, 10, 2]), 3)
        XCTAssertEqual(medianRatio([4, 6], [2, 2]), 2.5)
    }

    func testAlternateTimesRotatesTheFirstRunAndPairsWithTheBaseline() throws {
        var order: [Int] = []
        let runs = (0..<3).map { index in { order.append(index) } }
        let timings = try alternateTimes(minimumRepetitions: 4, budget: 0, runs, baseline: 1)
        // One warm-up each, then four rounds, each starting one run later.
        XCTAssertEqual(order, [0, 1, 2] + [0, 1, 2] + [1, 2, 0] + [2, 0, 1] + [0, 1, 2])
        XCTAssertEqual(timings.map(\.repetitions), [4, 4, 4])
        XCTAssertNil(timings[1].pairedRatio, "the baseline is not paired with itself")
        XCTAssertNotNil(timings[0].pairedRatio)
        XCTAssertNotNil(timings[2].pairedRatio)
        XCTAssertNil(try alternateTimes(minimumRepetitions: 2, budget: 0, runs)[0].pairedRatio)
    }

    func testPaddingPackedAndLayoutLinesUseTheRoundsRatiosWhenTheRecordsHaveThem() {
        func record(_ suite: String, _ kernel: String, seconds: Double, paired: Double?) -> BenchmarkRecord {
            var r = BenchmarkRecord(
                suite: suite, kernel: kernel, batch: 8, queryHeads: 8, keyValueHeads: 8, queryLength: 2048,
                keyLength: 2048, headDimension: 64, mask: "causal", threads: 2, medianSeconds: seconds,
                minSeconds: seconds, maxSeconds: seconds, gflops: 1, workspaceBytes: 0, maxAbsError: 0)
            r.pairedRatio = paired
            return r
        }
        // The medians say 1.20x and 0.90x; the rounds said 1.04x and 0.98x.
        for (paired, expected) in [(true, "1.04x"), (false, "1.20x")] {
            let padding = paddingSummaries([
                record("padding", "padded-batch", seconds: 0.12, paired: paired ? 1.04 : nil),
                record("padding", "per-sequence", seconds: 0.10, paired: nil),
                record("padding", "padded-into", seconds: 0.09, paired: paired ? 0.98 : nil),
            ])
            XCTAssertEqual(padding.count, 1)
            XCTAssertTrue(padding[0].contains("batch took \(expected) the time"), padding[0])
            XCTAssertTrue(padding[0].contains(paired ? "(0.98x into" : "(0.90x into"), padding[0])
            XCTAssertEqual(padding[0].hasSuffix("medians of the per-round ratios"), paired)
            let packed = packedSummaries([
                record("packed", "packed", seconds: 0.12, paired: paired ? 1.04 : nil),
                record("packed", "per-sequence", seconds: 0.10, paired: nil),
                record("packed", "per-sequence-bnhd", seconds: 0.08, paired: paired ? 0.8 : nil),
            ])
            XCTAssertEqual(packed.count, 1)
            XCTAssertTrue(packed[0].contains("took \(expected) the time of the sixteen"), packed[0])
            XCTAssertTrue(packed[0].contains(paired ? "(1.30x of the sixteen on" : "(1.50x of the sixteen on"))
            let backward = packedSummaries([
                record("packed", "packed-backward", seconds: 0.36, paired: paired ? 1.04 : nil),
                record("packed", "per-sequence-backward", seconds: 0.30, paired: nil),
            ])
            XCTAssertEqual(backward.count, 1)
            XCTAssertTrue(backward[0].contains("call took \(expected) the time of the sixteen"), backward[0])
            XCTAssertEqual(backward[0].hasSuffix("median of the per-round ratios"), paired)
            let layouts = layoutSummaries([
                record("layouts", "bhnd", seconds: 0.10, paired: nil),
                record("layouts", "bnhd", seconds: 0.12, paired: paired ? 1.04 : nil),
            ])
            XCTAssertEqual(layouts.count, 1)
            XCTAssertTrue(layouts[0].contains("took \(expected) the time of [B, H, N, d]"), layouts[0])
            // Stored-tensor records get a line of their own, never mixed with the Float32 shapes' ratios.
            func stored(_ r: BenchmarkRecord) -> BenchmarkRecord {
                var r = r
                r.storage = "bf16"
                return r
            }
            let mixed = layoutSummaries([
                record("layouts", "bhnd", seconds: 0.10, paired: nil),
                record("layouts", "bnhd", seconds: 0.12, paired: paired ? 1.04 : nil),
                stored(record("layouts", "bhnd", seconds: 0.10, paired: nil)),
                stored(record("layouts", "bnhd", seconds: 0.15, paired: paired ? 1.07 : nil)),
            ])
            XCTAssertEqual(mixed.count, 2)
            XCTAssertTrue(mixed[0].hasPrefix("layouts, 2 threads") && mixed[0].contains("took \(expected)"), mixed[0])
            XCTAssertTrue(mixed[1].hasPrefix("layouts (bf16 stored tensors), 2 threads"), mixed[1])
            XCTAssertTrue(mixed[1].contains("took \(paired ? "1.07x" : "1.50x")"), mixed[1])
        }
    }

    func testFlopFormulaAndVisibleFraction() {
        XCTAssertEqual(
            attentionFLOPs(
                batch: 2, queryHeads: 8, queryLength: 100, keyLength: 200, headDimension: 64,
                visibleFraction: 1),
            4 * 2 * 8 * 100 * 200 * 64)
        XCTAssertEqual(visibleFraction(of: .none, queryLength: 7, keyLength: 9), 1)
        // Causal 4 x 4: 1 + 2 + 3 + 4 = 10 of 16 pairs.
        XCTAssertEqual(visibleFraction(of: .causal, queryLength: 4, keyLength: 4), 10.0 / 16)
        XCTAssertEqual(
            visibleFraction(of: .custom { q, k in q == k }, queryLength: 4, keyLength: 4), 4.0 / 16)
        XCTAssertEqual(visibleFraction(of: .causal, queryLength: 0, keyLength: 4), 0)
    }

    func testJSONLineHasTheDocumentedKeys() throws {
        let record = BenchmarkRecord(
            suite: "naive", kernel: "naive", batch: 1, queryHeads: 8, keyValueHeads: 2, queryLength: 128,
            keyLength: 256, headDimension: 64, mask: "causal", threads: 2, medianSeconds: 0.5,
            minSeconds: 0.4,
            maxSeconds: 0.7, gflops: 12.5, workspaceBytes: 1024, maxAbsError: 1e-7)
        let line = record.jsonLine()
        XCTAssertFalse(line.contains("\n"))
        let object = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let keys = [
            "suite", "kernel", "batch", "queryHeads", "keyValueHeads", "queryLength", "keyLength",
            "headDimension",
            "mask", "threads", "medianSeconds", "minSeconds", "maxSeconds", "gflops", "workspaceBytes",
            "maxAbsError",
        ]
        XCTAssertEqual(Set(object.keys), Set(keys))
        XCTAssertEqual(object["keyValueHeads"] as? Int, 2)
        XCTAssertEqual(object["mask"] as? String, "causal")
        XCTAssertEqual(try JSONDecoder().decode(BenchmarkRecord.self, from: Data(line.utf8)), record)
        XCTAssertTrue(record.tableRow().contains("12.50"), record.tableRow())
    }

    func testOptionParsing() throws {
        let parsed = try BenchmarkConfiguration(arguments: [
            "--suite", "naive", "--quick", "--json", "--threads", "1,2", "--sizes", "64,128",
            "--head-dim", "128",
            "--heads", "4", "--repetitions", "5",
        ])
        XCTAssertEqual(parsed.suites, ["naive"])
        XCTAssertTrue(parsed.quick)
        XCTAssertEqual(parsed.format, .json)
        XCTAssertEqual(parsed.threads, [1, 2])
        XCTAssertEqual(parsed.sequenceLengths, [64, 128])
        XCTAssertEqual(parsed.headDimensions, [128])
        XCTAssertEqual(parsed.heads, 4)
        XCTAssertEqual(parsed.minimumRepetitions, 5)
        XCTAssertEqual(try BenchmarkConfiguration(arguments: []), BenchmarkConfiguration())
        XCTAssertTrue(try BenchmarkConfiguration(arguments: ["--help"]).help)
    }

    func testBadOptionsAreRejectedWithAMessage() {
        let cases: [([String], String)] = [
            (["--bogus"], "unknown option '--bogus'"),
            (["--suite", "nope"], "--suite 'nope' is unknown"),
            (["--threads", "0"], "--threads expects comma-separated integers >= 1, got '0'"),
            (["--sizes", "12,x"], "--sizes expects comma-separated integers >= 1, got '12,x'"),
            (["--head-dim"], "--head-dim needs a value"),
            (["--chart", "out.png"], "--chart expects a file name ending in .svg, got 'out.png'"),
            (["--chart"], "--chart needs a value"),
        ]
        for (arguments, message) in cases {
            XCTAssertThrowsError(try BenchmarkConfiguration(arguments: arguments)) { error in
                XCTAssertTrue("\(error)".contains(message), "\(arguments): \(error)")
            }
        }
    }

    func testFormatBytes() {
        XCTAssertEqual(formatBytes(512), "512 B")
        XCTAssertEqual(formatBytes(1536), "1.5 KiB")
        XCTAssertEqual(formatBytes(3 << 30), "3.0 GiB")
    }

    func testValidationGateCatchesAWrongKernelAndPassesTheNaiveOne() throws {
        XCTAssertNil(try validate(kernel: .naive, mask: .causal, headDimension: 16))
    }

    func testCSVHasOneFieldPerHeaderColumnAndOptionalKeysAppearOnlyWhenSet() throws {
        var record = BenchmarkRecord(
            suite: "memory", kernel: "blockwise", batch: 1, queryHeads: 8, keyValueHeads: 8, queryLength: 1024,
            keyLength: 1024, headDimension: 64, mask: "causal", threads: 2, medianSeconds: 0.01, minSeconds: 0.01,
            maxSeconds: 0.01, gflops: 80, workspaceBytes: 135_168, maxAbsError: 1e-7)
        let header = BenchmarkRecord.csvHeader.split(separator: ",", omittingEmptySubsequences: false)
        XCTAssertEqual(record.csvLine().split(separator: ",", omittingEmptySubsequences: false).count, header.count)
        XCTAssertFalse(record.jsonLine().contains("speedupVsNaive"))
        record.speedupVsNaive = 2.5
        record.peakResidentBytes = 2_097_152
        record.gbPerSecond = 12
        var fields = record.csvLine().split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(fields.suffix(7), ["12.0", "2.5", "2097152", "", "", "", ""])
        record.storage = "q8"
        record.bytesPerToken = 2304
        record.errorVersusFloat32Inputs = 0.25
        fields = record.csvLine().split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(fields.suffix(4), ["q8", "2304", "0.25", ""])
        XCTAssertTrue(record.tableRow().contains("q8  2.2 KiB/token  err vs f32 inputs 2.5e-01"), record.tableRow())
        record.pairedRatio = 1.25
        XCTAssertEqual(record.csvLine().split(separator: ",", omittingEmptySubsequences: false).last, "1.25")
        XCTAssertTrue(record.tableRow().hasSuffix("1.250x of its baseline in turn"), record.tableRow())
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(record.jsonLine().utf8)) as? [String: Any])
        XCTAssertEqual(object["peakResidentBytes"] as? Int, 2_097_152)
        XCTAssertEqual(object["speedupVsNaive"] as? Double, 2.5)
        XCTAssertTrue(record.tableRow().contains("2.5x vs naive"))
        XCTAssertEqual(try BenchmarkConfiguration(arguments: ["--csv"]).format, .csv)
        XCTAssertEqual(try BenchmarkConfiguration(arguments: ["--chart", "a.svg"]).chartPath, "a.svg")
        XCTAssertEqual(
            try BenchmarkConfiguration(arguments: ["--suite", "memory,sparse"]).suites, ["memory", "sparse"])
    }

    func testChartSeriesAndSVG() {
        func record(
            _ kernel: String, _ mask: String, _ n: Int, gflops: Double, peak: Int? = nil, suite: String = "blockwise"
        )
            -> BenchmarkRecord
        {
            var r = BenchmarkRecord(
                suite: suite, kernel: kernel, batch: 1, queryHeads: 8, keyValueHeads: 8, queryLength: n, keyLength: n,
                headDimension: 64, mask: mask, threads: 1, medianSeconds: 1, minSeconds: 1, maxSeconds: 1,
                gflops: gflops, workspaceBytes: n * 100, maxAbsError: 0)
            r.peakResidentBytes = peak
            return r
        }
        let records = [
            record("blockwise", "none", 2048, gflops: 60), record("blockwise", "none", 1024, gflops: 50),
            record("naive", "causal", 1024, gflops: 15), record("naive", "none", 1024, gflops: 30),
        ]
        let series = chartSeries(records)
        XCTAssertEqual(series.throughput.map(\.label), ["naive, unmasked", "naive, causal", "blockwise, unmasked"])
        XCTAssertEqual(series.throughput[2].points.map(\.0), [1024, 2048])  // sorted by N
        XCTAssertEqual(series.memoryLabel, "kernel workspace")
        let withMemory = chartSeries(
            records + [record("naive", "causal", 4096, gflops: 1, peak: 1 << 29, suite: "memory")])
        XCTAssertEqual(withMemory.memory.map(\.label), ["naive, causal"])
        XCTAssertEqual(withMemory.memory[0].points.first?.1, Double(1 << 29))
        let svg = chartSVG(
            throughput: series.throughput, memory: withMemory.memory, memoryLabel: withMemory.memoryLabel,
            title: "a < b")
        XCTAssertTrue(svg.hasPrefix("<svg"))
        XCTAssertTrue(svg.hasSuffix("</svg>\n"))
        XCTAssertTrue(svg.contains("a &lt; b"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 4)  // 3 throughput lines + 1 memory line
        XCTAssertTrue(svg.contains("512.0 MiB"))
    }

    /// One external-protocol job end to end: the output file holds the kernel's result, and the memory fields
    /// are the harness's base (resident set after loading) and peak (during the calls, after a reset).
    func testExternalJobWritesTheOutputAndReportsBaseAndPeakMemory() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ext-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let (b, hq, hkv, n, d) = (1, 4, 2, 300, 16)
        var paths: [String: String] = [:]
        var tensors: [String: Tensor] = [:]
        for (name, heads, seed) in [("q", hq, 1), ("k", hkv, 2), ("v", hkv, 3)] {
            let tensor = try Tensor.randomNormal(shape: [b, heads, n, d], seed: UInt64(seed))
            var bytes = Data()
            for scalar in tensor.scalars {
                withUnsafeBytes(of: scalar.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
            }
            let path = directory.appendingPathComponent("\(name).f32").path
            try bytes.write(to: URL(fileURLWithPath: path))
            paths[name] = path
            tensors[name] = tensor
        }
        let out = directory.appendingPathComponent("o.f32").path
        let arguments = [
            "--q", paths["q"]!, "--k", paths["k"]!, "--v", paths["v"]!, "--out", out, "--batch", "\(b)",
            "--q-heads", "\(hq)", "--kv-heads", "\(hkv)", "--q-len", "\(n)", "--kv-len", "\(n)", "--head-dim", "\(d)",
            "--causal", "1", "--scale", "0.25", "--threads", "1", "--warmup", "1", "--reps", "2",
        ]
        // A 64 MiB buffer touched and freed before the job raises the process's peak mark; the job resets the mark
        // after loading, so its peak must not include it.
        let bytes = 64 << 20
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        scratch.initializeMemory(as: UInt8.self, repeating: 1, count: bytes)
        scratch.deallocate()
        let line = try runExternal(ExternalJob(arguments: arguments))
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual((object["times_s"] as? [Double])?.count, 2)
        let base = try XCTUnwrap(object["base_rss_mb"] as? Double)
        let peak = try XCTUnwrap(object["peak_rss_mb"] as? Double)
        #if os(Linux)
            XCTAssertGreaterThan(base, 0)
            XCTAssertLessThan(peak - base, 32, "base \(base) MB, peak \(peak) MB: the peak mark was not reset")
        #endif
        let expected = try attention(
            queries: tensors["q"]!, keys: tensors["k"]!, values: tensors["v"]!, mask: .causal,
            options: AttentionOptions(scale: 0.25, threads: 1))
        let written = try Data(contentsOf: URL(fileURLWithPath: out))
        XCTAssertEqual(written.count, expected.count * 4)
        let scalars = written.withUnsafeBytes { raw in
            (0..<expected.count).map {
                Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
            }
        }
        XCTAssertEqual(scalars, expected.scalars)
    }

    func testMachineWarningsNameTheFix() {
        var machine = MachineContext(
            cpu: "x", cores: 2, build: "release", kernels: "x86_64", advice: "this CPU has AVX2 FMA but ...",
            microKernelGFLOPS: 17)
        XCTAssertEqual(machine.warnings.count, 1)
        XCTAssertTrue(machine.warnings[0].contains("this CPU has AVX2 FMA"))
        XCTAssertTrue(machine.warnings[0].contains("-c release -Xcc -march=native attention-bench"))
        machine.advice = nil
        XCTAssertEqual(machine.warnings, [])
        XCTAssertTrue(machine.summary[1].contains("kernels: x86_64"))
    }

    func testGrowthSummariesPairTheShortestAndLongestOfEachSeries() {
        func record(_ suite: String, _ kernel: String, _ mask: String, _ n: Int, seconds: Double, gflops: Double)
            -> BenchmarkRecord
        {
            BenchmarkRecord(
                suite: suite, kernel: kernel, batch: 1, queryHeads: 8, keyValueHeads: 8, queryLength: n, keyLength: n,
                headDimension: 64, mask: mask, threads: 1, medianSeconds: seconds, minSeconds: seconds,
                maxSeconds: seconds, gflops: gflops, workspaceBytes: 0, maxAbsError: 0)
        }
        let lines = growthSummaries([
            record("window", "blockwise", "win1024", 4096, seconds: 0.1, gflops: 80),
            record("window", "blockwise", "win1024", 8192, seconds: 0.2, gflops: 80),
            // Work x4.4 (GFLOP/s x time) in x4.4 the time, then a 16384 run taking 4.5x as long at a 2% lower rate.
            record("window", "blockwise", "win1024", 16384, seconds: 0.45, gflops: 80 * 4.4 / 4.5),
            record("window", "blockwise", "causal", 4096, seconds: 0.2, gflops: 90),
            record("blockwise", "blockwise", "none", 4096, seconds: 1, gflops: 90),
            record("blockwise", "blockwise", "none", 8192, seconds: 4, gflops: 90),
            record("streaming", "cache", "sinks4+1020", 2000, seconds: 0.0004, gflops: 40),
            record("streaming", "cache", "sinks4+1020", 100_000, seconds: 0.00042, gflops: 38),
            record("streaming", "recompute", "causal", 1024, seconds: 0.1, gflops: 80),
        ])
        XCTAssertEqual(
            lines,
            [
                "growth: window blockwise win1024, 1 thread, N 4096 -> 16384: time x4.50, visible work x4.40",
                "growth: streaming sinks4+1020, 1 thread, per-token time at 100000 tokens / at 2000: 1.05",
            ])
    }

    func testStreamingSuiteTimesEveryCheckpointSideBySideAndValidatesIt() throws {
        // --quick samples 100 steps per checkpoint: copies start at tokens 20, 50 and 300, and each is validated
        // against the reference at its checkpoint (the suite throws otherwise).
        let configuration = try BenchmarkConfiguration(arguments: [
            "--suite", "streaming", "--quick", "--sizes", "400,120,150", "--head-dim", "8", "--threads", "1",
        ])
        let records = try streamingSuite(configuration, allThreads: 1)
        let cache = records.filter { $0.kernel == "cache" }
        XCTAssertEqual(cache.map(\.keyLength), [120, 150, 400])
        for record in cache {
            XCTAssertGreaterThan(record.medianSeconds, 0)
            XCTAssertLessThanOrEqual(record.minSeconds, record.medianSeconds)
            XCTAssertLessThan(record.maxAbsError, 1e-4)
            XCTAssertEqual(record.workspaceBytes, 2 * 8 * 1024 * 8 * 4)  // K and V, 8 heads, 1024 slots, d = 8
        }
        XCTAssertEqual(records.filter { $0.kernel == "recompute" }.count, 1)
    }

    func testPairedWindowGrowthReportsTheMedianRoundAndTheVisibleWorkRatio() throws {
        // N <= 1024: the 1024-key window is the causal mask, so the work grows (256 * 257) / (64 * 65) = 15.82x.
        let line = try XCTUnwrap(
            try pairedWindowGrowth(lengths: [256, 64, 128], heads: 1, headDimension: 8, threads: 1, rounds: 3))
        XCTAssertTrue(line.hasPrefix("growth: window blockwise-into win1024 paired (3 rounds alternating), 1 thread"))
        XCTAssertTrue(line.contains("N 64 -> 256: time x"), line)
        XCTAssertTrue(line.hasSuffix("visible work x15.82"), line)
        XCTAssertNil(try pairedWindowGrowth(lengths: [64], heads: 1, headDimension: 8, threads: 1, rounds: 3))
    }

    func testPairedStorageRatiosGiveEachFormatAgainstFloat32() throws {
        let formats = decodeStorages.filter { ["f16", "f32", "q8"].contains($0.name) }
        let line = try XCTUnwrap(
            try pairedStorageRatios(
                keyLength: 96, queryHeads: 4, keyValueHeads: 2, headDimension: 32, formats: formats, threads: 1,
                rounds: 3))
        XCTAssertTrue(
            line.hasPrefix("storage: decode paired (3 rounds, formats in turn), 1 thread, 96 keys, H 4/2, d 32"), line)
        // f16 and q8 in the order given, each as the median round's ratio within the rounds' range; f32 only as the
        // base.
        let parts = try XCTUnwrap(line.components(separatedBy: "): ").last).components(separatedBy: "), ")
        XCTAssertEqual(parts.count, 2, line)
        for (part, name) in zip(parts, ["f16", "q8"]) {
            let numbers = part.split(whereSeparator: { " x()-,".contains($0) }).compactMap { Double($0) }
            XCTAssertTrue(part.hasPrefix(name == "f16" ? "f16 x" : "q8 x"), line)
            XCTAssertEqual(numbers.count, 4, line)
            if numbers.count == 4 {
                XCTAssertTrue(numbers[1] <= numbers[0] && numbers[0] <= numbers[2], line)
                XCTAssertTrue(numbers.allSatisfy { $0 > 0 }, line)
            }
        }
        XCTAssertNil(
            try pairedStorageRatios(
                keyLength: 96, queryHeads: 4, keyValueHeads: 2, headDimension: 32,
                formats: formats.filter { $0.name != "f32" }, threads: 1, rounds: 3))
        XCTAssertNil(
            try pairedStorageRatios(
                keyLength: 96, queryHeads: 4, keyValueHeads: 2, headDimension: 32,
                formats: formats.filter { $0.name == "f32" }, threads: 1, rounds: 3))
    }

    func testPairedStoredPrefillGivesTheStoredRateAgainstFloat32s() throws {
        var c = BenchmarkCase(
            suite: "blockwise", kernelName: "blockwise", kernel: .blockwise(), maskName: "causal", mask: .causal,
            queryHeads: 4, keyValueHeads: 2, queryLength: 40, keyLength: 40, headDimension: 16, threads: 1)
        XCTAssertThrowsError(try pairedStoredPrefill(c, rounds: 3))
        c.tensorStorage = ("bf16", .bfloat16)
        let line = try pairedStoredPrefill(c, rounds: 3)
        XCTAssertTrue(
            line.hasPrefix(
                "storage: blockwise paired (3 rounds, in turn), bf16 keys and values, causal, H 4/2, N 40, d 16, "
                    + "1 thread: x"), line)
        let numbers = try XCTUnwrap(line.components(separatedBy: ": x").last)
            .split(whereSeparator: { " ()-".contains($0) }).compactMap { Double($0) }
        XCTAssertEqual(numbers.count, 3, line)
        if numbers.count == 3 { XCTAssertTrue(numbers[1] <= numbers[0] && numbers[0] <= numbers[2], line) }
        // Only the stored cases at the longest N up to 2048 get a line.
        var long = c
        long.queryLength = 48
        var plain = c
        plain.tensorStorage = nil
        plain.queryLength = 48
        let lines = try pairedStoredPrefill([c, long, plain], quick: true)
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines.first?.contains("N 48,") ?? false, "\(lines)")
    }
}
