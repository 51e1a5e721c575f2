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

// Subcommands that print one result and exit: the peers harness's external-implementation protocol
// (shared/peers/ext_example.py), one memory-suite case and one cache-growth mode (each run by the parent in a fresh
// process).
let subcommands: [String: ([String]) throws -> String] = [
    "ext": { try runExternal(try ExternalJob(arguments: $0)) },
    "memory-child": runMemoryChild,
    "growth-child": runGrowthChild,
]
if let name = CommandLine.arguments.dropFirst().first, let subcommand = subcommands[name] {
    do {
        print(try subcommand(Array(CommandLine.arguments.dropFirst(2))))
        exit(0)
    } catch {
        printError("attention-bench \(name): \(error)")
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

/// Prints a line of context: to stdout for the table, to stderr for JSON and CSV (so those stay machine-readable).
@MainActor func note(_ line: String) {
    if configuration.format == .table { print(line) } else { printError(line) }
}

let allThreads = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
let machine = MachineContext.measure(cores: allThreads)
for line in machine.summary { note(line) }
for warning in machine.warnings { printError(warning) }

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
let memoryCases = configuration.suites.contains("memory") ? memorySuite(configuration, allThreads: allThreads) : []

// Correctness gate: every (kernel, mask) pair in the run must match the Float64 reference before any timing.
var validated = Set<String>()
for c in cases + memoryCases where !validated.contains("\(c.kernelName)/\(c.maskName)") {
    validated.insert("\(c.kernelName)/\(c.maskName)")
    do {
        if let failure = try validate(kernel: c.kernel, mask: c.mask, headDimension: c.headDimension) {
            printError("attention-bench: \(c.kernelName) with mask \(c.maskName) FAILED validation: \(failure)")
            exit(1)
        }
    } catch {
        printError("attention-bench: validating \(c.kernelName) with mask \(c.maskName) threw: \(error)")
        exit(1)
    }
}
let ownGates = ["streaming", "linear", "sparse", "padding", "packed", "layouts", "serving", "cache-growth", "backward"]
    .filter {
        configuration.suites.contains($0)
    }
note(
    "validated against the Float64 reference: "
        + (validated.sorted() + ownGates.map { "\($0) (validated by its suite before timing)" }).joined(separator: ", ")
)
if configuration.suites.contains("decode") || configuration.suites.contains("streaming") {
    let bandwidths = Set([1, allThreads]).sorted().map { threads in
        "\(threads) thread\(threads == 1 ? "" : "s"): "
            + String(format: "%.1f GB/s", measureReadBandwidth(threads: threads))
    }
    note("measured read bandwidth (1 GiB buffer, best of 3): " + bandwidths.joined(separator: ", "))
}
switch configuration.format {
case .table: print(BenchmarkRecord.tableHeader)
case .csv: print(BenchmarkRecord.csvHeader)
case .json: break
}

var records: [BenchmarkRecord] = []
@MainActor func emit(_ record: BenchmarkRecord) {
    records.append(record)
    switch configuration.format {
    case .table: print(record.tableRow())
    case .json: print(record.jsonLine())
    case .csv: print(record.csvLine())
    }
}
@MainActor func skipped(_ reason: String) {
    if configuration.format == .table { print("skipped: \(reason)") } else { printError("skipped: \(reason)") }
}

// Naive runs before the other kernels of the same shape, so their records can carry the speedup.
func shapeKey(_ c: BenchmarkCase) -> String {
    "\(c.suite)/\(c.maskName)/\(c.queryHeads)/\(c.keyValueHeads)/\(c.queryLength)/\(c.keyLength)/\(c.headDimension)/\(c.threads)"
}
var naiveMedians: [String: Double] = [:]
let ordered = cases.enumerated().sorted { a, b in
    let (ka, kb) = (shapeKey(a.element), shapeKey(b.element))
    if ka == kb {
        return (a.element.kernelName == "naive" ? 0 : 1, a.offset) < (b.element.kernelName == "naive" ? 0 : 1, b.offset)
    }
    return a.offset < b.offset
}.map(\.element)
for c in ordered {
    do {
        switch try run(c, minimumRepetitions: configuration.minimumRepetitions, budget: budget) {
        case .measured(var record):
            if c.kernelName == "naive" {
                naiveMedians[shapeKey(c)] = record.medianSeconds
            } else if let naive = naiveMedians[shapeKey(c)] {
                record.speedupVsNaive = naive / record.medianSeconds
            }
            emit(record)
        case .skipped(let reason):
            skipped(reason)
        }
    } catch {
        printError("attention-bench: \(c.kernelName) N=\(c.queryLength) failed: \(error)")
        exit(1)
    }
}

for (name, suite) in [
    ("streaming", streamingSuite), ("linear", linearSuite), ("sparse", sparseSuite), ("padding", paddingSuite),
    ("packed", packedSuite), ("layouts", layoutsSuite), ("serving", servingSuite), ("backward", backwardSuite),
]
where configuration.suites.contains(name) {
    do {
        for record in try suite(configuration, allThreads) { emit(record) }
    } catch {
        printError("attention-bench: \(name) failed: \(error)")
        exit(1)
    }
}

if configuration.suites.contains("cache-growth") {
    do {
        for record in try cacheGrowthSuite(configuration, allThreads: allThreads, executable: currentExecutablePath()) {
            emit(record)
        }
    } catch {
        printError("attention-bench: cache-growth failed: \(error)")
        exit(1)
    }
}

for line in growthSummaries(records) + paddingSummaries(records) + packedSummaries(records) + layoutSummaries(records)
    + servingSummaries(records) + cacheGrowthSummaries(records)
    + backwardSummaries(records)
{
    note(line)
}
/// The lines of a suite's side-by-side timing (`what` names it in an error, which ends the run).
@MainActor func notePaired(_ suite: String, _ what: String, _ lines: () throws -> [String]) {
    guard configuration.suites.contains(suite) else { return }
    do {
        for line in try lines() { note(line) }
    } catch {
        printError("attention-bench: \(what) failed: \(error)")
        exit(1)
    }
}
notePaired("window", "paired window growth") { try pairedWindowGrowth(configuration, allThreads: allThreads) }
notePaired("decode", "paired storage ratios") { try pairedStorageRatios(configuration, allThreads: allThreads) }
notePaired("blockwise", "paired stored prefill") {
    try pairedStoredPrefill(blockwiseSuite(configuration, allThreads: allThreads), quick: configuration.quick)
}
notePaired("backward", "paired stored backward") { try pairedStoredBackward(configuration, allThreads: allThreads) }

if !memoryCases.isEmpty {
    let executable = currentExecutablePath()
    var peaks: [String: [Int: Int]] = [:]  // kernel -> N -> peak resident growth
    for c in memoryCases {
        do {
            switch try runMemoryCase(c, executable: executable) {
            case .measured(let record):
                emit(record)
                peaks[c.kernelName, default: [:]][c.queryLength] = record.peakResidentBytes
            case .skipped(let reason):
                skipped(reason)
            }
        } catch {
            printError("attention-bench: memory \(c.kernelName) N=\(c.queryLength) failed: \(error)")
            exit(1)
        }
    }
    for (naiveName, name) in [("naive", "blockwise"), ("naive-backward", "backward")] {
        for (n, peak) in (peaks[name] ?? [:]).sorted(by: { $0.key < $1.key }) where peak > 0 {
            if let naive = peaks[naiveName]?[n] {
                note(
                    "memory N=\(n): \(naiveName)'s peak grew \(formatBytes(naive)), \(name)'s \(formatBytes(peak)): "
                        + String(format: "%.0fx less", Double(naive) / Double(peak)))
            } else if name == "backward",
                let c = memoryCases.first(where: { $0.kernelName == name && $0.queryLength == n })
            {
                // The naive backward did not run (over budget): its two N x N matrices alone bound what it needs.
                let matrices = 2 * c.queryHeads * n * n * MemoryLayout<Float>.size
                note(
                    "memory N=\(n): naive-backward's P and dP alone take \(formatBytes(matrices)), backward's peak "
                        + "grew \(formatBytes(peak)): "
                        + String(format: "at least %.0fx less", Double(matrices) / Double(peak)))
            }
        }
    }
}

if let path = configuration.chartPath {
    let series = chartSeries(records)
    let svg = chartSVG(
        throughput: series.throughput, memory: series.memory, memoryLabel: series.memoryLabel,
        title: "attention-bench: naive vs blockwise attention on \(machine.cpu)",
        throughputTitle: series.throughputTitle, memoryTitle: series.memoryTitle)
    do {
        try svg.write(toFile: path, atomically: true, encoding: .utf8)
        note("chart written to \(path)")
    } catch {
        printError("attention-bench: could not write \(path): \(error)")
        exit(1)
    }
}
