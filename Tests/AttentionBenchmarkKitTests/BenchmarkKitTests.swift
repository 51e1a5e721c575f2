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
}
