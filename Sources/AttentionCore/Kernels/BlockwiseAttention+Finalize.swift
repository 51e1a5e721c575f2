// The last step of a work item: merging its partial softmax states (one per key split, in split order) into
// output rows and log-sum-exp, exactly as `mergeAttention` merges partial results (PartialResults.swift).
//
// Legend as in BlockwiseAttention.swift: m running maximum (half base 2), l denominator, O unnormalized output.

extension WorkItemContext {
    /// Merges the `count` partial states at `states`, `stride` floats apart (one per key split, in split order),
    /// and writes the output rows and log-sum-exp of the work item: with M = max m_s and w_s = 2^(2 (m_s - M)),
    /// O = sum w_s O_s / sum w_s l_s and LSE = 2 M ln 2 + ln(sum w_s l_s). With one state, w = 1 and this is O / l.
    func finalize(
        batch b: Int, keyValueHead kvHead: Int, queryBlock: Int, states: UnsafeMutablePointer<Float>, count: Int,
        stride: Int
    ) {
        let p = problem
        let (nq, dv, g, br) = (p.queryLength, p.valueDimension, p.groupSize, tiling.queryBlock)
        let rp = tiling.paddedRows(groupSize: g)
        let i0 = queryBlock * br
        let rows = Swift.min(br, nq - i0)
        guard rows > 0, let output, let logSumExp else { return }
        for head in 0..<g {
            let lseRows = logSumExp + p.logSumExpStrides.offset(batch: b, head: kvHead * g + head, token: i0)
            let lseStep = p.logSumExpStrides.token
            for row in 0..<rows {
                let r = head * br + row
                let target =
                    output + p.outputStrides.offset(batch: b, head: kvHead * g + head, token: i0 + row)
                let (start, step) = layout.outputRow(r)
                if count == 1 {
                    let denominator = states[dv * rp + rp + r]
                    if denominator == 0 {
                        // l = 0: the row saw no key and has no sink (padding rows, masked-away blocks). Zeros
                        // without reading O.
                        target.update(repeating: 0, count: dv)
                        lseRows[row * lseStep] = -.infinity
                    } else {
                        // w = 1, so O / l in one pass over the row (the same numbers as the general path, whose
                        // products with w = 1 are exact).
                        let inverse: Float = 1 / denominator
                        let source = states + start
                        for c in 0..<dv { target[c] = source[c &* step] * inverse }
                        lseRows[row * lseStep] = states[dv * rp + r] * (exponentScale * ln2) + _log(denominator)
                    }
                    continue
                }
                var maximum = -Float.infinity
                for s in 0..<count { maximum = Swift.max(maximum, states[s * stride + dv * rp + r]) }
                var denominator: Float = 0
                for s in 0..<count {
                    let state = states + s * stride
                    let (ms, ls) = (state[dv * rp + r], state[dv * rp + rp + r])
                    // A split that saw no key has m = -inf, l = 0 and O = 0, so it adds zeros; comparing before
                    // subtracting keeps -inf - -inf out, and a NaN row (NaN query) stays NaN through l.
                    let weight: Float = ms == maximum ? 1 : _exp2((ms - maximum) * exponentScale)
                    denominator += ls * weight
                    let source = state + start
                    if s == 0 {
                        for c in 0..<dv { target[c] = source[c &* step] * weight }
                    } else {
                        for c in 0..<dv { target[c] += source[c &* step] * weight }
                    }
                }
                // denominator == 0: the row saw no key (and has no sink): zeros, not 0/0.
                let inverse: Float = denominator == 0 ? 0 : 1 / denominator
                for c in 0..<dv { target[c] *= inverse }
                lseRows[row * lseStep] =
                    denominator == 0 ? -.infinity : maximum * (exponentScale * ln2) + _log(denominator)
            }
        }
    }
}
