// Dispatch: the one place that decides which kernel a call runs and with which tiles. `AttentionKernel` is what a
// caller asks for (possibly `.automatic`); `ResolvedKernel` is what runs, with every choice made, so the code that
// runs it cannot fall back on anything. The heuristics (the automatic rule, the default blockwise tiles, the
// decode split, the block-sparse tiles) live here, each with the measurement that justifies it.

/// A kernel with every choice made: what `runAttention` runs. It has no automatic case.
package enum ResolvedKernel: Sendable, Hashable {
    /// The quadratic baseline (`naiveAttention`).
    case naive
    /// The blockwise kernel with these tiles (`.stripes` layout, no key split).
    case blockwise(BlockwiseTiling)
    /// The decode kernel: the blockwise kernel with the `.rows` layout and key splits.
    case decode(BlockwiseTiling)
}

extension AttentionKernel {
    /// The one place that turns a kernel request into a concrete kernel. `.automatic` is the decode kernel when a
    /// key/value group has at most 16 query rows (G * Nq <= 16), the blockwise kernel with its default tiles
    /// otherwise; never naive. Measured with `attention-bench` (2-core Zen 4 VMs): one token of H_q = 32, H_kv = 8,
    /// d = 128 against 32768 keys takes 10.0-11.0 ms with the decode kernel and 24.9-27.9 ms with the blockwise
    /// kernel, which pads 4 rows to 16 lanes (2 threads, two runs, AVX-512 build, 2026-12-01; 13.3-17.7 against
    /// 26.7-29.8 ms on an AVX2 build, 2026-11-23); for prefill, naive is within noise of blockwise at N = 512 and
    /// 1.4-4.6x slower from N = 1024 on (AVX-512), and it allocates the N x N scores.
    package func resolved(for problem: AttentionProblem) -> ResolvedKernel {
        switch self {
        case .automatic:
            return problem.groupSize * problem.queryLength <= 16
                ? .decode(decodeTiling(problem, keysPerSplit: nil)) : .blockwise(blockwiseTiling(problem))
        case .naive:
            return .naive
        case .blockwise(let queryBlock, let keyBlock):
            return .blockwise(blockwiseTiling(problem, queryBlock: queryBlock, keyBlock: keyBlock))
        case .decode(let keysPerSplit):
            return .decode(decodeTiling(problem, keysPerSplit: keysPerSplit))
        }
    }

    /// The kernel block-sparse attention runs for `layout`: with `.automatic`, the blockwise kernel with the
    /// layout's block sizes as its tiles, so every listed block is one tile and every other tile is skipped
    /// whole; any other request as given.
    package func forBlockSparse(_ layout: BlockSparseLayout) -> AttentionKernel {
        if case .automatic = self { return .blockwise(queryBlock: layout.queryBlock, keyBlock: layout.keyBlock) }
        return self
    }
}

extension BlockwiseTiling {
    /// The default tiles: R = G * Br close to 64 rows (four 16-row stripes) and 64-key tiles: one Q^T stripe
    /// (Dk x 16 floats) and one P^T stripe (4 KiB) stay in L1 while K or V streams past. Measured with
    /// `attention-bench --query-block/--key-block` at N = 2048, d = 64 and 128: (64, 64) was as fast as any of
    /// (32|64|128) x (32|48|64|96|128) within the machine's noise, and smaller key tiles lost to per-tile overhead.
    package static func automatic(groupSize: Int) -> BlockwiseTiling {
        BlockwiseTiling(queryBlock: Swift.max(1, 64 / groupSize), keyBlock: 64)
    }
}

/// The blockwise kernel's tiles: the given sizes or the defaults, clamped to the sequences (the result is the
/// same, and Int.max stays harmless).
package func blockwiseTiling(_ problem: AttentionProblem, queryBlock: Int? = nil, keyBlock: Int? = nil)
    -> BlockwiseTiling
{
    let automatic = BlockwiseTiling.automatic(groupSize: problem.groupSize)
    return BlockwiseTiling(
        queryBlock: Swift.min(queryBlock ?? automatic.queryBlock, Swift.max(1, problem.queryLength)),
        keyBlock: Swift.min(keyBlock ?? automatic.keyBlock, Swift.max(1, problem.keyLength)))
}

/// The decode kernel's schedule: one query block holding every query of the group (R = G * Nq <= 16 rows), 64-key
/// tiles, and key splits of `keysPerSplit` keys (rounded up to whole tiles). By default the keys are split so that
/// there are about 64 work items in all (enough to balance any common core count with the dynamic schedule), but
/// never into splits under 512 keys, whose merge would cost more than it balances. The split depends only on the
/// shape, never on the thread count, so results are bitwise identical for every thread count.
package func decodeTiling(_ problem: AttentionProblem, keysPerSplit: Int?) -> BlockwiseTiling {
    let keyBlock = 64
    let nk = Swift.max(1, problem.keyLength)
    let units = problem.batch * problem.keyValueHeads
    let wanted = Swift.max(1, Swift.min((64 + units - 1) / units, (nk + 511) / 512))
    let perSplit = keysPerSplit ?? (nk + wanted - 1) / wanted
    let rounded = (Swift.min(perSplit, nk) + keyBlock - 1) / keyBlock * keyBlock
    return BlockwiseTiling(
        queryBlock: Swift.max(1, problem.queryLength), keyBlock: keyBlock, layout: .rows, keysPerSplit: rounded)
}
