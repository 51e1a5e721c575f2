// The decode micro-kernels: the blockwise kernel's `.rows` layout, for work items with few query rows
// (R = G * Br <= 16, e.g. one new token of the G query heads sharing a key/value head).
//
//   computeScoresFewRows:    S^T[k, r] = Q[r, :] . K[k, :]     4 rows x 4 keys (or x 6, x 1), or 1 row x 4 keys
//   accumulateValuesFewRows: O[r, :] += sum_k P^T[k, r] * V[k, :]     4 rows x 32 (or 24, 16) value columns per step
//   scoresFromStoredRows, accumulateStoredValues: the same for four rows over 8-bit, Float16 or BFloat16 rows as a
//                            cache stores them, converted in registers (16-register targets)
//
// The prefill kernels put query rows in the 16 vector lanes; with R = 4 rows three quarters of every multiply-add
// would be padding. These kernels vectorize along the head dimension instead, so their work is proportional to R
// and each key and value row is read from memory once per work item, however many rows share it. Scores and
// weights keep the 16-lane stripe layout (lane r = row r), so masking and the online softmax are the same code for
// both layouts.
//
// Scores for four rows use an interleaved Q (see `fewRowsQueryIndex`): lane 4 i + j of step t holds q_i[4 t + j],
// and four consecutive floats of a key, loaded once and repeated in all four 128-bit lanes (one broadcast load),
// multiply it. The accumulator then holds four partial sums per row. Four keys go together: each Q load serves
// four multiply-adds, eight accumulators keep eight independent chains in flight, and one reduction turns the four
// keys' accumulators into their 16 scores. Reducing 16-lane dot products per (row, key) instead took more than half
// of the kernel's instructions (callgrind, 2026-11-23): LLVM scalarizes those shuffles. Values: four rows x 32
// columns, eight accumulators, each broadcast weight serving two multiply-adds.
//
// Memory: each key and value is read once, and without help the kernel's compute does not overlap its reads (on
// an AVX-512 build, 2026-12-01, adding a cache-hot second score pass cost its full time). So each tile prefetches
// the next one while it computes (`TilePrefetch`): two lines of the next tile's four key rows per column step of
// the score kernel, and two lines (one row's 32-column stretch) per key step of the value kernel, so the hints are
// spread evenly over the tile. Issued in bursts instead (a pass's 128 value lines at its start), the same kernels
// took 1.5x as long from memory. Measured 2026-12-01, one token, H_q = 32, H_kv = 8, d = 128, alternating runs
// against the previous kernels (4 rows x 1 key and 4 rows x 16 values, prefetching one key row per key step and
// one value column per pass; median of medians): 1024 cached keys 0.31 against 0.49 ms on one thread; 32768 keys
// from memory 19.1 against 20.5 ms on one thread, 11.0 against 11.3 on two. An AVX2 build (16 registers, so the
// eight SIMD16 accumulators spill some) gains too: 0.49 against 0.53, 18.2 against 20.5, 10.6 against 11.4 ms.
// Before prefetching (2026-11-23), kernels that were a third faster in cache lost from memory.

import AttentionPlatform

/// Whether the few-rows kernels keep to 16 registers (`compact` below): on targets without AVX-512 (AVX2 and SSE
/// have 16 registers of 256 or 128 bits; arm64 32 of 128 bits) the eight-SIMD16-accumulator kernels alone fill or
/// overflow the register file and spill in the loop, and a spilled accumulator's chain runs through a store and a
/// reload. The compact kernels keep twelve independent chains of 256-bit halves where the shape allows: scores six
/// keys at a time with one accumulator each (`interleavedScores6`; four, then one, for the tile's last keys), values
/// four rows x 24 columns (`valueRows4x24`; 16-column passes for the rest). Measured on an AMD EPYC Zen 3 VM (AVX2,
/// two FMA pipes, 2026-12-06, one thread, one token, H_q 32 / H_kv 8, d 128, alternating binaries, fastest of
/// 3000 calls, three rounds): Float32 rows, 1024 keys (in cache) 0.47 -> 0.41 ms against the spilling kernels; from
/// memory (32768 keys) no difference within this VM's noise (21.8-25.5 against 22.0-23.5 ms); tiles decoded into
/// scratch (8-bit, F16, 4-bit), which used eight-chain compact kernels before, unchanged (0.47, 0.46, 0.51 ms).
/// Earlier, on Zen 2 (2026-12-06), the eight-chain compact kernels took 27-28 ms over Float32 rows from memory
/// where the spilling ones took 23; these twelve-chain ones have not been timed there. A constant the compiler folds.
var fewRowsCompactKernelsPay: Bool { swift_attention_target_has_avx512() == 0 }

/// Where Q[r, c] goes in the `.rows` layout's query scratch (R = `rowCount` rows of `depth` columns, R * Dk floats
/// in all): rows in groups of four, each group interleaved as [c / 4][r % 4][c % 4] over the first Dk / 4 * 4
/// columns, followed by the group's leftover columns row by row; the last R % 4 rows row-major after the groups.
@inline(__always)
func fewRowsQueryIndex(_ r: Int, _ c: Int, rowCount: Int, depth dk: Int) -> Int {
    let fullRows = rowCount / 4 * 4
    if r >= fullRows { return r * dk + c }
    let group = r / 4 * 4 * dk
    let dk4 = dk / 4 * 4
    if c < dk4 { return group + c / 4 * 16 + r % 4 * 4 + c % 4 }
    return group + 4 * dk4 + r % 4 * (dk - dk4) + (c - dk4)
}

