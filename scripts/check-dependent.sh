#!/usr/bin/env bash
# Builds a small package that depends on this one the way the README's "Using it from your package" says (by
# version, with the NativeCPU trait, plain `swift build -c release`), runs it, and fails unless the kernels it got
# were compiled for every vector feature of this CPU (KernelBuild.advice is nil) and its attention call is correct.
#
# The dependency is a version-tagged clone of this repository's committed HEAD, reached by a file:// URL, so
# SwiftPM treats it exactly as a remote dependency pinned by version (the case that rejects unsafe flags before
# tools version 6.2). Run from anywhere: scripts/check-dependent.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

git clone -q "$root" "$work/swift-attention"
# Only the one tag, so that `from: "0.1.0"` cannot resolve to an older tagged commit.
git -C "$work/swift-attention" tag -l | xargs -r git -C "$work/swift-attention" tag -d > /dev/null
git -C "$work/swift-attention" tag 0.1.0

mkdir -p "$work/dependent/Sources/Dependent"
cat > "$work/dependent/Package.swift" <<MANIFEST
// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "Dependent",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(url: "file://$work/swift-attention", from: "0.1.0", traits: ["NativeCPU"]),
    ],
    targets: [
        .executableTarget(
            name: "Dependent", dependencies: [.product(name: "Attention", package: "swift-attention")])
    ]
)
MANIFEST
cat > "$work/dependent/Sources/Dependent/main.swift" <<'SWIFT'
import Attention

#if canImport(Glibc)
    import Glibc  // exit()
#elseif canImport(Darwin)
    import Darwin
#endif

let build = KernelBuild.current
print("kernels:", build)
let (n, d) = (1024, 64)
let queries = try Tensor.randomNormal(shape: [1, 8, n, d], seed: 1)
let keys = try Tensor.randomNormal(shape: [1, 8, n, d], seed: 2)
let values = try Tensor.randomNormal(shape: [1, 8, n, d], seed: 3)
let options = AttentionOptions(threads: 1)
let fast = try attention(queries: queries, keys: keys, values: values, mask: .causal, options: options)
var naive = options
naive.kernel = .naive
let slow = try attention(queries: queries, keys: keys, values: values, mask: .causal, options: naive)
let error = zip(fast.scalars, slow.scalars).map { abs($0 - $1) }.max() ?? .infinity
let clock = ContinuousClock()
var best = Duration.seconds(1000)
for _ in 0..<5 {
    let start = clock.now
    _ = try attention(queries: queries, keys: keys, values: values, mask: .causal, options: options)
    best = min(best, clock.now - start)
}
let seconds = Double(best.components.seconds) + Double(best.components.attoseconds) * 1e-18
print("causal N = \(n), d = \(d), H = 8, one thread: \(best), \(4.0 * 8 * Double(n * n * d) / 2 / seconds / 1e9) GFLOP/s")
print("max difference from the naive kernel: \(error)")
if let advice = build.advice {
    print("FAIL: \(advice)")
    exit(1)
}
if !(error < 1e-4) {
    print("FAIL: the blockwise and naive kernels disagree by \(error)")
    exit(1)
}
print("dependent build: OK")
SWIFT

cd "$work/dependent"
swift build -c release
"$(swift build -c release --show-bin-path)/Dependent"
