// The README's memory promises, measured rather than taken from the kernels' own `workspaceBytes`: how far the
// process's peak resident set rises during one call. The call runs once first (starting the worker threads and
// faulting in code and scratch); then free heap memory goes back to the system (`malloc_trim`, so the measured call
// cannot reuse pages a copy left behind), the kernel's peak mark is reset (/proc/self/clear_refs), the call runs
// again, and the peak (VmHWM) is read against the resident set before. The bound, 8 MiB, is half of a Float32 copy
// of one head's keys (16 MiB here), and each test first shows that the measurement sees a 16 MiB copy. Skipped
// where the mark cannot be reset (not Linux), where transparent huge pages are "always" on (any touched region can
// then cost 2 MiB), and under AddressSanitizer, whose quarantine keeps freed memory resident.

import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

#if canImport(Glibc)
    import Glibc
#endif

final class MemoryPromiseTests: XCTestCase {
    private let bound = 8 << 20

    /// Bytes the peak resident set rose by during the second of two calls of `body` (see the file header).
    private func peakGrowth(_ body: () throws -> Void) throws -> Int {
        #if os(Linux) && canImport(Glibc)
            if dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil {
                throw XCTSkip("AddressSanitizer keeps freed memory resident")
            }
            if let thp = try? String(contentsOfFile: "/sys/kernel/mm/transparent_hugepage/enabled", encoding: .utf8),
                thp.contains("[always]")
            {
                throw XCTSkip("transparent huge pages are always on")
            }
            try body()
            // glibc's malloc_trim (not in Swift's Glibc module): free heap pages back to the system.
            if let trim = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") {
                _ = unsafeBitCast(trim, to: (@convention(c) (Int) -> Int32).self)(0)
            }
            guard resetPeakResidentSet(), let before = processStatusKilobytes("VmRSS:")
            else { throw XCTSkip("cannot reset the peak resident mark") }
            try body()
            guard let peak = processStatusKilobytes("VmHWM:") else { throw XCTSkip("no VmHWM in /proc/self/status") }
            return (peak - before) * 1024
        #else
            throw XCTSkip("needs Linux's /proc to reset the peak resident mark")
        #endif
    }

    /// That `peakGrowth` sees a 16 MiB copy of `tensor`'s first 4M scalars, made anew in each call (it must, for a
    /// pass to mean anything).
    private func assertTheMeasurementSeesACopy(of tensor: Tensor, file: StaticString = #filePath, line: UInt = #line)
        throws
    {
        let growth = try peakGrowth {
            let copy = tensor.scalars.prefix(4 << 20).map { $0 + 1 }
            XCTAssertEqual(copy.count, 4 << 20, file: file, line: line)
        }
        XCTAssertGreaterThan(growth, 12 << 20, "a 16 MiB copy", file: file, line: line)
    }

    func testDecodingAStoredCacheMakesNoFloat32CopyOfIt() throws {
        // 65536 tokens x 4 heads x d 64 in int4: 20 MiB stored; one head's keys as Float32 would be 16 MiB.
        var cache = try KVCache(keyValueHeads: 4, headDimension: 64, storage: .int4)
        for chunk in 0..<16 {
            let shape = [1, 4, 4096, 64]
            try cache.append(
                keys: Tensor.randomNormal(shape: shape, seed: UInt64(2 * chunk)),
                values: Tensor.randomNormal(shape: shape, seed: UInt64(2 * chunk + 1)))
        }
        let queries = try Tensor.randomNormal(shape: [1, 16, 1, 64], seed: 9)
        try assertTheMeasurementSeesACopy(of: cache.contents.keys)
        for kernel in [AttentionKernel.automatic, .blockwise()] {
            let growth = try peakGrowth {
                _ = try cache.attention(queries: queries, options: AttentionOptions(kernel: kernel, threads: 2))
            }
            XCTAssertLessThan(growth, bound, "\(kernel)")
        }
    }

    func testGroupedQueriesNeverCopyKeysAndValuesPerQueryHead() throws {
        // 4 key/value heads of 65536 tokens (16 MiB of keys each) shared by 32 query heads: a copy of one head's keys
        // would be 16 MiB, of all keys and values per query head 1 GiB.
        let inputs = try attentionInputs(
            queryHeads: 32, keyValueHeads: 4, queryLength: 1, keyLength: 65536, headDimension: 64, seed: 5)
        try assertTheMeasurementSeesACopy(of: inputs.keys)
        for kernel in [AttentionKernel.automatic, .blockwise()] {
            let growth = try peakGrowth {
                _ = try attention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values,
                    options: AttentionOptions(kernel: kernel, threads: 2))
            }
            XCTAssertLessThan(growth, bound, "\(kernel)")
        }
    }

    func testKeyPaddingTakesNoMemoryInProportionToQueriesTimesKeys() throws {
        // Two sequences of 4096 and 1500 tokens padded to 4096: a dense [B, 1, Nq, Nk] mask or bias would be 128 MiB.
        let inputs = try attentionInputs(
            batch: 2, queryHeads: 1, queryLength: 4096, keyLength: 4096, headDimension: 16, seed: 6)
        try assertTheMeasurementSeesACopy(of: try Tensor.randomNormal(shape: [4 << 20], seed: 7))
        let options = AttentionOptions(
            keyPadding: .lengths([4096, 1500]), queryPadding: .lengths([4096, 1500]), threads: 2)
        let growth = try peakGrowth {
            _ = try attention(
                queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: .causal, options: options)
        }
        XCTAssertLessThan(growth, bound)
    }
}
