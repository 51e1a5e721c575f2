// KeyValueBuffer: the storage under every key/value cache of the package (KVCache here, RollingKVCache and
// StreamingKVCache in their variant modules).
//
// Layout: keys [batch, heads, capacity, keyDimension] and values [batch, heads, capacity, valueDimension], one
// row per slot, so the slots of one head are contiguous and any run of consecutive slots is a `KeyValueSegment`
// the kernel reads in place. Which slots hold which tokens (append-only, ring, pinned sinks) is the cache's
// business.

/// Slot storage for keys and values of every (batch, key/value head), each row encoded in the buffer's
/// ``StorageFormat``s (a fixed number of bytes per row, see `RowCodec`).
package struct KeyValueBuffer: Sendable {
    package let batch: Int
    package let heads: Int
    package let keyDimension: Int
    package let valueDimension: Int
    package let keyCodec: RowCodec
    package let valueCodec: RowCodec
    /// Slots per head (for a reservation, the slots it has address space for).
    package private(set) var capacity: Int
    /// One past the highest slot ever written (the extent of a reservation's committed pages).
    private var touched = 0
    private var keys: SlotMemory
    private var values: SlotMemory

    /// A buffer of `capacity` slots per head on the heap, or, with `reservingSlots`, an address-space reservation
    /// of at least that many slots (and `capacity`), rounded up so that every head starts on a 2 MiB boundary;
    /// where no reservation can be made, heap storage of `capacity` slots.
    package init(
        batch: Int, heads: Int, keyDimension: Int, valueDimension: Int, capacity: Int, reservingSlots: Int? = nil,
        keyFormat: StorageFormat = .float32, valueFormat: StorageFormat = .float32
    ) {
        self.batch = batch
        self.heads = heads
        self.keyDimension = keyDimension
        self.valueDimension = valueDimension
        keyCodec = RowCodec(keyFormat, dimension: keyDimension)
        valueCodec = RowCodec(valueFormat, dimension: valueDimension)
        (self.capacity, keys, values) = Self.storage(
            regions: batch * heads, rowBytes: (keyCodec.rowBytes, valueCodec.rowBytes), capacity: capacity,
            reservingSlots: reservingSlots)
    }

    /// Key and value storage for `regions` heads of `capacity` slots, reserved when `reservingSlots` is given and
    /// the system grants it (see `init`), and the slots per head it has.
    private static func storage(
        regions: Int, rowBytes: (key: Int, value: Int), capacity: Int, reservingSlots: Int?
    ) -> (capacity: Int, keys: SlotMemory, values: SlotMemory) {
        if let reservingSlots {
            // Slots per head such that a head's rows fill whole huge pages, for keys and for values (both
            // granularities are powers of two, so the larger is a multiple of the smaller).
            func granularity(_ bytes: Int) -> Int {
                var (a, b) = (bytes, SlotMemory.hugePageBytes)
                while b != 0 { (a, b) = (b, a % b) }
                return SlotMemory.hugePageBytes / a
            }
            let unit = Swift.max(granularity(rowBytes.key), granularity(rowBytes.value))
            let slots = (Swift.max(reservingSlots, capacity, 1) + unit - 1) / unit * unit
            if let keys = SlotMemory(reservingBytes: regions * slots * rowBytes.key),
                let values = SlotMemory(reservingBytes: regions * slots * rowBytes.value)
            {
                return (slots, keys, values)
            }
        }
        return (
            capacity, SlotMemory(heapBytes: regions * capacity * rowBytes.key),
            SlotMemory(heapBytes: regions * capacity * rowBytes.value)
        )
    }

    /// Whether the storage is an address-space reservation that grows in place (see `SlotMemory`).
    package var isReserved: Bool { keys.isReserved }

    /// The address of the key storage, which moves only when the storage is replaced (for tests of growth).
    package var keyStorageAddress: UInt { keys.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } }

    /// Bytes of key and value storage: for heap storage all of it; for a reservation, the pages its writes have
    /// reached (what it holds in physical memory, up to a page per head).
    package var bytes: Int {
        guard isReserved else { return keys.byteCount + values.byteCount }
        let page = keys.hugePagesAdvised ? SlotMemory.hugePageBytes : 4096
        func extent(_ rowBytes: Int) -> Int { (touched * rowBytes + page - 1) / page * page }
        return batch * heads * (extent(keyCodec.rowBytes) + extent(valueCodec.rowBytes))
    }

    /// Bytes one token takes in every (batch, key/value head): its key and value rows.
    package var bytesPerToken: Int { batch * heads * (keyCodec.rowBytes + valueCodec.rowBytes) }

    /// Re-lays the storage out with `newCapacity` slots per head, keeping slots 0..<used of every head: a new
    /// reservation (at least `newCapacity` slots) if the buffer is reserved, heap storage otherwise.
    package mutating func resize(to newCapacity: Int, keeping used: Int) {
        let (capacity, keys, values) = Self.storage(
            regions: batch * heads, rowBytes: (keyCodec.rowBytes, valueCodec.rowBytes), capacity: newCapacity,
            reservingSlots: isReserved ? newCapacity : nil)
        relay(from: self.keys, to: keys, rowBytes: keyCodec.rowBytes, capacity: capacity, used: used)
        relay(from: self.values, to: values, rowBytes: valueCodec.rowBytes, capacity: capacity, used: used)
        (self.capacity, self.keys, self.values, touched) = (capacity, keys, values, used)
    }

    /// Copies slots 0..<used of every head from `old` (laid out with `self.capacity` slots per head) to `new`
    /// (`capacity` slots per head).
    private func relay(from old: SlotMemory, to new: SlotMemory, rowBytes: Int, capacity: Int, used: Int) {
        guard used > 0 else { return }
        old.withUnsafeBytes { source in
            new.withUnsafeMutableBytes { target in
                for head in 0..<(batch * heads) {
                    (target.baseAddress! + head * capacity * rowBytes).copyMemory(
                        from: source.baseAddress! + head * self.capacity * rowBytes, byteCount: used * rowBytes)
                }
            }
        }
    }

    /// Before a write to slots `slots`: gives this buffer its own storage if a copy of it shares the storage
    /// (copy-on-write, copying only the slots written so far), records the written extent, and marks a
    /// reservation for huge pages once a head's rows reach 8 MiB.
    private mutating func prepareToWrite(_ slots: Range<Int>) {
        if !isKnownUniquelyReferenced(&keys) || !isKnownUniquelyReferenced(&values) {
            resize(to: capacity, keeping: touched)
        }
        touched = Swift.max(touched, slots.upperBound)
        if isReserved, touched * Swift.max(keyCodec.rowBytes, valueCodec.rowBytes) >= 4 * SlotMemory.hugePageBytes {
            keys.adviseHugePages()
            values.adviseHugePages()
        }
    }

    /// Encodes tokens `rows` of `newKeys` / `newValues` ([batch, heads, n, D], already validated) into consecutive
    /// slots starting at `slot`, for every head.
    package mutating func write(keys newKeys: Tensor, values newValues: Tensor, rows: Range<Int>, toSlot slot: Int) {
        precondition(slot >= 0 && slot + rows.count <= capacity, "slots out of range")
        prepareToWrite(slot..<(slot + rows.count))
        let n = newKeys.shape[2]
        func copy(_ source: Tensor, into storage: SlotMemory, codec: RowCodec) {
            source.withUnsafeBufferPointer { s in
                storage.withUnsafeMutableBytes { t in
                    for head in 0..<(batch * heads) where !rows.isEmpty {
                        codec.encode(
                            s.baseAddress! + (head * n + rows.lowerBound) * codec.dimension, rows: rows.count,
                            into: t.baseAddress! + (head * capacity + slot) * codec.rowBytes)
                    }
                }
            }
        }
        copy(newKeys, into: keys, codec: keyCodec)
        copy(newValues, into: values, codec: valueCodec)
    }

    /// Encodes `tokens` tokens of every head into slots `slot ..< slot + tokens` of a buffer of batch 1 (a paged
    /// cache's block): token t of head h is read at `keys + h * keyStrides.head + t * keyStrides.token` (floats),
    /// and likewise for values. Shapes and ranges are the caller's to have checked.
    package mutating func write(
        slot: Int, tokens: Int, keys newKeys: UnsafePointer<Float>, keyStrides: (head: Int, token: Int),
        values newValues: UnsafePointer<Float>, valueStrides: (head: Int, token: Int)
    ) {
        precondition(batch == 1 && slot >= 0 && slot + tokens <= capacity, "slots out of range")
        prepareToWrite(slot..<(slot + tokens))
        func copy(
            _ source: UnsafePointer<Float>, _ strides: (head: Int, token: Int), into storage: SlotMemory,
            codec: RowCodec
        ) {
            storage.withUnsafeMutableBytes { t in
                for head in 0..<heads {
                    let row = t.baseAddress! + (head * capacity + slot) * codec.rowBytes
                    let from = source + head * strides.head
                    if strides.token == codec.dimension {
                        codec.encode(from, rows: tokens, into: row)
                    } else {
                        for token in 0..<tokens {
                            codec.encode(from + token * strides.token, rows: 1, into: row + token * codec.rowBytes)
                        }
                    }
                }
            }
        }
        copy(newKeys, keyStrides, into: keys, codec: keyCodec)
        copy(newValues, valueStrides, into: values, codec: valueCodec)
    }

    /// Calls `body` with one segment per run: run i covers `runs[i].slots` and starts at logical key position
    /// `runs[i].start`. Empty runs are left out.
    package func withSegments<R>(
        _ runs: [(slots: Range<Int>, start: Int)], _ body: ([KeyValueSegment]) throws -> R
    ) rethrows -> R {
        try keys.withUnsafeBytes { k in
            try values.withUnsafeBytes { v in
                guard let kBase = k.baseAddress, let vBase = v.baseAddress else { return try body([]) }
                let segments = runs.filter { !$0.slots.isEmpty }.map { run in
                    KeyValueSegment(
                        keys: kBase + run.slots.lowerBound * keyCodec.rowBytes,
                        values: vBase + run.slots.lowerBound * valueCodec.rowBytes, keyCodec: keyCodec,
                        valueCodec: valueCodec, keyHeadStride: capacity * keyCodec.rowBytes,
                        valueHeadStride: capacity * valueCodec.rowBytes, heads: heads, start: run.start,
                        count: run.slots.count)
                }
                return try body(segments)
            }
        }
    }

    /// The keys and values of the given slot runs, concatenated in order and decoded, as [batch, heads, n, D]
    /// Float32 tensors.
    package func gather(_ slotRuns: [Range<Int>]) -> (keys: Tensor, values: Tensor) {
        let n = slotRuns.reduce(0) { $0 + $1.count }
        func collect(_ storage: SlotMemory, codec: RowCodec) -> Tensor {
            let width = codec.dimension
            var out = [Float](repeating: 0, count: batch * heads * n * width)
            storage.withUnsafeBytes { source in
                out.withUnsafeMutableBufferPointer { target in
                    var row = 0
                    for head in 0..<(batch * heads) {
                        for run in slotRuns where !run.isEmpty {
                            codec.decode(
                                source.baseAddress! + (head * capacity + run.lowerBound) * codec.rowBytes,
                                rows: run.count, into: target.baseAddress! + row * width)
                            row += run.count
                        }
                    }
                }
            }
            return Tensor(uncheckedShape: [batch, heads, n, width], scalars: out)
        }
        return (collect(keys, codec: keyCodec), collect(values, codec: valueCodec))
    }

    /// Checks that `newKeys` and `newValues` are [batch, heads, n, D] for this buffer and returns n.
    package func validateAppend(keys newKeys: Tensor, values newValues: Tensor) throws -> Int {
        guard newKeys.rank == 4, newKeys.shape[0] == batch, newKeys.shape[1] == heads,
            newKeys.shape[3] == keyDimension
        else {
            throw AttentionError.shapeMismatch(
                argument: "keys", expected: "[\(batch), \(heads), n, \(keyDimension)]", actual: newKeys.shape,
                reason: "appended keys must match the cache's batch, key/value heads and key dimension")
        }
        let n = newKeys.shape[2]
        guard newValues.shape == [batch, heads, n, valueDimension] else {
            throw AttentionError.shapeMismatch(
                argument: "values", expected: "\([batch, heads, n, valueDimension])", actual: newValues.shape,
                reason: "appended values must match the keys' token count and the cache's value dimension")
        }
        return n
    }

    /// Validates the dimensions a cache is created with.
    package static func validateDimensions(batch: Int, heads: Int, keyDimension: Int, valueDimension: Int) throws {
        try AttentionError.require(batch >= 1, "batch", expected: ">= 1", actual: "\(batch)")
        try AttentionError.require(heads >= 1, "keyValueHeads", expected: ">= 1", actual: "\(heads)")
        try AttentionError.require(keyDimension >= 1, "headDimension", expected: ">= 1", actual: "\(keyDimension)")
        try AttentionError.require(
            valueDimension >= 1, "valueDimension", expected: ">= 1", actual: "\(valueDimension)")
    }
}

