// How time grows with the sequence in the window and streaming suites: the two scaling claims those suites exist
// to check, printed as ratios under the table.

import Foundation

/// One line per series of records that differ only in length, from its shortest to its longest member: for the
/// window suite the time ratio beside the ratio of the visible work (GFLOP/s x time, which counts visible pairs
/// only), so a kernel whose rate is flat in N shows equal ratios; for the streaming suite the per-token time at the
/// last checkpoint over the first. Series with one length are left out.
public func growthSummaries(_ records: [BenchmarkRecord]) -> [String] {
    var lines: [String] = []
    var series: [String: [BenchmarkRecord]] = [:]
    var order: [String] = []
    for record in records where record.suite == "window" || (record.suite == "streaming" && record.kernel == "cache") {
        let key = "\(record.suite) \(record.kernel) \(record.mask) \(record.threads)"
        if series[key] == nil { order.append(key) }
        series[key, default: []].append(record)
    }
    for key in order {
        let members = series[key]!.sorted { $0.keyLength < $1.keyLength }
        guard let first = members.first, let last = members.last, last.keyLength > first.keyLength else { continue }
        let threads = "\(first.threads) thread\(first.threads == 1 ? "" : "s")"
        let timeRatio = last.medianSeconds / first.medianSeconds
        if first.suite == "window" {
            let workRatio = (last.gflops * last.medianSeconds) / (first.gflops * first.medianSeconds)
            lines.append(
                "growth: window \(first.kernel) \(first.mask), \(threads), N \(first.keyLength) -> \(last.keyLength): "
                    + String(format: "time x%.2f, visible work x%.2f", timeRatio, workRatio))
        } else {
            lines.append(
                "growth: streaming \(first.mask), \(threads), per-token time at \(last.keyLength) tokens / at "
                    + "\(first.keyLength): " + String(format: "%.2f", timeRatio))
        }
    }
    return lines
}
