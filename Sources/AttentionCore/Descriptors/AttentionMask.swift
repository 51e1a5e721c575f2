// AttentionMask: which keys each query may see.
//
// Positions are indices within the call: query i in 0..<queryLength, key j in 0..<keyLength. Structured masks are
// aligned bottom-right, so that the last query is level with the last key (the decode convention):
// the diagonal key of query i is d(i) = i + keyLength - queryLength.
//
//   causal                 j <= d(i)
//   window(left:right:)    d(i) - left <= j <= d(i) + right        (left keys back, right keys ahead; the diagonal
//                                                                   key itself always counts, so window(left: w,
//                                                                   right: 0) shows w + 1 keys)
//   sinks(count:window:)   j <= d(i) and (j < count or j > d(i) - window)
//                                                                  (StreamingLLM: the first `count` keys plus the
//                                                                   last `window` keys up to and including the
//                                                                   diagonal: a cache of count + window tokens)
//   blockSparse(layout)    j lies in a key block the layout lists for i's query block (head 0 of a per-head layout;
//                          `blockSparseAttention` applies per-head layouts head by head)
//   custom(predicate)      predicate(i, j)
//   intersection(a, b)     a and b

/// Which keys each query position may attend to.
///
/// ```swift
/// let mask: AttentionMask = .intersection(.causal, .custom { query, key in key % 2 == 0 })
/// mask.allows(query: 3, key: 2, queryLength: 4, keyLength: 4)   // true
/// ```
public enum AttentionMask: Sendable {
    /// Every query sees every key.
    case none
    /// Query i sees keys j <= i + keyLength - queryLength (bottom-right aligned).
    case causal
    /// Query i sees keys from `left` before to `right` after its diagonal key, both inclusive. Both must be >= 0.
    case window(left: Int, right: Int)
    /// StreamingLLM visibility: causal, restricted to the first `count` keys (the sink tokens) plus the last
    /// `window` keys up to and including the diagonal. Not to be confused with ``AttentionOptions/sinkLogits``
    /// (learned per-head logits that add to the softmax denominator but are not keys).
    case sinks(count: Int, window: Int)
    /// The key blocks a ``BlockSparseLayout`` lists for each query block. The layout's lengths must equal the call's.
    case blockSparse(BlockSparseLayout)
    /// An arbitrary predicate `(query, key) -> visible`, called with indices within the call. It must be pure:
    /// kernels call it in any order, from any thread, possibly more than once per pair.
    case custom(@Sendable (_ query: Int, _ key: Int) -> Bool)
    /// Visible where both masks are visible.
    indirect case intersection(AttentionMask, AttentionMask)

    /// Whether query `query` may see key `key` in a call with the given sequence lengths.
    public func allows(query: Int, key: Int, queryLength: Int, keyLength: Int) -> Bool {
        if case .custom(let predicate) = self { return predicate(query, key) }
        if case .intersection(let a, let b) = self {
            return a.allows(query: query, key: key, queryLength: queryLength, keyLength: keyLength)
                && b.allows(query: query, key: key, queryLength: queryLength, keyLength: keyLength)
        }
        return visibleSpans(query: query, queryLength: queryLength, keyLength: keyLength)
            .contains { $0.contains(key) }
    }

    /// Throws unless every window and count is >= 0.
    package func validate(argument: String = "mask") throws {
        switch self {
        case .none, .causal, .custom:
            return
        case .window(let left, let right):
            try AttentionError.require(
                left >= 0, "\(argument) window left", expected: ">= 0", actual: "\(left)")
            try AttentionError.require(
                right >= 0, "\(argument) window right", expected: ">= 0", actual: "\(right)")
        case .sinks(let count, let window):
            try AttentionError.require(
                count >= 0, "\(argument) sinks count", expected: ">= 0", actual: "\(count)")
            try AttentionError.require(
                window >= 0, "\(argument) sinks window", expected: ">= 0", actual: "\(window)")
        case .intersection(let a, let b):
            try a.validate(argument: argument)
            try b.validate(argument: argument)
        case .blockSparse:
            return
        }
    }

    /// Throws unless every block-sparse layout in the mask was made for these lengths.
    package func validate(argument: String = "mask", queryLength: Int, keyLength: Int) throws {
        switch self {
        case .blockSparse(let layout):
            guard layout.queryLength == queryLength, layout.keyLength == keyLength else {
                throw AttentionError.invalidValue(
                    argument: "\(argument) layout",
                    expected: "a layout for queryLength \(queryLength) and keyLength \(keyLength)",
                    actual: "a layout for queryLength \(layout.queryLength) and keyLength \(layout.keyLength)")
            }
        case .intersection(let a, let b):
            try a.validate(argument: argument, queryLength: queryLength, keyLength: keyLength)
            try b.validate(argument: argument, queryLength: queryLength, keyLength: keyLength)
        case .none, .causal, .window, .sinks, .custom:
            return
        }
    }

