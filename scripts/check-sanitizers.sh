#!/usr/bin/env bash
# The README's two sanitizer runs, each in its own build directory: ThreadSanitizer on the concurrency and
# determinism tests, AddressSanitizer on every test (LeakSanitizer off: XCTest on Linux never frees its test-case
# objects). Fails if either does not build or reports an error. CI runs it after the test command, so a change
# that breaks a sanitizer build (as binding LLVM's prefetch intrinsic once did for TSan) is caught at once.
set -euo pipefail
cd "$(dirname "$0")/.."
swift test -c release --scratch-path .build-tsan --sanitize=thread --disable-swift-testing \
    --filter "ConcurrencyTests|testBitwiseIdentical|testThreadCountDoesNotChangeBits|testGradientsAreBitwiseIdentical|testBiasGradients"
ASAN_OPTIONS=detect_leaks=0 swift test -c release --scratch-path .build-asan --sanitize=address \
    --disable-swift-testing
