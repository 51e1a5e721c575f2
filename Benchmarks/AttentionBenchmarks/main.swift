// attention-bench: validates, then times, this package's attention kernels. `attention-bench --help` explains
// every option and the FLOP formula.

import AttentionBenchmarkKit
import AttentionCore
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

// The peers harness's external-implementation protocol (shared/peers/ext_example.py).
if CommandLine.arguments.dropFirst().first == "ext" {
    do {
        print(try runExternal(try ExternalJob(arguments: Array(CommandLine.arguments.dropFirst(2)))))
        exit(0)
    } catch {
        printError("attention-bench ext: \(error)")
        exit(2)
    }
}

let configuration: BenchmarkConfiguration
do {
    configuration = try BenchmarkConfiguration(arguments: Array(CommandLine.arguments.dropFirst()))
} catch {
    printError("attention-bench: \(error)")
    exit(2)
}
if configuration.help {
    print(BenchmarkConfiguration.helpText)
    exit(0)
}

#if DEBUG
    printError(
        """
        ************************************************************************************************
        WARNING: attention-bench was built in DEBUG mode. Its numbers are 10-100x too slow and mean nothing.
        Build it as the README says:  swift run -c release -Xcc -march=native attention-bench
        ************************************************************************************************
        """)
#endif

let allThreads = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
let budget = configuration.quick ? 0.25 : 1.0
var cases: [BenchmarkCase] = []
for suite in configuration.suites {
    switch suite {
    case "naive": cases += naiveSuite(configuration, allThreads: allThreads)
    case "blockwise": cases += blockwiseSuite(configuration, allThreads: allThreads)
    case "decode": cases += decodeSuite(configuration, allThreads: allThreads)
    case "window": cases += windowSuite(configuration, allThreads: allThreads)
    default: break
    }
}

// Correctness gate: every (kernel, mask) pair in the run must match the Float64 reference before any timing.
var validated = Set<String>()
for c in cases where !validated.contains("\(c.kernelName)/\(c.maskName)") {
    validated.insert("\(c.kernelName)/\(c.maskName)")
    do {
        if let failure = try validate(kernel: c.kernel, mask: c.mask, headDimension: c.headDimension) {
            printError(
                "attention-bench: \(c.kernelName) with mask \(c.maskName) FAILED validation: \(failure)")
            exit(1)
        }
    } catch {
        printError(
            "attention-bench: validating \(c.kernelName) with mask \(c.maskName) threw: \(error)")
        exit(1)
    }
}
if configuration.format == .table {
    print("validated against the Float64 reference: \(validated.sorted().joined(separator: ", "))")
}
if configuration.suites.contains("decode") || configuration.suites.contains("streaming") {
    let bandwidths = Set([1, allThreads]).sorted().map { threads in
        "\(threads) thread\(threads == 1 ? "" : "s"): "
            + String(format: "%.1f GB/s", measureReadBandwidth(threads: threads))
    }
    let line = "measured read bandwidth (1 GiB buffer, best of 3): " + bandwidths.joined(separator: ", ")
    if configuration.format == .table { print(line) } else { printError(line) }
}
if configuration.format == .table {
    print(BenchmarkRecord.tableHeader)
}

for c in cases {
    do {
        switch try run(c, minimumRepetitions: configuration.minimumRepetitions, budget: budget) {
        case .measured(let record):
            print(configuration.format == .json ? record.jsonLine() : record.tableRow())
        case .skipped(let reason):
            if configuration.format == .table {
                print("skipped: \(reason)")
            } else {
                printError("skipped: \(reason)")
            }
        }
    } catch {
        printError("attention-bench: \(c.kernelName) N=\(c.queryLength) failed: \(error)")
        exit(1)
    }
}

for (name, suite) in [("streaming", streamingSuite), ("linear", linearSuite), ("sparse", sparseSuite)]
where configuration.suites.contains(name) {
    do {
        for record in try suite(configuration, allThreads) {
            print(configuration.format == .json ? record.jsonLine() : record.tableRow())
        }
    } catch {
        printError("attention-bench: \(name) failed: \(error)")
        exit(1)
    }
}
