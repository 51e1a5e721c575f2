// The SVG chart of `attention-bench --chart FILE.svg`: throughput and memory against N, naive vs blockwise,
// unmasked and causal. Plain SVG 1.1 text, no dependencies.

import Foundation

/// One line of the chart.
public struct ChartSeries: Sendable, Equatable {
    public var label: String
    public var color: String
    public var dashed: Bool
    /// (N, value) pairs, sorted by N.
    public var points: [(Double, Double)]

    public static func == (a: ChartSeries, b: ChartSeries) -> Bool {
        a.label == b.label && a.color == b.color && a.dashed == b.dashed
            && a.points.elementsEqual(b.points, by: { $0 == $1 })
    }
}

/// Builds the two panels' series from a run's records: throughput from the `blockwise` suite records with the
/// smallest head dimension and thread count present (one line per kernel and mask), memory from the `memory` suite's
/// peak resident growth when that suite ran, else from the same records' workspace bytes.
public func chartSeries(_ records: [BenchmarkRecord]) -> (
    throughput: [ChartSeries], memory: [ChartSeries], memoryLabel: String, throughputTitle: String, memoryTitle: String
) {
    let sweep = records.filter { $0.suite == "blockwise" && $0.queryHeads == $0.keyValueHeads }
    let d = sweep.map(\.headDimension).min()
    let threads = sweep.map(\.threads).min()
    let chosen = sweep.filter { $0.headDimension == d && $0.threads == threads }
    let memoryRecords = records.filter { $0.suite == "memory" && $0.peakResidentBytes != nil }
    func series(_ source: [BenchmarkRecord], value: (BenchmarkRecord) -> Double) -> [ChartSeries] {
        var result: [ChartSeries] = []
        for kernel in ["naive", "blockwise"] {
            for mask in ["none", "causal"] {
                let points = source.filter { $0.kernel == kernel && $0.mask == mask }
                    .map { (Double($0.queryLength), value($0)) }.sorted { $0.0 < $1.0 }
                if points.isEmpty { continue }
                result.append(
                    ChartSeries(
                        label: "\(kernel), \(mask == "none" ? "unmasked" : "causal")",
                        color: kernel == "naive" ? "#d62728" : "#1f77b4", dashed: mask == "causal", points: points))
            }
        }
        return result
    }
    let throughput = series(chosen) { $0.gflops }
    let throughputTitle =
        "throughput, H = \(chosen.first?.queryHeads ?? 0), d = \(d ?? 0), \(threads ?? 0) thread\((threads ?? 0) == 1 ? "" : "s")"
    if let first = memoryRecords.first {
        return (
            throughput, series(memoryRecords) { Double($0.peakResidentBytes ?? 0) }, "peak resident growth",
            throughputTitle,
            "memory of one call, H = \(first.queryHeads), d = \(first.headDimension), child process per point"
        )
    }
    return (
        throughput, series(chosen) { Double($0.workspaceBytes) }, "kernel workspace", throughputTitle,
        "kernel-reported workspace (run --suite memory for peak RSS)"
    )
}

