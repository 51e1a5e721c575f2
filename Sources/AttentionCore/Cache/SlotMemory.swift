// SlotMemory: the zero-initialized bytes a KeyValueBuffer keeps its rows in, either an ordinary heap array or a
// reservation of address space whose pages the operating system commits as they are first written (vAttention's
// idea: keep the cache contiguous in virtual memory and let physical memory follow the tokens, instead of copying
// on growth or paging the kernel).
//
// A reservation is one private anonymous mapping, readable and writable but not charged against the commit limit
// (`MAP_NORESERVE`): Linux and Darwin give a page physical memory at its first write, so a cache that reserves room
// for millions of tokens occupies only the pages its tokens reach. One mapping per buffer, never split by
// `mprotect`, so a model with many layers and heads stays far from the kernel's mapping-count limit. Where `mmap`
// is missing or refuses (strict overcommit, an address-space ulimit), callers fall back to the heap array.
//
// Huge pages: a reservation starts in 4 KiB pages, so a short cache costs a page per (batch entry, head) and no
// more; once `adviseHugePages()` is called (KeyValueBuffer does it when a head's rows reach 8 MiB) the whole
// mapping is marked for transparent huge pages, and later first writes fault 2 MiB at a time (4-5x faster to
// fault than 4 KiB pages, and fewer TLB misses when the kernel streams the cache).

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Bytes of key or value rows. A class, so that a KeyValueBuffer copies its storage only when a shared copy is
/// written (`isKnownUniquelyReferenced`), and so that a reservation is unmapped exactly once.
package final class SlotMemory: @unchecked Sendable {
    /// Heap storage (in Float-sized words, for alignment and `zeroedScalars`' huge pages); empty when reserved.
    private var words: [Float]
    /// The reservation's mapping (`base` rounded up to `hugePageBytes` inside it) and its length, when reserved.
    private let mapping: (start: UnsafeMutableRawPointer, length: Int)?
    private let base: UnsafeMutableRawPointer?
    /// Usable bytes.
    package let byteCount: Int
    /// Whether `adviseHugePages()` has been called.
    package private(set) var hugePagesAdvised = false

    /// The transparent huge page size on x86_64 and arm64 Linux; reservations are aligned to it.
    package static let hugePageBytes = 1 << 21

    /// Zeroed heap storage of `byteCount` bytes.
    package init(heapBytes byteCount: Int) {
        words = zeroedScalars(count: (byteCount + 3) / 4)
        mapping = nil
        base = nil
        self.byteCount = byteCount
    }

    /// Reserves `byteCount` bytes of address space (zero until written, committed page by page as written), aligned
    /// to `hugePageBytes`; nil where the platform has no such mapping or the system refuses it.
    package init?(reservingBytes byteCount: Int) {
        #if canImport(Glibc) || canImport(Darwin)
            let length = byteCount + Self.hugePageBytes
            #if canImport(Glibc)
                let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
            #else
                let flags = MAP_PRIVATE | MAP_ANON
            #endif
            guard byteCount > 0, let start = mmap(nil, length, PROT_READ | PROT_WRITE, flags, -1, 0),
                start != UnsafeMutableRawPointer(bitPattern: -1)
            else { return nil }
            let aligned = (UInt(bitPattern: start) + UInt(Self.hugePageBytes - 1)) & ~UInt(Self.hugePageBytes - 1)
            words = []
            mapping = (start, length)
            base = UnsafeMutableRawPointer(bitPattern: aligned)
            self.byteCount = byteCount
        #else
            return nil
        #endif
    }

    deinit {
        #if canImport(Glibc) || canImport(Darwin)
            if let mapping { munmap(mapping.start, mapping.length) }
        #endif
    }

    /// Whether the bytes are an address-space reservation (rather than heap storage).
    package var isReserved: Bool { mapping != nil }

    /// Marks a reservation for transparent huge pages (Linux; elsewhere, or for heap storage, nothing happens).
    /// Pages already written keep their size; a failed call is ignored.
    package func adviseHugePages() {
        guard !hugePagesAdvised else { return }
        hugePagesAdvised = true
        #if canImport(Glibc)
            if let base { _ = madvise(base, byteCount, MADV_HUGEPAGE) }
        #endif
    }

    package func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if let base { return try body(UnsafeRawBufferPointer(start: base, count: byteCount)) }
        return try words.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<byteCount])) }
    }

    /// Mutable access; the caller has made sure it is the only owner (copy-on-write).
    package func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        if let base { return try body(UnsafeMutableRawBufferPointer(start: base, count: byteCount)) }
        return try words.withUnsafeMutableBytes {
            try body(UnsafeMutableRawBufferPointer(rebasing: $0[0..<byteCount]))
        }
    }
}
