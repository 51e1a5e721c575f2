// Large zero-filled storage for results and caches.

#if canImport(Glibc)
    import Glibc
#endif

/// `count` zeros, as the storage of a result or cache. On Linux, storage of 4 MiB or more first has its 2 MiB-aligned
/// interior marked for transparent huge pages (`madvise(MADV_HUGEPAGE)`; nothing changes where THP is off, and a
/// failed call is ignored), then is zeroed. Allocations that large come straight from `mmap` (glibc's threshold
/// tops out at 32 MiB), so every call faults its pages in afresh: for a 32 MiB attention output that took 18-23 ms
/// in 4 KiB pages against 4-5 ms in 2 MiB pages (2026-12-01, this package's CI machine kind), i.e. 4% of a sliding-
/// window call at N = 16384 and the part of its time that did not grow linearly with N.
package func zeroedScalars(count: Int) -> [Float] {
    largeScalars(count: count, zeroed: true)
}

/// Storage for `count` floats that the caller overwrites completely before it reads any (a kernel's output, every
/// element of which the kernel writes). As `zeroedScalars`, without the zero fill: the caller's writes are the
/// only pass over it (the operating system clears fresh pages as they fault in either way), which for a 32 MiB
/// output saves a 32 MiB memset per call, and for a 1 MiB one (N 512, 8 heads, d 64) a pass of 1 MiB through the
/// cache before the kernel starts.
package func overwrittenScalars(count: Int) -> [Float] {
    largeScalars(count: count, zeroed: false)
}

private func largeScalars(count: Int, zeroed: Bool) -> [Float] {
    [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
        #if canImport(Glibc)
            let hugePage = 1 << 21
            if count * MemoryLayout<Float>.stride >= 2 * hugePage, let base = buffer.baseAddress {
                let start = (UInt(bitPattern: base) + UInt(hugePage - 1)) & ~UInt(hugePage - 1)
                let end = (UInt(bitPattern: base + count)) & ~UInt(hugePage - 1)
                if end > start, let region = UnsafeMutableRawPointer(bitPattern: start) {
                    _ = madvise(region, Int(end - start), MADV_HUGEPAGE)
                }
            }
        #endif
        if zeroed { buffer.initialize(repeating: 0) }
        initialized = count
    }
}