/// S^T [keyCount, 16] for query rows 0..<rowCount, Q laid out by `fewRowsQueryIndex` at `queries`; lanes
/// rowCount..<16 are set to 0. `compact`: the 16-register kernel (see `fewRowsCompactKernelsPay`).
@inline(__always)
func computeScoresFewRows(
    queries q: UnsafePointer<Float>, rowCount: Int, keys: UnsafePointer<Float>, keyCount: Int, depth dk: Int,
    scores: UnsafeMutablePointer<Float>, prefetch next: TilePrefetch? = nil, compact: Bool = false
) {
    let fullRows = rowCount / 4 * 4
    // The first four-row group stores whole 16-lane S^T rows (zeros past its four lanes); without one, clear first.
    if fullRows == 0 { scores.update(repeating: 0, count: keyCount * 16) }
    var r = 0
    while r < fullRows {
        let group = q + r * dk
        var kk = 0
        /// The next tile's rows kk..<kk + count (contiguous), for the first group to spread over its column steps.
        func nextRows(_ count: Int) -> (UnsafePointer<Float>, Int)? {
            guard r == 0, let next else { return nil }
            return (
                next.keys + kk * next.keyStride, Swift.max(0, Swift.min(count, next.keyCount - kk)) * next.keyDimension
            )
        }
        while compact && kk + 6 <= keyCount {
            let ahead = nextRows(6)
            interleavedScores6(
                group, keys: keys + kk * dk, depth: dk, scores: scores + kk * 16 + r, wholeRows: r == 0,
                prefetch: ahead?.0, prefetchFloats: ahead?.1 ?? 0)
            kk += 6
        }
        while kk + 4 <= keyCount {
            let ahead = nextRows(4)
            interleavedScores4(
                group, keys: keys + kk * dk, depth: dk, scores: scores + kk * 16 + r, wholeRows: r == 0,
                prefetch: ahead?.0, prefetchFloats: ahead?.1 ?? 0, splitsChains: !compact)
            kk += 4
        }
        while kk < keyCount {
            if r == 0, let next { next.prefetchKeyRow(kk) }
            interleavedScores(group, key: keys + kk * dk, depth: dk, scores: scores + kk * 16 + r, wholeRow: r == 0)
            kk += 1
        }
        r += 4
    }
    // Rows left over (all of them when R < 4): one row against four keys at a time.
    let leftoverPrefetch = fullRows == 0 ? next : nil
    for r in fullRows..<rowCount {
        let row = q + r * dk
        var kk = 0
        while kk + 4 <= keyCount {
            if r == 0, let leftoverPrefetch { for i in 0..<4 { leftoverPrefetch.prefetchKeyRow(kk + i) } }
            let key = keys + kk * dk
            let sums = dotProducts(row, row, row, row, key, key + dk, key + 2 * dk, key + 3 * dk, depth: dk)
            for i in 0..<4 { scores[(kk + i) * 16 + r] = sums[i] }
            kk += 4
        }
        while kk < keyCount {
            if r == 0, let leftoverPrefetch { leftoverPrefetch.prefetchKeyRow(kk) }
            scores[kk * 16 + r] = dotProduct(row, keys + kk * dk, count: dk)
            kk += 1
        }
    }
    next?.prefetchKeyRows(from: keyCount)
}

/// The stored formats whose rows the four-row decode kernels read without decoding them: keys in
/// `scoresFromStoredRows`, values in `accumulateStoredValues` (see `RowCodec.directRows`).
enum DirectRows: Equatable {
    /// Dk / b Float32 scales, then Dk Int8 codes (`StorageFormat.int8`); b % 8 == 0.
    case int8(blockSize: Int)
    /// Dk binary16 values (converted in hardware).
    case float16
    /// Dk bfloat16 values (the high halves of Float32s).
    case bfloat16
}

/// S^T [keyCount, 16] for four query rows, Q row-major at `queries` (4 x Dk, `FewRows.rowMajorQueries`), against
/// key rows as the cache stores them (`rowStride` bytes apart, in `format`); lanes 4..<16 are set to 0. Each key's
/// values are converted (8-bit codes: code x scale, the decoded value exactly as `RowCodec.decode` makes it) once
/// per eight columns and serve the four rows, with Q read from L1 by the multiply-adds: no decoded key tile is
/// written and read back. Two keys at a time keep eight accumulator chains (four rows x two keys); the row sums are
/// reduced at the end. Needs Dk % 8 == 0. (4-bit rows are decoded instead: converting their nibbles here, eight at a
/// time, measured 2% slower than decoding the tile on Zen 3. Three keys at a time, twelve chains, measured 1.2x
/// slower there: with the converted keys and the Q operands they overflow 16 registers.)
@inline(__always)
func scoresFromStoredRows(
    queries q: UnsafePointer<Float>, rows: UnsafeRawPointer, rowStride: Int, format: DirectRows, keyCount: Int,
    depth dk: Int, scores: UnsafeMutablePointer<Float>, prefetch next: TilePrefetch?
) {
    switch format {
    case .int8(let b):
        storedScores(Int8Rows.self, q, rows, rowStride, keyCount, dk, blockSize: b, scores, next)
    case .float16:
        #if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
            storedScores(Float16Rows.self, q, rows, rowStride, keyCount, dk, blockSize: dk, scores, next)
        #else
            preconditionFailure("Float16 key rows are decoded on this target")
        #endif
    case .bfloat16:
        storedScores(BFloat16Rows.self, q, rows, rowStride, keyCount, dk, blockSize: dk, scores, next)
    }
}

/// How `storedScores2` reads one stored format (a type per format, so each specialization folds `scaled`).
private protocol StoredRowFormat {
    /// Whether rows start with Float32 block scales that multiply their values.
    static var scaled: Bool { get }
    /// Values c ..< c + 8 of a row as Floats (unscaled), from the start of its values (past any scales).
    static func values(_ values: UnsafeRawPointer, _ c: Int) -> SIMD8<Float>
}

private enum Int8Rows: StoredRowFormat {
    static var scaled: Bool { true }
    /// A lane loop LLVM turns into one widening and one conversion.
    @inline(__always) static func values(_ values: UnsafeRawPointer, _ c: Int) -> SIMD8<Float> {
        let codes = (values + c).loadUnaligned(as: SIMD8<Int8>.self)
        var result = SIMD8<Float>()
        for i in 0..<8 { result[i] = Float(codes[i]) }
        return result
    }
}

#if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
    private enum Float16Rows: StoredRowFormat {
        static var scaled: Bool { false }
        /// One vcvtph2ps with F16C, fcvtl on arm64.
        @inline(__always) static func values(_ values: UnsafeRawPointer, _ c: Int) -> SIMD8<Float> {
            let halves = (values + 2 &* c).loadUnaligned(as: SIMD8<Float16>.self)
            var result = SIMD8<Float>()
            for i in 0..<8 { result[i] = Float(halves[i]) }
            return result
        }
    }
#endif

private enum BFloat16Rows: StoredRowFormat {
    static var scaled: Bool { false }
    /// Widened and shifted into the high halves.
    @inline(__always) static func values(_ values: UnsafeRawPointer, _ c: Int) -> SIMD8<Float> {
        let codes = (values + 2 &* c).loadUnaligned(as: SIMD8<UInt16>.self)
        var result = SIMD8<Float>()
        for i in 0..<8 { result[i] = Float(bitPattern: UInt32(codes[i]) &<< 16) }
        return result
    }
}