/// Attention of `queries` over keys held in `parts` (logical positions 0..<cachedCount) followed by `newKeys` /
/// `newValues` (positions cachedCount..<cachedCount + n), read in place. Caches call this before they store the new
/// tokens, so a ring buffer never has to hold more than its window. With `storage.hadamardRotation` the queries are
/// rotated here and the output rotated back; the new keys and values must arrive rotated (the caller stores them).
/// `keyRotation`, when given, gives each segment (cached and new) the rotary rotation its keys get as they load.
package func attentionOverCache(
    queries: Tensor, parts: [CachePart], cachedCount: Int, newKeys: Tensor?, newValues: Tensor?,
    mask: AttentionMask, options: AttentionOptions, storage: CacheStorage = .float32,
    keyRotation: ((KeyValueSegment) -> RowRotation?)? = nil
) throws -> AttentionResult {
    let n = newKeys?.shape[2] ?? 0
    let layout = parts[0].buffer
    let problem = try AttentionProblem(
        queries: queries, cacheBatch: layout.batch, keyValueHeads: layout.heads, keyLength: cachedCount + n,
        keyDimension: layout.keyDimension, valueDimension: layout.valueDimension, mask: mask, options: options)
    let rotatedQueries = storage.rotated(queries)
    func rotating(_ segments: [KeyValueSegment]) -> [KeyValueSegment] {
        guard let keyRotation else { return segments }
        return segments.map { segment in
            var segment = segment
            segment.keyRotation = keyRotation(segment)
            return segment
        }
    }
    var result = try withSegments(of: parts[...]) { cached in
        guard let newKeys, let newValues, n > 0 else {
            return try runAttention(problem, queries: rotatedQueries, segments: rotating(cached))
        }
        return try withKeyValueSegments(keys: newKeys, values: newValues) { fresh in
            let shifted = fresh.map { segment -> KeyValueSegment in
                var segment = segment
                segment.start = cachedCount
                return segment
            }
            return try runAttention(problem, queries: rotatedQueries, segments: rotating(cached + shifted))
        }
    }
    result.output = storage.rotated(result.output)
    return result
}

