// AttentionPlatform: the few facts and primitives the Swift kernels need that Swift itself cannot spell. It is
// the package's only C, a header of static inline functions (AttentionPlatform.c is empty), compiled by the Clang
// importer into AttentionCore with the same target options as the Swift code around it:
//
// - What the build targets. Swift has no `#if` for CPU features, but the Clang importer sees the predefined
//   macros of the target it shares with Swift's code generation (`-Xcc -march=...`), so these functions are
//   compile-time constants that fold away: the micro-kernels pick their register blocking from them, and
//   `multiplyAdd` uses fused multiply-add whenever the target has it.
// - What the CPU offers, through CPUID and XGETBV (x86) at run time, so a program can tell its users that a
//   rebuild would be faster.
// - A prefetch hint (`__builtin_prefetch`). Binding LLVM's intrinsic from Swift with `@_silgen_name` broke
//   thread-sanitizer builds: Swift functions are not nounwind, so the sanitizer's cleanup turned the call into an
//   `invoke`, which LLVM's verifier rejects for intrinsics. Calls into C are nounwind.
// - A relaxed atomic fetch-and-add for the work queue. `Synchronization.Atomic` needs macOS 15 / iOS 18; this is
//   available wherever Clang is.

#ifndef SWIFT_ATTENTION_PLATFORM_H
#define SWIFT_ATTENTION_PLATFORM_H

#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

/// Bits of `swift_attention_target_features` and `swift_attention_cpu_features`.
enum {
    SWIFT_ATTENTION_AVX2 = 1 << 0,
    SWIFT_ATTENTION_FMA = 1 << 1,
    SWIFT_ATTENTION_AVX512F = 1 << 2,
    SWIFT_ATTENTION_F16C = 1 << 3,
    SWIFT_ATTENTION_NEON = 1 << 4,
};

/// The vector features of the build target (a constant: the target's predefined macros).
static inline int32_t swift_attention_target_features(void) {
    int32_t features = 0;
#if defined(__AVX2__)
    features |= SWIFT_ATTENTION_AVX2;
#endif
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    features |= SWIFT_ATTENTION_FMA;
#endif
#if defined(__AVX512F__)
    features |= SWIFT_ATTENTION_AVX512F;
#endif
#if defined(__F16C__)
    features |= SWIFT_ATTENTION_F16C;
#endif
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    features |= SWIFT_ATTENTION_NEON;
#endif
    return features;
}

/// Whether the build target has 32 vector registers of 16 floats (AVX-512).
static inline int32_t swift_attention_target_has_avx512(void) {
    return (swift_attention_target_features() & SWIFT_ATTENTION_AVX512F) != 0;
}

/// Whether the prefill micro-kernels should use their wide register blocking: AVX-512, except when the target is
/// AMD Zen 4 (`-march=native` there defines __znver4__). Zen 4 runs 512-bit multiply-adds one per cycle (two
/// 256-bit halves), so 6 accumulator chains already hide the latency; there the wide kernels' reuse of each
/// broadcast key or value element for four multiply-adds costs a separate floating-point uop per broadcast
/// (llvm-mca 19, -mcpu=znver4: 82% of the FMA rate) where the narrow kernels fold it into the multiply-add (100%).
/// Cores with two full 512-bit FMA pipes need at least 8 chains: Intel (llvm-mca 14, -mcpu=icelake-server: wide 99%,
/// narrow 74%) and AMD Zen 5 (EPYC family 26, two 512-bit pipes, `fma_peak` 264 GFLOP/s per core).
/// Measured, H = 8, N = 4096, one thread, two alternating runs each (GFLOP/s, narrow vs wide):
///   Intel Xeon VM (family 6 model 167), 2026-12-02: d = 64 48-51 vs 56-83; d = 128 49-55 vs 63-79.
///   AMD EPYC Zen 5 VM (family 26 model 2), 2026-12-04: d = 64 152 vs 182-190; d = 128 149-150 vs 184-200;
///   causal d = 64 145-146 vs 173-179; GQA 32/8 d = 128 N = 2048 causal 131-139 vs 159-178.
/// SWIFT_ATTENTION_NARROW_BLOCKING (`-Xcc -DSWIFT_ATTENTION_NARROW_BLOCKING`) forces the narrow kernels and
/// SWIFT_ATTENTION_WIDE_BLOCKING the wide ones on an AVX-512 target, for such A/B measurements.
static inline int32_t swift_attention_target_prefers_wide_blocking(void) {
#if defined(SWIFT_ATTENTION_NARROW_BLOCKING)
    return 0;
#elif defined(SWIFT_ATTENTION_WIDE_BLOCKING)
    return swift_attention_target_has_avx512();
#elif defined(__znver4__)
    return 0;
#else
    return swift_attention_target_has_avx512();
#endif
}

/// Whether the build target has fused multiply-add.
static inline int32_t swift_attention_target_has_fma(void) {
    return (swift_attention_target_features() & SWIFT_ATTENTION_FMA) != 0;
}

/// The vector features of the CPU running this code, as far as the operating system enables them (x86: CPUID
/// leaves 1 and 7 and the XCR0 register state, or on macOS its own report for AVX-512; arm64: NEON and FMA are part
/// of the architecture; elsewhere the build target's features).
static inline int32_t swift_attention_cpu_features(void) {
    int32_t features = 0;
#if defined(__x86_64__) || defined(__i386__)
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    const int osxsave = (ecx >> 27) & 1;
    const int fma = (ecx >> 12) & 1;
    const int avx = (ecx >> 28) & 1;
    const int f16c = (ecx >> 29) & 1;
    if (!osxsave || !avx) return 0;
    unsigned int xcr0Low = 0, xcr0High = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0Low), "=d"(xcr0High) : "c"(0));
    const int ymmState = (xcr0Low & 0x6) == 0x6;
    const int zmmState = (xcr0Low & 0xE6) == 0xE6;
    if (!ymmState) return 0;
    if (fma) features |= SWIFT_ATTENTION_FMA;
    if (f16c) features |= SWIFT_ATTENTION_F16C;
    // macOS enables the AVX-512 register state for a thread only when it first uses it, so XCR0 can say no on
    // a CPU that has it; the kernel reports the feature itself.
    int zmmEnabled = zmmState;
#if defined(__APPLE__)
    if (!zmmEnabled) {
        int64_t value = 0;
        size_t size = sizeof(value);
        zmmEnabled = sysctlbyname("hw.optional.avx512f", &value, &size, NULL, 0) == 0 && value != 0;
    }
#endif
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
        if ((ebx >> 5) & 1) features |= SWIFT_ATTENTION_AVX2;
        if (((ebx >> 16) & 1) && zmmEnabled) features |= SWIFT_ATTENTION_AVX512F;
    }
#elif defined(__aarch64__) || defined(__arm64__)
    features = SWIFT_ATTENTION_NEON | SWIFT_ATTENTION_FMA;
#else
    // No run-time detection here: the running CPU has at least what the code was compiled for.
    features = swift_attention_target_features();
#endif
    return features;
}

/// Hints the CPU to bring the cache line holding `address` into L2 (x86 `prefetcht1`, arm64 `prfm pldl2keep`).
/// Never faults, never changes a result.
static inline void swift_attention_prefetch_l2(const void *address) {
    __builtin_prefetch(address, 0, 2);
}

/// Adds 1 to `*counter` (relaxed ordering: the counter only hands out item indices) and returns its old value.
static inline intptr_t swift_attention_fetch_increment(intptr_t *counter) {
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

#endif