/// The keys of a tile two at a time (a last odd key as a pair with itself, its copy's scores left unstored), with
/// the next tile's rows prefetched pair by pair.
@inline(__always)
private func storedScores<Rows: StoredRowFormat>(
    _: Rows.Type, _ q: UnsafePointer<Float>, _ rows: UnsafeRawPointer, _ rowStride: Int, _ keyCount: Int, _ dk: Int,
    blockSize b: Int, _ scores: UnsafeMutablePointer<Float>, _ next: TilePrefetch?
) {
    var kk = 0
    while kk < keyCount {
        let pair = kk + 1 < keyCount
        if let next { next.prefetchKeyRows(kk..<(kk + 2)) }
        let row0 = rows + kk * rowStride
        storedScores2(
            Rows.self, q, row0, pair ? row0 + rowStride : row0, depth: dk, blockSize: b, scores: scores + kk * 16,
            pair: pair)
        kk += 2
    }
    next?.prefetchKeyRows(from: keyCount)
}

/// Two keys' scores for four row-major query rows (see `scoresFromStoredRows`), stored at `scores` and, with
/// `pair`, `scores + 16`.
@inline(__always)
private func storedScores2<Rows: StoredRowFormat>(
    _: Rows.Type, _ q: UnsafePointer<Float>, _ row0: UnsafeRawPointer, _ row1: UnsafeRawPointer, depth dk: Int,
    blockSize b: Int, scores: UnsafeMutablePointer<Float>, pair: Bool
) {
    let blocks = dk / b
    let (scales0, scales1) = (row0.assumingMemoryBound(to: Float.self), row1.assumingMemoryBound(to: Float.self))
    let header = Rows.scaled ? 4 * blocks : 0
    let (values0, values1) = (row0 + header, row1 + header)
    var (a0, a1, a2, a3) = (SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>())
    var (b0, b1, b2, b3) = (SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>())
    var c = 0
    for block in 0..<blocks {
        let (s0, s1) =
            Rows.scaled ? (SIMD8(repeating: scales0[block]), SIMD8(repeating: scales1[block])) : (.one, .one)
        let end = c &+ b
        while c < end {
            var (k0, k1) = (Rows.values(values0, c), Rows.values(values1, c))
            if Rows.scaled { (k0, k1) = (k0 * s0, k1 * s1) }
            let (q0, q1, q2, q3) = (load8(q + c), load8(q + dk + c), load8(q + 2 * dk + c), load8(q + 3 * dk + c))
            a0 = multiplyAdd(q0, k0, a0)
            b0 = multiplyAdd(q0, k1, b0)
            a1 = multiplyAdd(q1, k0, a1)
            b1 = multiplyAdd(q1, k1, b1)
            a2 = multiplyAdd(q2, k0, a2)
            b2 = multiplyAdd(q2, k1, b2)
            a3 = multiplyAdd(q3, k0, a3)
            b3 = multiplyAdd(q3, k1, b3)
            c &+= 8
        }
    }
    storeScores(horizontalSums(a0, a1, a2, a3), scores, wholeRow: true)
    if pair { storeScores(horizontalSums(b0, b1, b2, b3), scores + 16, wholeRow: true) }
}

/// Four consecutive floats at `pointer`, repeated in all four 128-bit lanes of a SIMD16.
@inline(__always)
private func broadcast4(_ pointer: UnsafePointer<Float>) -> SIMD16<Float> {
    let x = UnsafeRawPointer(pointer).loadUnaligned(as: SIMD4<Float>.self)
    let pair = SIMD8(lowHalf: x, highHalf: x)
    return SIMD16(lowHalf: pair, highHalf: pair)
}

/// The four row sums of an interleaved accumulator (lanes 4 i ..< 4 i + 4 hold row i's partial sums).
@inline(__always)
private func rowSums(_ a: SIMD16<Float>) -> SIMD4<Float> {
    let pairs = a.evenHalf + a.oddHalf
    return pairs.evenHalf + pairs.oddHalf
}

/// Adds the columns past Dk / 4 * 4 (Dk not a multiple of 4) of a four-row group to `sums`, one key.
@inline(__always)
private func leftoverColumns(
    _ group: UnsafePointer<Float>, key: UnsafePointer<Float>, depth dk: Int, sums: inout SIMD4<Float>
) {
    let dk4 = dk / 4 * 4
    if dk4 == dk { return }
    let tail = group + 4 * dk4
    let width = dk - dk4
    for i in 0..<4 {
        var sum: Float = 0
        for c in 0..<width { sum += tail[i * width + c] * key[dk4 + c] }
        sums[i] += sum
    }
}

/// Scores of one interleaved four-row group against one key, stored at `scores` (lanes 0..<4 of a 16-lane S^T
/// row). Four accumulators over consecutive 16-float stretches of the key, so the key row is read front to back.
@inline(__always)
private func interleavedScores(
    _ group: UnsafePointer<Float>, key: UnsafePointer<Float>, depth dk: Int, scores: UnsafeMutablePointer<Float>,
    wholeRow: Bool
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var c = 0
    var qv = group
    while c + 16 <= dk {
        a0 = multiplyAdd(load16(qv, 0), broadcast4(key + c), a0)
        a1 = multiplyAdd(load16(qv, 16), broadcast4(key + c + 4), a1)
        a2 = multiplyAdd(load16(qv, 32), broadcast4(key + c + 8), a2)
        a3 = multiplyAdd(load16(qv, 48), broadcast4(key + c + 12), a3)
        qv += 64
        c += 16
    }
    while c + 4 <= dk {
        a0 = multiplyAdd(load16(qv, 0), broadcast4(key + c), a0)
        qv += 16
        c += 4
    }
    a0 = (a0 + a1) + (a2 + a3)
    var s0 = rowSums(a0)
    leftoverColumns(group, key: key, depth: dk, sums: &s0)
    storeScores(s0, scores, wholeRow: wholeRow)
}

/// Four scores at `scores`; with `wholeRow`, lanes 4..<16 of the 16-lane S^T row are set to 0 in the same store.
@inline(__always)
private func storeScores(_ sums: SIMD4<Float>, _ scores: UnsafeMutablePointer<Float>, wholeRow: Bool) {
    if wholeRow {
        store16(SIMD16(lowHalf: SIMD8(lowHalf: sums, highHalf: .zero), highHalf: .zero), scores, 0)
    } else {
        UnsafeMutableRawPointer(scores).storeBytes(of: sums, as: SIMD4<Float>.self)
    }
}