/// The bookkeeping of a ring of `size` slots starting at slot `base` of a KeyValueBuffer: the last `size` tokens
/// stored, oldest first at `next` once the ring is full. Storing never moves a stored token; reading hands out at
/// most two runs of consecutive slots.
package struct RingSlots: Sendable, Hashable {
    package let base: Int
    package let size: Int
    /// Tokens held (<= size).
    package private(set) var held = 0
    /// The slot offset the next token goes to.
    package private(set) var next = 0

    package init(base: Int, size: Int) {
        self.base = base
        self.size = size
    }

    /// The held tokens' slots, oldest first, as at most two runs, the first at logical position `start`.
    package func runs(start: Int) -> [(slots: Range<Int>, start: Int)] {
        if held < size { return [((base..<(base + held)), start)] }
        let older = (base + next)..<(base + size)
        return [(older, start), ((base..<(base + next)), start + older.count)]
    }

    /// The slot runs of `runs(start:)` without positions, for `KeyValueBuffer.gather`.
    package var slotRuns: [Range<Int>] { runs(start: 0).map(\.slots) }

    /// Stores tokens `rows` of the new keys and values, keeping the last `size` of them: at most two copies, O(1)
    /// per token, no stored token moves.
    package mutating func store(keys: Tensor, values: Tensor, rows: Range<Int>, in buffer: inout KeyValueBuffer) {
        guard size > 0 else { return }
        let kept = Swift.max(rows.lowerBound, rows.upperBound - size)..<rows.upperBound
        let first = Swift.min(kept.count, size - next)
        buffer.write(keys: keys, values: values, rows: kept.lowerBound..<(kept.lowerBound + first), toSlot: base + next)
        buffer.write(keys: keys, values: values, rows: (kept.lowerBound + first)..<kept.upperBound, toSlot: base)
        next = (next + kept.count) % size
        held = Swift.min(size, held + kept.count)
    }

    /// Forgets every token.
    package mutating func removeAll() {
        held = 0
        next = 0
    }
}

/// Throws unless `queries` has one position per appended token: a cache step attends the new tokens' queries, which
/// the masks align with the newest keys.
package func requireOneQueryPerToken(_ queries: Tensor, tokens: Int) throws {
    guard queries.rank == 4, queries.shape[2] == tokens else {
        throw AttentionError.shapeMismatch(
            argument: "queries", expected: "[batch, queryHeads, \(tokens), headDimension]", actual: queries.shape,
            reason: "a cache step takes one query per appended token (\(tokens) keys and values were given)")
    }
}