    /// Whether visibility needs a per-element `custom` predicate call on top of `visibleSpans`.
    package var hasPredicate: Bool {
        switch self {
        case .none, .causal, .window, .sinks, .blockSparse: return false
        case .custom: return true
        case .intersection(let a, let b): return a.hasPredicate || b.hasPredicate
        }
    }

    /// Sorted, disjoint key ranges that contain every visible key of query `query`. Exact for structured masks;
    /// for masks with a predicate, keys in the spans must still be tested with `allows`.
    package func visibleSpans(query: Int, queryLength: Int, keyLength: Int) -> [Range<Int>] {
        // Every window is clamped to the total length first so the arithmetic below cannot overflow.
        let limit = queryLength + keyLength
        let diagonal = query + keyLength - queryLength
        func span(_ lower: Int, _ upper: Int) -> [Range<Int>] {
            let lower = Swift.max(lower, 0)
            let upper = Swift.min(upper, keyLength)
            return lower < upper ? [lower..<upper] : []
        }
        switch self {
        case .none, .custom:
            return span(0, keyLength)
        case .causal:
            return span(0, diagonal + 1)
        case .window(let left, let right):
            return span(diagonal - Swift.min(left, limit), diagonal + Swift.min(right, limit) + 1)
        case .sinks(let count, let window):
            let sinks = span(0, Swift.min(Swift.min(count, limit), diagonal + 1))
            let recent = span(diagonal - Swift.min(window, limit) + 1, diagonal + 1)
            return unionOfSpans(sinks + recent)
        case .blockSparse(let layout):
            return layout.visibleSpans(query: query)
        case .intersection(let a, let b):
            return intersectionOfSpans(
                a.visibleSpans(query: query, queryLength: queryLength, keyLength: keyLength),
                b.visibleSpans(query: query, queryLength: queryLength, keyLength: keyLength))
        }
    }
}

/// Restricts sorted, disjoint `spans` to the keys in `runs` (sorted, disjoint), in place when `runs` is one range
/// (key padding by lengths or ranges), so that the common case allocates nothing.
private func restrictSpans(_ spans: inout [Range<Int>], to runs: [Range<Int>]) {
    guard runs.count == 1 else { return spans = intersectionOfSpans(spans, runs) }
    for index in spans.indices { spans[index] = spans[index].clamped(to: runs[0]) }
    spans.removeAll { $0.isEmpty }
}

/// The keys in both of two sorted, disjoint span lists, as a sorted, disjoint list (touching results merged).
package func intersectionOfSpans(_ first: [Range<Int>], _ second: [Range<Int>]) -> [Range<Int>] {
    var result: [Range<Int>] = []
    var (i, j) = (0, 0)
    while i < first.count && j < second.count {
        let (x, y) = (first[i], second[j])
        let lower = Swift.max(x.lowerBound, y.lowerBound)
        let upper = Swift.min(x.upperBound, y.upperBound)
        if lower < upper {
            if let last = result.last, last.upperBound == lower {
                result[result.count - 1] = last.lowerBound..<upper
            } else {
                result.append(lower..<upper)
            }
        }
        if x.upperBound <= y.upperBound { i += 1 } else { j += 1 }
    }
    return result
}

/// Sorts ranges and merges the ones that overlap or touch.
private func unionOfSpans(_ spans: [Range<Int>]) -> [Range<Int>] {
    var merged: [Range<Int>] = []
    for span in spans.sorted(by: { $0.lowerBound < $1.lowerBound }) where !span.isEmpty {
        if let last = merged.last, span.lowerBound <= last.upperBound {
            merged[merged.count - 1] = last.lowerBound..<Swift.max(last.upperBound, span.upperBound)
        } else {
            merged.append(span)
        }
    }
    return merged
}

/// How much of a (query block, key block) tile a mask lets through.
package enum TileCoverage: Sendable, Hashable {
    /// Every pair is visible: the tile runs without a per-element test.
    case full
    /// Some pairs are visible: the tile runs and masks element by element.
    case partial
    /// No pair is visible: the tile is skipped.
    case empty
}

extension AttentionMask {
    /// The coverage of the tile `queries x keys` in a call with the given lengths. Exact for structured masks; a
    /// tile that a `custom` predicate touches is `.partial` unless the structured part already makes it `.empty`.
    ///
    /// - Complexity: O(queries.count) span computations.
    package func coverage(queries: Range<Int>, keys: Range<Int>, queryLength: Int, keyLength: Int) -> TileCoverage {
        let spans = MaskRowSpans(mask: self, queries: queries, queryLength: queryLength, keyLength: keyLength)
        return spans.coverage(keys: keys)
    }
}

