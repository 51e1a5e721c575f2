// Parallel: the one place in the package that talks to Dispatch.
//
// Work is a list of independent items (for attention: one item per (batch, head) or per query block). Workers
// claim items from a shared atomic counter (a relaxed fetch-and-add from AttentionPlatform: `Synchronization.Atomic`
// would require macOS 15 / iOS 18), so the split adapts to uneven items (causal rows) and to a core
// that the hypervisor takes away. Each item is computed entirely by the worker that claims it, and items never
// share output memory, so results are bitwise identical for every thread count and every schedule.

import AttentionPlatform
import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

package enum Parallel {
    /// The number of processors currently available to the process.
    package static var defaultThreadCount: Int {
        #if canImport(Glibc)
            return Swift.max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
            return Swift.max(1, ProcessInfoShim.activeProcessorCount)
        #endif
    }

    /// Runs `body(worker, item)` for every item in 0..<itemCount on up to `threads` workers and returns when all
    /// are done. `worker` is in 0..<workerCount(items:threads:) and identifies per-worker scratch space.
    package static func forEach(
        items itemCount: Int, threads: Int, _ body: (_ worker: Int, _ item: Int) -> Void
    ) {
        let workers = workerCount(items: itemCount, threads: threads)
        if workers <= 1 {
            for item in 0..<itemCount { body(0, item) }
            return
        }
        let next = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        next.initialize(to: 0)
        defer { next.deallocate() }
        // `body` is only called while this function runs; concurrentPerform returns after every worker finished.
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendable((body, next))
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                while true {
                    let item = swift_attention_fetch_increment(shared.value.1)
                    if item >= itemCount { return }
                    shared.value.0(worker, item)
                }
            }
        }
    }

    /// How many workers `forEach` uses: never more than the items or the requested threads.
    package static func workerCount(items: Int, threads: Int) -> Int {
        Swift.max(1, Swift.min(items, threads))
    }
}

/// Carries a value into a `@Sendable` closure when the code guarantees, by construction, that concurrent use is
/// safe (disjoint writes through raw pointers, read-only inputs).
package struct UncheckedSendable<Value>: @unchecked Sendable {
    package let value: Value
    package init(_ value: Value) { self.value = value }
}

#if !canImport(Glibc)
    import Foundation
    private enum ProcessInfoShim {
        static var activeProcessorCount: Int { ProcessInfo.processInfo.activeProcessorCount }
    }
#endif