/// Scores of one interleaved four-row group against four consecutive keys (`depth` floats apart), stored like
/// `interleavedScores` at `scores + 16 i` for key i. Each Q load serves four keys; eight accumulators (two per key,
/// alternating column steps) keep eight independent chains of multiply-adds in flight, or with `splitsChains` false
/// four (one per key: eight chains of 256-bit halves, without spilling 16 registers).
@inline(__always)
private func interleavedScores4(
    _ group: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int, scores: UnsafeMutablePointer<Float>,
    wholeRows: Bool, prefetch: UnsafePointer<Float>?, prefetchFloats: Int, splitsChains: Bool
) {
    let (k0, k1, k2, k3) = (keys, keys + dk, keys + 2 * dk, keys + 3 * dk)
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var b0 = SIMD16<Float>(), b1 = SIMD16<Float>(), b2 = SIMD16<Float>(), b3 = SIMD16<Float>()
    var c = 0
    var qv = group
    // Two 64-byte lines of the prefetch range per column step: 4 Dk floats over Dk / 8 steps.
    var ahead = KeyRowPrefetch(prefetch, floats: prefetchFloats)
    while c + 8 <= dk {
        ahead.step(lines: 2)
        let q0 = load16(qv, 0)
        a0 = multiplyAdd(q0, broadcast4(k0 + c), a0)
        a1 = multiplyAdd(q0, broadcast4(k1 + c), a1)
        a2 = multiplyAdd(q0, broadcast4(k2 + c), a2)
        a3 = multiplyAdd(q0, broadcast4(k3 + c), a3)
        let q1 = load16(qv, 16)
        if splitsChains {
            b0 = multiplyAdd(q1, broadcast4(k0 + c + 4), b0)
            b1 = multiplyAdd(q1, broadcast4(k1 + c + 4), b1)
            b2 = multiplyAdd(q1, broadcast4(k2 + c + 4), b2)
            b3 = multiplyAdd(q1, broadcast4(k3 + c + 4), b3)
        } else {
            a0 = multiplyAdd(q1, broadcast4(k0 + c + 4), a0)
            a1 = multiplyAdd(q1, broadcast4(k1 + c + 4), a1)
            a2 = multiplyAdd(q1, broadcast4(k2 + c + 4), a2)
            a3 = multiplyAdd(q1, broadcast4(k3 + c + 4), a3)
        }
        qv += 32
        c += 8
    }
    if c + 4 <= dk {
        let q0 = load16(qv, 0)
        a0 = multiplyAdd(q0, broadcast4(k0 + c), a0)
        a1 = multiplyAdd(q0, broadcast4(k1 + c), a1)
        a2 = multiplyAdd(q0, broadcast4(k2 + c), a2)
        a3 = multiplyAdd(q0, broadcast4(k3 + c), a3)
    }
    ahead.finish()
    let sums = keyRowSums(a0 + b0, a1 + b1, a2 + b2, a3 + b3)
    storeKeyScores(sums, group, keys: keys, depth: dk, scores: scores, wholeRows: wholeRows)
}

/// The next tile's key rows that a multi-key score kernel prefetches: `lines` 64-byte lines per column step, the
/// rest after the loop.
private struct KeyRowPrefetch {
    private let start: UnsafePointer<Float>?
    private let floats: Int
    private var ahead = 0

    @inline(__always) init(_ start: UnsafePointer<Float>?, floats: Int) {
        (self.start, self.floats) = (start, floats)
    }

    @inline(__always) mutating func step(lines: Int) {
        guard let start, ahead < floats else { return }
        for line in 0..<lines { prefetchToL2(UnsafeRawPointer(start + ahead + 16 * line)) }
        ahead += 16 * lines
    }

    @inline(__always) func finish() {
        if let start { prefetchToL2(start + ahead, count: floats - ahead) }
    }
}

/// Stores four keys' row sums (lane 4 i + r: key i, row r, as `keyRowSums` gives them) at `scores + 16 i`, with
/// the group's leftover columns added.
@inline(__always)
private func storeKeyScores(
    _ sums: SIMD16<Float>, _ group: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int,
    scores: UnsafeMutablePointer<Float>, wholeRows: Bool, count: Int = 4
) {
    for i in 0..<count {
        var part = quarter(sums, i)
        leftoverColumns(group, key: keys + i * dk, depth: dk, sums: &part)
        storeScores(part, scores + 16 * i, wholeRow: wholeRows)
    }
}

/// Six keys with one accumulator each (twelve independent chains of 256-bit halves, within 16 registers with the
/// Q stretch and a broadcast key): the compact score kernel's main step. Each key's sums are formed in the same
/// order as `interleavedScores4` without `splitsChains`, so a key's score does not depend on which of the two
/// kernels computed it. Prefetches three lines of the range per column step (6 Dk floats over Dk / 8 steps).
@inline(__always)
private func interleavedScores6(
    _ group: UnsafePointer<Float>, keys: UnsafePointer<Float>, depth dk: Int, scores: UnsafeMutablePointer<Float>,
    wholeRows: Bool, prefetch: UnsafePointer<Float>?, prefetchFloats: Int
) {
    let (k0, k1, k2, k3, k4, k5) = (keys, keys + dk, keys + 2 * dk, keys + 3 * dk, keys + 4 * dk, keys + 5 * dk)
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>()
    var a3 = SIMD16<Float>(), a4 = SIMD16<Float>(), a5 = SIMD16<Float>()
    var c = 0
    var qv = group
    var ahead = KeyRowPrefetch(prefetch, floats: prefetchFloats)
    while c + 8 <= dk {
        ahead.step(lines: 3)
        let q0 = load16(qv, 0)
        a0 = multiplyAdd(q0, broadcast4(k0 + c), a0)
        a1 = multiplyAdd(q0, broadcast4(k1 + c), a1)
        a2 = multiplyAdd(q0, broadcast4(k2 + c), a2)
        a3 = multiplyAdd(q0, broadcast4(k3 + c), a3)
        a4 = multiplyAdd(q0, broadcast4(k4 + c), a4)
        a5 = multiplyAdd(q0, broadcast4(k5 + c), a5)
        let q1 = load16(qv, 16)
        a0 = multiplyAdd(q1, broadcast4(k0 + c + 4), a0)
        a1 = multiplyAdd(q1, broadcast4(k1 + c + 4), a1)
        a2 = multiplyAdd(q1, broadcast4(k2 + c + 4), a2)
        a3 = multiplyAdd(q1, broadcast4(k3 + c + 4), a3)
        a4 = multiplyAdd(q1, broadcast4(k4 + c + 4), a4)
        a5 = multiplyAdd(q1, broadcast4(k5 + c + 4), a5)
        qv += 32
        c += 8
    }
    if c + 4 <= dk {
        let q0 = load16(qv, 0)
        a0 = multiplyAdd(q0, broadcast4(k0 + c), a0)
        a1 = multiplyAdd(q0, broadcast4(k1 + c), a1)
        a2 = multiplyAdd(q0, broadcast4(k2 + c), a2)
        a3 = multiplyAdd(q0, broadcast4(k3 + c), a3)
        a4 = multiplyAdd(q0, broadcast4(k4 + c), a4)
        a5 = multiplyAdd(q0, broadcast4(k5 + c), a5)
    }
    ahead.finish()
    storeKeyScores(keyRowSums(a0, a1, a2, a3), group, keys: keys, depth: dk, scores: scores, wholeRows: wholeRows)
    storeKeyScores(
        keyRowSums(a4, a5, a4, a5), group, keys: k4, depth: dk, scores: scores + 64, wholeRows: wholeRows, count: 2)
}

