import AttentionCore
import XCTest
import _AttentionTestSupport

/// Both register blockings of the prefill micro-kernels, whichever one this build targets: each against the
/// Float64 reference, and the two bit for bit against each other (the shape must never change a result).
final class MicroKernelShapeTests: XCTestCase {
    /// Runs the tiles on the inputs, given to the kernel in `layout` (with `.bnhd`, key and value rows are read in
    /// place H * d floats apart); the output comes back [B, H, N, d] either way.
    private func run(
        _ inputs: (queries: Tensor, keys: Tensor, values: Tensor), mask: AttentionMask, options: AttentionOptions,
        tiling: BlockwiseTiling, layout: TensorLayout = .bhnd
    ) throws -> AttentionResult {
        func inLayout(_ t: Tensor) throws -> Tensor {
            layout == .bnhd ? swappingHeadsAndTokens(t) : t
        }
        var options = options
        options.layout = layout
        options.outputLayout = .bhnd
        let (q, k, v) = (try inLayout(inputs.queries), try inLayout(inputs.keys), try inLayout(inputs.values))
        let problem = try AttentionProblem(queries: q, keys: k, values: v, mask: mask, options: options)
        return withKeyValueSegments(keys: k, values: v, layout: layout) { segments in
            var fresh: [Float]? = nil
            return tiledAttention(
                problem, queries: q, segments: segments, tiling: tiling, scoreStorage: .perWorkerTile, reusing: &fresh)
        }
    }

    func testWideAndNarrowShapesAgreeBitForBitAndMatchTheReference() throws {
        // (query heads, key/value heads, Nq, Nk, Dk, Dv, Br, Bc): Rp of 16, 32, 48, 64, 80, 128 and 144 rows (one and
        // two wide blocks, stripes past them), key tiles that are and are not multiples of 4, head dimensions with
        // and without a tail of 4.
        let cases: [(Int, Int, Int, Int, Int, Int, Int, Int)] = [
            (2, 2, 113, 203, 64, 64, 64, 64), (4, 1, 45, 70, 19, 21, 12, 7), (8, 2, 33, 90, 63, 80, 16, 64),
            (3, 3, 7, 7, 1, 3, 7, 5), (1, 1, 128, 217, 128, 128, 48, 16), (2, 1, 40, 40, 8, 9, 8, 13),
            (1, 1, 150, 150, 80, 66, 80, 64), (4, 2, 64, 100, 64, 64, 32, 64), (1, 1, 90, 70, 16, 16, 32, 16),
            (2, 2, 130, 90, 20, 24, 128, 32), (1, 1, 130, 90, 20, 24, 130, 32),
            // One query block of 64 rows over interleaved rows: with .bnhd the micro-kernels read them in place
            // (with more blocks the rows are first copied head-major).
            (2, 2, 64, 100, 32, 40, 64, 16), (6, 3, 20, 77, 17, 9, 32, 64),
        ]
        try withEvery("case", in: cases.indices) { index in
            let (hq, hkv, nq, nk, dk, dv, br, bc) = cases[index]
            let inputs = try attentionInputs(
                queryHeads: hq, keyValueHeads: hkv, queryLength: nq, keyLength: nk, headDimension: dk,
                valueDimension: dv, seed: UInt64(index + 40))
            try withEvery("mask", in: [AttentionMask.none, .causal, .window(left: 9, right: 2)]) { mask in
                let options = AttentionOptions(threads: 1)
                var results: [AttentionResult] = []
                // Both shapes, on rows that are consecutive and on rows interleaved with other heads' ([B, N, H, d]).
                for (shape, layout) in [
                    (MicroKernelShape.narrow, TensorLayout.bhnd), (.wide, .bhnd), (.narrow, .bnhd), (.wide, .bnhd),
                ] {
                    let result = try run(
                        inputs, mask: mask, options: options,
                        tiling: BlockwiseTiling(queryBlock: br, keyBlock: bc, shape: shape), layout: layout)
                    let check = checkOutput(
                        result.output, queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: mask,
                        options: options)
                    XCTAssertTrue(check.passes, "\(shape): \(check)")
                    results.append(result)
                }
                for other in results.dropFirst() {
                    XCTAssertEqual(results[0].output.scalars, other.output.scalars, "output bits")
                    XCTAssertEqual(results[0].logSumExp.scalars, other.logSumExp.scalars, "log-sum-exp bits")
                }
            }
        }
    }

    func testTargetShapeFollowsTheBuildTarget() {
        let build = KernelBuild.current
        // Wide only with AVX-512 (AMD Zen 4/5 targets keep the narrow shape, see AttentionPlatform.h).
        if !build.targetFeatures.contains(.avx512f) { XCTAssertEqual(MicroKernelShape.target, .narrow) }
        XCTAssertTrue(build.microKernels.hasPrefix(MicroKernelShape.target == .wide ? "4 keys x 64 rows" : "6 keys"))
        XCTAssertEqual(MicroKernelShape.target.accumulators, MicroKernelShape.target == .wide ? 16 : 6)
        XCTAssertEqual(BlockwiseTiling(queryBlock: 1, keyBlock: 1).shape, MicroKernelShape.target)
    }

    func testProbeMeasuresPositiveRatesAndAFraction() {
        let probe = microKernelProbe(seconds: 0.02, windows: 2)
        XCTAssertTrue(probe.gflops.isFinite && probe.gflops > 0.1, "\(probe)")
        XCTAssertTrue(probe.peakGFLOPS.isFinite && probe.peakGFLOPS > 0.1, "\(probe)")
        XCTAssertTrue(probe.fractionOfPeak.isFinite && probe.fractionOfPeak > 0, "\(probe)")
        // The fraction compares the fastest windows (stable on a shared VM), not a median of per-window ratios.
        XCTAssertEqual(probe.fractionOfPeak, probe.gflops / probe.peakGFLOPS, "\(probe)")
    }
}