/// The SVG document: two panels side by side, x = N on a log2 axis, y = GFLOP/s (linear) and bytes (log10).
public func chartSVG(
    throughput: [ChartSeries], memory: [ChartSeries], memoryLabel: String, title: String,
    throughputTitle: String = "throughput", memoryTitle: String = "memory (log scale)"
) -> String {
    let (width, height) = (1000.0, 440.0)
    var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(width / 2)" y="22" text-anchor="middle" font-size="15">\(escape(title))</text>

        """
    svg += panel(
        throughput, x: 70, y: 60, width: 390, height: 290, yLabel: "GFLOP/s (visible work)", logY: false,
        panelTitle: throughputTitle)
    svg += panel(
        memory, x: 590, y: 60, width: 390, height: 290, yLabel: memoryLabel, logY: true, panelTitle: memoryTitle)
    // Legend under the panels.
    var legendX = 70.0
    for series in throughput.isEmpty ? memory : throughput {
        svg +=
            "<line x1=\"\(legendX)\" y1=\"410\" x2=\"\(legendX + 30)\" y2=\"410\" stroke=\"\(series.color)\" stroke-width=\"2.5\"\(series.dashed ? " stroke-dasharray=\"6,4\"" : "")/>\n"
        svg += "<text x=\"\(legendX + 36)\" y=\"414\">\(escape(series.label))</text>\n"
        legendX += 200
    }
    return svg + "</svg>\n"
}

private func escape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;")
}

private func panel(
    _ series: [ChartSeries], x: Double, y: Double, width: Double, height: Double, yLabel: String, logY: Bool,
    panelTitle: String
) -> String {
    let points = series.flatMap(\.points).filter { $0.1 > 0 || !logY }
    guard let minN = points.map(\.0).min(), let maxN = points.map(\.0).max() else {
        return "<text x=\"\(x + width / 2)\" y=\"\(y + height / 2)\" text-anchor=\"middle\">no data</text>\n"
    }
    let (x0, x1) = (log2(minN), Swift.max(log2(maxN), log2(minN) + 1))
    var (y0, y1): (Double, Double)
    if logY {
        // Powers of two, so that byte ticks read 1 MiB, 4 MiB, ...
        y0 = floor(log2(points.map(\.1).filter { $0 > 0 }.min() ?? 1))
        y1 = ceil(log2(points.map(\.1).max() ?? 2))
        if y1 <= y0 { y1 = y0 + 1 }
    } else {
        (y0, y1) = (0, Swift.max(1, (points.map(\.1).max() ?? 1) * 1.1))
    }
    func px(_ n: Double) -> Double { x + (log2(n) - x0) / (x1 - x0) * width }
    func py(_ v: Double) -> Double {
        let t = logY ? (log2(Swift.max(v, 1e-30)) - y0) / (y1 - y0) : (v - y0) / (y1 - y0)
        return y + height - t * height
    }
    var svg = "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(width)\" height=\"\(height)\" fill=\"none\" stroke=\"#888\"/>\n"
    // x ticks at powers of two.
    var exponent = ceil(x0)
    while exponent <= x1 + 1e-9 {
        let n = pow(2, exponent)
        svg += "<line x1=\"\(px(n))\" y1=\"\(y)\" x2=\"\(px(n))\" y2=\"\(y + height)\" stroke=\"#eee\"/>\n"
        svg += "<text x=\"\(px(n))\" y=\"\(y + height + 16)\" text-anchor=\"middle\">\(Int(n))</text>\n"
        exponent += 1
    }
    // y ticks: decades (log) or five steps (linear).
    if logY {
        let step = Swift.max(1, ((y1 - y0) / 6).rounded(.up))
        var power = y0
        while power <= y1 {
            let v = pow(2, power)
            svg += "<line x1=\"\(x)\" y1=\"\(py(v))\" x2=\"\(x + width)\" y2=\"\(py(v))\" stroke=\"#eee\"/>\n"
            svg += "<text x=\"\(x - 6)\" y=\"\(py(v) + 4)\" text-anchor=\"end\">\(escape(formatBytes(Int(v))))</text>\n"
            power += step
        }
    } else {
        for step in 0...5 {
            let v = y0 + (y1 - y0) * Double(step) / 5
            svg += "<line x1=\"\(x)\" y1=\"\(py(v))\" x2=\"\(x + width)\" y2=\"\(py(v))\" stroke=\"#eee\"/>\n"
            svg += "<text x=\"\(x - 6)\" y=\"\(py(v) + 4)\" text-anchor=\"end\">\(Int(v.rounded()))</text>\n"
        }
    }
    svg +=
        "<text x=\"\(x + width / 2)\" y=\"\(y + height + 34)\" text-anchor=\"middle\">sequence length N (queries = keys)</text>\n"
    let labelX = x - (logY ? 74 : 44)
    svg +=
        "<text x=\"\(labelX)\" y=\"\(y + height / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 \(labelX) \(y + height / 2))\">\(escape(yLabel))</text>\n"
    svg +=
        "<text x=\"\(x + width / 2)\" y=\"\(y - 8)\" text-anchor=\"middle\" font-weight=\"bold\">\(escape(panelTitle))</text>\n"
    for line in series {
        let visible = line.points.filter { !logY || $0.1 > 0 }
        let path = visible.map { "\(px($0.0)),\(py($0.1))" }.joined(separator: " ")
        svg +=
            "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"2.5\"\(line.dashed ? " stroke-dasharray=\"6,4\"" : "")/>\n"
        for point in visible {
            svg += "<circle cx=\"\(px(point.0))\" cy=\"\(py(point.1))\" r=\"3\" fill=\"\(line.color)\"/>\n"
        }
    }
    return svg
}