/// The row sums of four interleaved accumulators x_i (key i; lanes 4 r ..< 4 r + 4 hold row r's partial sums):
/// lane 4 i + r of the result is key i's score for row r. Two pairings within 128-bit lanes and one permutation.
@inline(__always)
private func keyRowSums(
    _ x0: SIMD16<Float>, _ x1: SIMD16<Float>, _ x2: SIMD16<Float>, _ x3: SIMD16<Float>
) -> SIMD16<Float> {
    // Per 128-bit lane r: [x0 p0 + p2, x1 p0 + p2, x0 p1 + p3, x1 p1 + p3], and the same for x2, x3.
    let s01 = pairLanes(x0, x1, 0, 1) + pairLanes(x0, x1, 2, 3)
    let s23 = pairLanes(x2, x3, 0, 1) + pairLanes(x2, x3, 2, 3)
    // Per lane r: the four keys' row-r sums.
    let v =
        SIMD16(
            s01[0], s01[1], s23[0], s23[1], s01[4], s01[5], s23[4], s23[5], s01[8], s01[9], s23[8], s23[9],
            s01[12], s01[13], s23[12], s23[13])
        + SIMD16(
            s01[2], s01[3], s23[2], s23[3], s01[6], s01[7], s23[6], s23[7], s01[10], s01[11], s23[10], s23[11],
            s01[14], s01[15], s23[14], s23[15])
    return SIMD16(v[0], v[4], v[8], v[12], v[1], v[5], v[9], v[13], v[2], v[6], v[10], v[14], v[3], v[7], v[11], v[15])
}

/// In every 128-bit lane L: [x[4 L + i], y[4 L + i], x[4 L + j], y[4 L + j]].
@inline(__always)
private func pairLanes(_ x: SIMD16<Float>, _ y: SIMD16<Float>, _ i: Int, _ j: Int) -> SIMD16<Float> {
    SIMD16(
        x[i], y[i], x[j], y[j], x[4 + i], y[4 + i], x[4 + j], y[4 + j], x[8 + i], y[8 + i], x[8 + j], y[8 + j],
        x[12 + i], y[12 + i], x[12 + j], y[12 + j])
}

/// Four dot products x_i . y_i of `depth` floats (one query row against four keys).
@inline(__always)
private func dotProducts(
    _ x0: UnsafePointer<Float>, _ x1: UnsafePointer<Float>, _ x2: UnsafePointer<Float>, _ x3: UnsafePointer<Float>,
    _ y0: UnsafePointer<Float>, _ y1: UnsafePointer<Float>, _ y2: UnsafePointer<Float>, _ y3: UnsafePointer<Float>,
    depth dk: Int
) -> SIMD4<Float> {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var c = 0
    while c + 16 <= dk {
        a0 = multiplyAdd(load16(x0, c), load16(y0, c), a0)
        a1 = multiplyAdd(load16(x1, c), load16(y1, c), a1)
        a2 = multiplyAdd(load16(x2, c), load16(y2, c), a2)
        a3 = multiplyAdd(load16(x3, c), load16(y3, c), a3)
        c += 16
    }
    var tail = SIMD4<Float>()
    while c < dk {
        tail += SIMD4(x0[c] * y0[c], x1[c] * y1[c], x2[c] * y2[c], x3[c] * y3[c])
        c += 1
    }
    return horizontalSums(a0, a1, a2, a3) + tail
}

/// The lane sums of four vectors, reduced together: halving all four at once takes about half the shuffles of four
/// separate reductions (one add per halving of 16 to 8 lanes, then two rows per 8-lane register).
@inline(__always)
private func horizontalSums(
    _ a0: SIMD16<Float>, _ a1: SIMD16<Float>, _ a2: SIMD16<Float>, _ a3: SIMD16<Float>
) -> SIMD4<Float> {
    horizontalSums(
        a0.lowHalf + a0.highHalf, a1.lowHalf + a1.highHalf, a2.lowHalf + a2.highHalf, a3.lowHalf + a3.highHalf)
}

/// The lane sums of four 8-lane vectors, as `horizontalSums` reduces them after its first halving.
@inline(__always)
private func horizontalSums(
    _ x0: SIMD8<Float>, _ x1: SIMD8<Float>, _ x2: SIMD8<Float>, _ x3: SIMD8<Float>
) -> SIMD4<Float> {
    // [4 partial sums of x0 | 4 of x1] and [x2 | x3].
    let p01 = SIMD8(lowHalf: x0.lowHalf, highHalf: x1.lowHalf) + SIMD8(lowHalf: x0.highHalf, highHalf: x1.highHalf)
    let p23 = SIMD8(lowHalf: x2.lowHalf, highHalf: x3.lowHalf) + SIMD8(lowHalf: x2.highHalf, highHalf: x3.highHalf)
    // Pairwise within each 128-bit half: [x0, x0, x2, x2 | x1, x1, x3, x3].
    let e =
        SIMD8(p01[0], p01[2], p23[0], p23[2], p01[4], p01[6], p23[4], p23[6])
        + SIMD8(p01[1], p01[3], p23[1], p23[3], p01[5], p01[7], p23[5], p23[7])
    return SIMD4(e[0], e[4], e[2], e[6]) + SIMD4(e[1], e[5], e[3], e[7])
}

