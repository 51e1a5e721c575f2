// The process's resident memory as Linux reports it in /proc, for the memory tests and the benchmark's memory
// figures (elsewhere these read nothing and reset nothing).

import Foundation

/// The value of a "Key:  N kB" line of /proc/self/status (`key` with its colon), or nil where there is none.
public func processStatusKilobytes(_ key: String) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key) })
    else { return nil }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
}

/// Resets the kernel's peak-resident mark (VmHWM) to the current resident set (Linux 4.0 and later). Returns
/// whether it could; where it cannot, the peak counts from the process's start.
@discardableResult
public func resetPeakResidentSet() -> Bool {
    (try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)) != nil
}