/// The visible key spans of a block of consecutive query rows, computed once and reused for every key tile.
package struct MaskRowSpans {
    /// spans[row] are the sorted, disjoint visible key ranges of query `queries.lowerBound + row`.
    package let spans: [[Range<Int>]]
    /// Whether a `custom` predicate must still be consulted inside the spans.
    package let hasPredicate: Bool
    /// The smallest range holding every row's visible keys (empty if no row sees a key).
    package let keyHull: Range<Int>
    /// Keys that every row sees (the intersection of the rows' spans when each row has one span and there is no
    /// predicate; otherwise empty). A tile inside it is `.full` without looking at the rows.
    package let commonlyVisible: Range<Int>
    /// The rows' spans when every row has the same ones and there is no predicate (a block-sparse layout over a
    /// query block, or no mask): coverage is then a binary search over them instead of a walk over the rows.
    package let uniform: [Range<Int>]?

    /// - Parameters:
    ///   - keyRuns: when set, the only keys any row may see (a sequence's real keys, see ``SequencePadding``), sorted
    ///     and disjoint; each row's spans are intersected with them.
    ///   - queryRuns: when set, the real query rows (sorted, disjoint); every other row sees no key.
    package init(
        mask: AttentionMask, queries: Range<Int>, queryLength: Int, keyLength: Int, keyRuns: [Range<Int>]? = nil,
        queryRuns: [Range<Int>]? = nil
    ) {
        // Padding first: rows that are padding, or a sequence without real keys, see nothing and cost no span
        // computation (a padded batch's blocks past a sequence's end are all such rows).
        let realRows = queryRuns.map { intersectionOfSpans([queries], $0) }
        func isReal(_ query: Int) -> Bool { realRows?.contains { $0.contains(query) } ?? true }
        if realRows?.isEmpty == true || keyRuns?.isEmpty == true {
            spans = Array(repeating: [], count: queries.count)
        } else if case .blockSparse(let layout) = mask, !queries.isEmpty,
            queries.lowerBound / layout.queryBlock == (queries.upperBound - 1) / layout.queryBlock
        {
            // Every row of one layout block sees the same blocks: compute them once (the copies share storage).
            var shared = layout.visibleSpans(query: queries.lowerBound)
            if let keyRuns { restrictSpans(&shared, to: keyRuns) }
            spans = queries.map { isReal($0) ? shared : [] }
        } else {
            spans = queries.map { query in
                guard isReal(query) else { return [] }
                var visible = mask.visibleSpans(query: query, queryLength: queryLength, keyLength: keyLength)
                if let keyRuns { restrictSpans(&visible, to: keyRuns) }
                return visible
            }
        }
        hasPredicate = mask.hasPredicate
        let lower = spans.compactMap { $0.first?.lowerBound }.min() ?? 0
        let upper = spans.compactMap { $0.last?.upperBound }.max() ?? 0
        keyHull = lower < upper ? lower..<upper : 0..<0
        var common = 0..<0
        if !hasPredicate, !spans.isEmpty, spans.allSatisfy({ $0.count == 1 }) {
            let from = spans.map { $0[0].lowerBound }.max()!
            let to = spans.map { $0[0].upperBound }.min()!
            if from < to { common = from..<to }
        }
        commonlyVisible = common
        let rows = spans
        uniform = !hasPredicate && !rows.isEmpty && rows.allSatisfy { $0 == rows[0] } ? rows[0] : nil
    }

    /// The coverage of `keys` for these rows. O(1) for tiles inside `commonlyVisible` (the bulk of a causal or
    /// windowed row block), O(rows) otherwise.
    package func coverage(keys: Range<Int>) -> TileCoverage {
        if !keys.isEmpty && keys.lowerBound >= commonlyVisible.lowerBound
            && keys.upperBound <= commonlyVisible.upperBound
        {
            return .full
        }
        if let uniform {
            // The first span that ends after the tile starts.
            var (low, high) = (0, uniform.count)
            while low < high {
                let middle = (low + high) / 2
                if uniform[middle].upperBound <= keys.lowerBound { low = middle + 1 } else { high = middle }
            }
            guard low < uniform.count, uniform[low].lowerBound < keys.upperBound, !keys.isEmpty else { return .empty }
            return uniform[low].lowerBound <= keys.lowerBound && uniform[low].upperBound >= keys.upperBound
                ? .full : .partial
        }
        var anyVisible = false
        var allVisible = true
        for rowSpans in spans {
            var covered = 0
            for span in rowSpans where span.overlaps(keys) {
                covered += span.clamped(to: keys).count
            }
            anyVisible = anyVisible || covered > 0
            allVisible = allVisible && covered == keys.count
        }
        if !anyVisible { return .empty }
        return allVisible && !hasPredicate ? .full : .partial
    }
}