/// O [rowCount, Dv] (row-major at `output`) += weighted sums of value rows: row r adds sum_k W[k, r] * V[k, :],
/// with W[k, r] at `weights[k * weightStride + r * rowStride]`: a score stripe has weightStride 16 and rowStride 1;
/// a row-major matrix of per-row weights (linear attention's phi(Q) times its state) has weightStride 1 and
/// rowStride = its row length. With `overwrite` the rows are set to the sums instead (O is not read). `compact`:
/// four rows x 24 columns per pass (x 16 for the rest) instead of x 32 (see `fewRowsCompactKernelsPay`).
@inline(__always)
func accumulateValuesFewRows(
    weights pT: UnsafePointer<Float>, weightStride ws: Int = 16, rowStride rs: Int = 1, rowCount: Int,
    keyCount: Int, values: UnsafePointer<Float>, valueDimension dv: Int, output o: UnsafeMutablePointer<Float>,
    overwrite: Bool = false, prefetch next: TilePrefetch? = nil, compact: Bool = false
) {
    if rowCount < 4, let next {
        for c in stride(from: 0, to: dv, by: 16) { next.prefetchValueColumn(c) }
    }
    var r = 0
    while r + 4 <= rowCount {
        var c = 0
        // Compact: 24-column passes (twelve chains) while the rest stays a multiple of 16 or 24 wide.
        while compact && (dv - c >= 40 || dv - c == 24) {
            valueRows4x24(
                pT + r * rs, weightStride: ws, rowStride: rs, keyCount: keyCount, values: values + c,
                valueStride: dv, out: o + r * dv + c, overwrite: overwrite,
                prefetch: r == 0 ? next.map { $0.values + c } : nil, prefetchCount: next?.keyCount ?? 0,
                prefetchStride: next?.valueStride ?? dv)
            c += 24
        }
        while !compact && c + 32 <= dv {
            valueRows4x32(
                pT + r * rs, weightStride: ws, rowStride: rs, keyCount: keyCount, values: values + c,
                valueStride: dv, out: o + r * dv + c, overwrite: overwrite,
                prefetch: r == 0 ? next.map { $0.values + c } : nil, prefetchCount: next?.keyCount ?? 0,
                prefetchStride: next?.valueStride ?? dv)
            c += 32
        }
        while c + 16 <= dv {
            // The Float32 rows at column c, and the next tile's lines there (by the first four rows' passes).
            var source = FloatValueRows(
                values + c, stride: dv,
                prefetch: ValueRowPrefetch(
                    r == 0 ? next.map { $0.values + c } : nil, rows: next?.keyCount ?? 0,
                    stride: next?.valueStride ?? dv, lines: 1))
            valueRows4(
                pT + r * rs, weightStride: ws, rowStride: rs, keyCount: keyCount, &source, out: o + r * dv + c,
                valueStride: dv, overwrite: overwrite)
            c += 16
        }
        if r == 0, c < dv { next?.prefetchValueColumn(c) }
        valueColumnsTail(
            pT, weightStride: ws, rowStride: rs, rows: r..<(r + 4), keyCount: keyCount, values: values,
            columns: c..<dv, output: o, overwrite: overwrite)
        r += 4
    }
    while r < rowCount {
        var c = 0
        while c + 32 <= dv {
            valueRow1x32(
                pT + r * rs, weightStride: ws, keyCount: keyCount, values: values + c, valueStride: dv,
                out: o + r * dv + c, overwrite: overwrite)
            c += 32
        }
        valueColumnsTail(
            pT, weightStride: ws, rowStride: rs, rows: r..<(r + 1), keyCount: keyCount, values: values,
            columns: c..<dv, output: o, overwrite: overwrite)
        r += 1
    }
}

/// Where the 16-column value kernel `valueRows4` reads one pass's value rows: Float32 rows in place
/// (`FloatValueRows`) or rows as a cache stores them, converted as they load (`StoredValueRows`). The kernel calls
/// `step` once per key (the pass's share of the next tile's prefetch), loads the current row's 16 values, then
/// `advance`s to the next row, and calls `finish` after the last key.
protocol ValueRowSource {
    /// The pass's 16 values of the current row.
    func load16() -> SIMD16<Float>
    mutating func step()
    mutating func advance()
    mutating func finish()
}

/// Float32 value rows `stride` floats apart, from a pass's first column, with the next tile's lines at the same
/// columns prefetched row by row (`ValueRowPrefetch`).
struct FloatValueRows: ValueRowSource {
    private var row: UnsafePointer<Float>
    private let stride: Int
    private var prefetch: ValueRowPrefetch

    @inline(__always) init(_ first: UnsafePointer<Float>, stride: Int, prefetch: ValueRowPrefetch) {
        (row, self.stride, self.prefetch) = (first, stride, prefetch)
    }

    @inline(__always) func load16() -> SIMD16<Float> { AttentionCore.load16(row, 0) }
    @inline(__always) mutating func step() { prefetch.step() }
    @inline(__always) mutating func advance() { row += stride }
    @inline(__always) mutating func finish() { prefetch.finish() }
}

/// Four rows x 16 value columns: out[i * dv ..< i * dv + 16] (+)= sum_k pT[k * ws + i * rs] * V[k, 0..<16], V from
/// `values` (which also prefetches the next tile's lines, see `ValueRowSource`).
@inline(__always)
private func valueRows4<Values: ValueRowSource>(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, rowStride rs: Int, keyCount: Int, _ values: inout Values,
    out: UnsafeMutablePointer<Float>, valueStride dv: Int, overwrite: Bool
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    if !overwrite { (a0, a1, a2, a3) = loadRows4(out, dv) }
    var p = pT
    for _ in 0..<keyCount {
        values.step()
        let vk = values.load16()
        a0 = multiplyAdd(SIMD16<Float>(repeating: p[0]), vk, a0)
        a1 = multiplyAdd(SIMD16<Float>(repeating: p[rs]), vk, a1)
        a2 = multiplyAdd(SIMD16<Float>(repeating: p[2 * rs]), vk, a2)
        a3 = multiplyAdd(SIMD16<Float>(repeating: p[3 * rs]), vk, a3)
        p += ws
        values.advance()
    }
    values.finish()
    storeRows4((a0, a1, a2, a3), out, dv)
}

/// 16 floats of each of four rows `dv` floats apart, from `out` (with `dv` = 16: four consecutive vectors, as the
/// prefill kernels' stripes hold them).
@inline(__always)
func loadRows4(
    _ out: UnsafePointer<Float>, _ dv: Int
) -> (SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>) {
    (load16(out, 0), load16(out, dv), load16(out, 2 * dv), load16(out, 3 * dv))
}

/// Stores `rows` as 16 floats of each of four rows `dv` floats apart, at `out`.
@inline(__always)
func storeRows4(
    _ rows: (SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>), _ out: UnsafeMutablePointer<Float>,
    _ dv: Int
) {
    store16(rows.0, out, 0)
    store16(rows.1, out, dv)
    store16(rows.2, out, 2 * dv)
    store16(rows.3, out, 3 * dv)
}

/// Four rows x 32 value columns: as `valueRows4`, with eight accumulators, so each broadcast weight serves two
/// multiply-adds and eight independent chains are in flight.
@inline(__always)
private func valueRows4x32(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, rowStride rs: Int, keyCount: Int,
    values: UnsafePointer<Float>, valueStride dv: Int, out: UnsafeMutablePointer<Float>, overwrite: Bool,
    prefetch: UnsafePointer<Float>?, prefetchCount: Int, prefetchStride: Int
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var b0 = SIMD16<Float>(), b1 = SIMD16<Float>(), b2 = SIMD16<Float>(), b3 = SIMD16<Float>()
    var ahead = ValueRowPrefetch(prefetch, rows: prefetchCount, stride: prefetchStride, lines: 2)
    if !overwrite {
        (a0, a1, a2, a3) = loadRows4(out, dv)
        (b0, b1, b2, b3) = loadRows4(out + 16, dv)
    }
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        ahead.step()
        let (v0, v1) = (load16(v, 0), load16(v, 16))
        let p0 = SIMD16<Float>(repeating: p[0])
        a0 = multiplyAdd(p0, v0, a0)
        b0 = multiplyAdd(p0, v1, b0)
        let p1 = SIMD16<Float>(repeating: p[rs])
        a1 = multiplyAdd(p1, v0, a1)
        b1 = multiplyAdd(p1, v1, b1)
        let p2 = SIMD16<Float>(repeating: p[2 * rs])
        a2 = multiplyAdd(p2, v0, a2)
        b2 = multiplyAdd(p2, v1, b2)
        let p3 = SIMD16<Float>(repeating: p[3 * rs])
        a3 = multiplyAdd(p3, v0, a3)
        b3 = multiplyAdd(p3, v1, b3)
        p += ws
        v += dv
    }
    ahead.finish()
    storeRows4((a0, a1, a2, a3), out, dv)
    storeRows4((b0, b1, b2, b3), out + 16, dv)
}

/// Four rows x 24 value columns (a SIMD16 and a SIMD8 per row): twelve independent chains of 256-bit halves
/// within 16 registers (the accumulators, the value stretch and a broadcast weight), the compact kernels' main
/// value step. Every output element sums its keys in order, as in the other value kernels. Prefetches the two
/// lines at columns 0 and 16 of each of the next tile's rows (the passes together cover every line of a row).
@inline(__always)
private func valueRows4x24(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, rowStride rs: Int, keyCount: Int,
    values: UnsafePointer<Float>, valueStride dv: Int, out: UnsafeMutablePointer<Float>, overwrite: Bool,
    prefetch: UnsafePointer<Float>?, prefetchCount: Int, prefetchStride: Int
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
    var ahead = ValueRowPrefetch(prefetch, rows: prefetchCount, stride: prefetchStride, lines: 2)
    if !overwrite {
        (a0, a1, a2, a3) = loadRows4(out, dv)
        (b0, b1, b2, b3) = (load8(out + 16), load8(out + dv + 16), load8(out + 2 * dv + 16), load8(out + 3 * dv + 16))
    }
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        ahead.step()
        let (v0, v1) = (load16(v, 0), load8(v + 16))
        let p0 = p[0]
        a0 = multiplyAdd(SIMD16(repeating: p0), v0, a0)
        b0 = multiplyAdd(SIMD8(repeating: p0), v1, b0)
        let p1 = p[rs]
        a1 = multiplyAdd(SIMD16(repeating: p1), v0, a1)
        b1 = multiplyAdd(SIMD8(repeating: p1), v1, b1)
        let p2 = p[2 * rs]
        a2 = multiplyAdd(SIMD16(repeating: p2), v0, a2)
        b2 = multiplyAdd(SIMD8(repeating: p2), v1, b2)
        let p3 = p[3 * rs]
        a3 = multiplyAdd(SIMD16(repeating: p3), v0, a3)
        b3 = multiplyAdd(SIMD8(repeating: p3), v1, b3)
        p += ws
        v += dv
    }
    ahead.finish()
    storeRows4((a0, a1, a2, a3), out, dv)
    store8(b0, out + 16)
    store8(b1, out + dv + 16)
    store8(b2, out + 2 * dv + 16)
    store8(b3, out + 3 * dv + 16)
}

/// O [4, Dv] (row-major at `output`) += sum_k W[k, r] * V[k, :] for four rows, weights in a score stripe (16 floats
/// per key, lane r = row r), value rows as the cache stores them (`rowStride` bytes apart, in `format`): each
/// stretch of eight values is converted in registers as it is loaded (8-bit codes times their block's scale, the
/// value `RowCodec.decode` makes) and serves the four rows, so no decoded value tile is written and read back. The
/// passes are the Float32 kernel `valueRows4` (16 columns) over a `StoredValueRows` source, and every output element
/// sums its keys in order as in the Float32 kernels, so the result is bitwise that of decoding the tile first. Needs
/// Dv % 16 == 0 (`FewRows.readsStoredValues`). The next tile's stored value rows, which are consecutive, are hinted
/// evenly over the passes' key steps (`LinePrefetch`). First measured, with 24-column passes for 16-bit rows and one
/// hint per key step (see `storedValues` for what the present passes gained since), on an AMD EPYC Zen 3 VM (AVX2,
/// 2026-12-07; one token, H_q 32 / H_kv 8, d 128, 32768 keys, the two paths alternated call by call, medians of 40
/// calls each), against decoding the value tile first: Float16 11.9 against 13.6 ms on one thread and 7.2
/// against 8.5 on two; BFloat16 12.6 / 14.9 and 6.5 / 7.6; 8-bit 13.5 / 14.0 and 6.9 / 7.9; outputs bitwise equal.
@inline(__always)
func accumulateStoredValues(
    weights pT: UnsafePointer<Float>, keyCount: Int, rows: UnsafeRawPointer, rowStride: Int, format: DirectRows,
    valueDimension dv: Int, output o: UnsafeMutablePointer<Float>, prefetch next: TilePrefetch?
) {
    switch format {
    case .int8(let b):
        storedValues(Int8Rows.self, pT, keyCount, rows, rowStride, blockSize: b, dv, o, next)
    case .float16:
        #if arch(arm64) || (arch(x86_64) && !canImport(Darwin))
            storedValues(Float16Rows.self, pT, keyCount, rows, rowStride, blockSize: dv, dv, o, next)
        #else
            preconditionFailure("Float16 value rows are decoded on this target")
        #endif
    case .bfloat16:
        storedValues(BFloat16Rows.self, pT, keyCount, rows, rowStride, blockSize: dv, dv, o, next)
    }
}

@inline(__always)
private func storedValues<Rows: StoredRowFormat>(
    _: Rows.Type, _ pT: UnsafePointer<Float>, _ keyCount: Int, _ rows: UnsafeRawPointer, _ rowStride: Int,
    blockSize b: Int, _ dv: Int, _ o: UnsafeMutablePointer<Float>, _ next: TilePrefetch?
) {
    // 16-column passes only, the next tile's lines spread evenly over all their key steps. Zen 3, alternated call
    // by call with 24-column passes for 16-bit rows (the Float32 compact kernels' split) and one hint per key step
    // (32768 keys, medians of 40 calls): Float16 11.7 against 14.1 ms on one thread, 7.4 against 8.1 on two;
    // BFloat16 12.2 / 14.2 and 8.7 / 9.4; 8-bit (already in 16-column passes) 15.3 / 15.9 and 8.3 / 8.8; over
    // 1024 keys, in cache, Float16 0.39 / 0.45 ms. With a converted stretch in registers (and the scale multiply),
    // the 24-column pass's twelve accumulators leave too few registers and spill.
    let passes = dv / 16
    var ahead = LinePrefetch(
        next.map { UnsafeRawPointer($0.values) }, bytes: next.map { 4 * $0.keyCount * $0.valueStride } ?? 0,
        steps: passes * keyCount)
    for pass in 0..<passes {
        var values = StoredValueRows<Rows>(
            rows: rows, rowStride: rowStride, column: 16 * pass, blockSize: b, valueDimension: dv, prefetch: ahead)
        valueRows4(
            pT, weightStride: 16, rowStride: 1, keyCount: keyCount, &values, out: o + 16 * pass, valueStride: dv,
            overwrite: false)
        ahead = values.prefetch
    }
    ahead.finish()
}

/// Stored value rows of one format at a pass's 16 columns, as Floats (8-bit codes times their block's scale, whose
/// index is found once per pass), with the next tile's lines hinted evenly over all passes (`LinePrefetch`, carried
/// from pass to pass).
private struct StoredValueRows<Rows: StoredRowFormat>: ValueRowSource {
    private var row: UnsafeRawPointer
    private let rowStride: Int
    /// The pass's first column, and the bytes of block scales before a row's values.
    private let column: Int
    private let header: Int
    /// The blocks of the pass's columns 0 ..< 8 and 8 ..< 16.
    private let scaleIndices: (Int, Int)
    var prefetch: LinePrefetch

    @inline(__always) init(
        rows: UnsafeRawPointer, rowStride: Int, column: Int, blockSize b: Int, valueDimension dv: Int,
        prefetch: LinePrefetch
    ) {
        (row, self.rowStride, self.column, self.prefetch) = (rows, rowStride, column, prefetch)
        header = Rows.scaled ? 4 * (dv / b) : 0
        scaleIndices = (column / b, (column + 8) / b)
    }

    /// Eight values from column `column + offset`, scaled by block `block`.
    @inline(__always) private func load8(_ offset: Int, block: Int) -> SIMD8<Float> {
        let values = Rows.values(row + header, column &+ offset)
        guard Rows.scaled else { return values }
        return values * SIMD8(repeating: row.load(fromByteOffset: 4 &* block, as: Float.self))
    }

    @inline(__always) func load16() -> SIMD16<Float> {
        SIMD16(lowHalf: load8(0, block: scaleIndices.0), highHalf: load8(8, block: scaleIndices.1))
    }

    @inline(__always) mutating func step() { prefetch.step() }
    @inline(__always) mutating func advance() { row += rowStride }
    @inline(__always) mutating func finish() {}
}

/// Hints the lines of consecutive bytes, spread over a number of steps, and any left at `finish`.
struct LinePrefetch {
    private var line: UnsafeRawPointer?
    private let end: UnsafeRawPointer?
    /// Key steps per hint, and the steps since the last.
    private let every: Int
    private var count = 0

    /// Spreads the lines of `bytes` bytes at `start` over `steps` steps (one hint every steps / lines steps).
    @inline(__always) init(_ start: UnsafeRawPointer?, bytes: Int, steps: Int) {
        (line, end) = (start, start.map { $0 + bytes })
        every = Swift.max(1, steps / Swift.max(1, (bytes + 63) / 64))
    }

    @inline(__always) mutating func step() {
        count &+= 1
        if count < every { return }
        count = 0
        guard let next = line, let end, next < end else { return }
        prefetchToL2(next)
        line = next + 64
    }

    @inline(__always) mutating func finish() {
        guard let end else { return }
        while let next = line, next < end { step() }
    }
}

/// The value kernels' walk over the next tile's rows: one row's lines (16 floats each, at the kernel's columns)
/// per key step, and the rest after the loop, for a next tile longer than this one (a segment's first, clipped
/// tile is followed by a whole one).
struct ValueRowPrefetch {
    private var line: UnsafePointer<Float>?
    private var remaining: Int
    private let stride: Int
    private let lines: Int

    @inline(__always) init(_ first: UnsafePointer<Float>?, rows: Int, stride: Int, lines: Int) {
        (line, remaining, self.stride, self.lines) = (first, first == nil ? 0 : rows, stride, lines)
    }

    /// Prefetches the next row's lines, if any are left.
    @inline(__always) mutating func step() {
        guard remaining > 0, let row = line else { return }
        prefetchToL2(UnsafeRawPointer(row))
        if lines > 1 { prefetchToL2(UnsafeRawPointer(row + 16)) }
        line = row + stride
        remaining -= 1
    }

    /// Prefetches every row left.
    @inline(__always) mutating func finish() {
        while remaining > 0 { step() }
    }
}

/// One row x 32 value columns (two accumulators, so consecutive keys do not wait on each other).
@inline(__always)
private func valueRow1x32(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, keyCount: Int, values: UnsafePointer<Float>,
    valueStride dv: Int, out: UnsafeMutablePointer<Float>, overwrite: Bool
) {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>()
    if !overwrite { (a0, a1) = (load16(out, 0), load16(out, 16)) }
    var p = pT
    var v = values
    for _ in 0..<keyCount {
        let pk = SIMD16<Float>(repeating: p[0])
        a0 = multiplyAdd(pk, load16(v, 0), a0)
        a1 = multiplyAdd(pk, load16(v, 16), a1)
        p += ws
        v += dv
    }
    store16(a0, out, 0)
    store16(a1, out, 16)
}

/// The columns that the vector kernels leave (Dv not a multiple of 16 or 32), one scalar at a time.
@inline(__always)
private func valueColumnsTail(
    _ pT: UnsafePointer<Float>, weightStride ws: Int, rowStride rs: Int, rows: Range<Int>, keyCount: Int,
    values: UnsafePointer<Float>, columns: Range<Int>, output o: UnsafeMutablePointer<Float>, overwrite: Bool
) {
    if columns.isEmpty { return }
    let dv = columns.upperBound
    for r in rows {
        for c in columns {
            var sum: Float = overwrite ? 0 : o[r * dv + c]
            for kk in 0..<keyCount { sum += pT[kk * ws + r * rs] * values[kk * dv + c] }
            o[r * dv + c] = sum
        }
    }
}
