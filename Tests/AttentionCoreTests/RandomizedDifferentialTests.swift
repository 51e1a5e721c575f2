import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

/// Random configurations (shapes, grouping, masks, kernels and block sizes, score options, key padding, threads)
/// checked against the Float64 reference, with NaN and infinity in the keys and values a -inf bias or key padding
/// hides. 300 cases by default; set ATTENTION_FUZZ_CASES (e.g. 5000) for more, and
/// ATTENTION_FUZZ_SEED to replay. Every failure prints a one-line reproducer: the seed and the configuration.
final class RandomizedDifferentialTests: XCTestCase {
    struct Configuration: CustomStringConvertible {
        var seed: UInt64
        var batch = 1, keyValueHeads = 1, group = 1, queryLength = 1, keyLength = 1, keyDimension = 1,
            valueDimension = 1
        var mask = AttentionMask.none
        var maskName = "none"
        var options = AttentionOptions()
        var optionNames: [String] = []
        /// Keys no row of batch entry b may see (a -inf bias column, key padding), whose keys and values the test
        /// fills with NaN and infinity: the output must not change.
        var hiddenKeys: [[Int]]? = nil
        /// Run as a packed batch (`packedAttention`): batch entry b becomes a sequence of its first
        /// `packedLengths[b]` queries and keys.
        var packedLengths: [(queries: Int, keys: Int)]? = nil

        var description: String {
            "seed=\(seed) B=\(batch) Hkv=\(keyValueHeads) G=\(group) Nq=\(queryLength) Nk=\(keyLength) Dk=\(keyDimension) "
                + "Dv=\(valueDimension) mask=\(maskName) kernel=\(options.kernel) threads=\(options.threads ?? 0) "
                + "options=[\(optionNames.joined(separator: ","))]"
                + (packedLengths.map { " packed=\($0.map { "\($0.queries)x\($0.keys)" })" } ?? "")
        }
    }

    /// A configuration drawn from `seed` alone, so that the seed reproduces it.
    static func configuration(seed: UInt64) -> Configuration {
        var random = SplitMix64(seed: seed)
        func pick(_ range: ClosedRange<Int>) -> Int { range.lowerBound + Int(random.next() % UInt64(range.count)) }
        func chance(_ percent: Int) -> Bool { pick(0...99) < percent }
        var c = Configuration(seed: seed)
        c.batch = pick(1...2)
        c.keyValueHeads = pick(1...3)
        c.group = [1, 1, 2, 3, 4, 8][pick(0...5)]
        c.queryLength = chance(10) ? pick(0...1) : pick(1...70)
        c.keyLength = chance(10) ? pick(0...1) : pick(1...90)
        c.keyDimension = [1, 3, 8, 16, 17, 32, 64][pick(0...6)]
        c.valueDimension = chance(70) ? c.keyDimension : pick(1...40)
        let left = pick(0...20), right = pick(0...5), count = pick(0...6), window = pick(1...30), modulus = pick(2...5)
        let masks: [(String, AttentionMask)] = [
            ("none", .none), ("causal", .causal), ("window(\(left),\(right))", .window(left: left, right: right)),
            ("sinks(\(count),\(window))", .sinks(count: count, window: window)),
            ("custom(q+k%\(modulus))", .custom { q, k in (q + k) % modulus != 0 }),
            ("causal∩custom(k%\(modulus))", .intersection(.causal, .custom { _, k in k % modulus != 1 })),
        ]
        (c.maskName, c.mask) = masks[pick(0...(masks.count - 1))]
        let heads = c.keyValueHeads * c.group
        let rows = c.group * c.queryLength
        switch pick(0...3) {
        case 0: c.options.kernel = .automatic
        case 1: c.options.kernel = .naive
        case 2:
            c.options.kernel = .blockwise(
                queryBlock: [1, 5, 16, 64][pick(0...3)], keyBlock: [1, 7, 32, 64][pick(0...3)])
        default: c.options.kernel = rows <= 16 ? .decode(keysPerSplit: [nil, 1, 40][pick(0...2)]) : .automatic
        }
        c.options.threads = pick(1...3)
        if chance(20) {
            c.options.scale = Float(pick(1...20)) / 10
            c.optionNames.append("scale")
        }
        if chance(20) {
            c.options.softcap = Float(pick(1...30))
            c.optionNames.append("softcap")
        }
        if chance(20) {
            c.options.alibiSlopes = (0..<heads).map { Float($0 + 1) / 16 }
            c.optionNames.append("alibi")
        }
        if chance(20) {
            c.options.sinkLogits = (0..<heads).map { Float($0 % 3) - 1 }
            c.optionNames.append("sinkLogits")
        }
        if chance(15) {
            var bias = try? Tensor.randomNormal(
                shape: [
                    chance(50) ? 1 : c.batch, chance(50) ? 1 : heads, chance(30) ? 1 : c.queryLength, c.keyLength,
                ], seed: seed)
            c.optionNames.append("bias")
            if chance(50), c.keyLength > 0, var removed = bias {
                // One key removed by a -inf bias for every row; its key and value get poisoned (see `poison`).
                let key = pick(0...(c.keyLength - 1))
                removed.withUnsafeMutableBufferPointer { scalars in
                    for index in stride(from: key, to: scalars.count, by: c.keyLength) { scalars[index] = -.infinity }
                }
                bias = removed
                c.hiddenKeys = (0..<c.batch).map { _ in [key] }
                c.optionNames.append("-inf bias on key \(key)")
            }
            c.options.bias = bias
        }
        if chance(15) {
            // Key padding in one of its three forms, with NaN and infinity in the padded keys and values.
            let lengths = (0..<c.batch).map { _ in pick(0...c.keyLength) }
            switch pick(0...2) {
            case 0:
                c.options.keyPadding = .lengths(lengths)
            case 1:
                c.options.keyPadding = .ranges(lengths.map { length in (c.keyLength - length)..<c.keyLength })
            default:
                c.options.keyPadding = .realTokens((0..<(c.batch * c.keyLength)).map { _ in chance(70) })
            }
            c.optionNames.append("keyPadding \(c.options.keyPadding!)")
            let padded = (0..<c.batch).map { b in
                (0..<c.keyLength).filter {
                    !isRealToken(c.options.keyPadding, batch: b, position: $0, length: c.keyLength)
                }
            }
            c.hiddenKeys = zip(c.hiddenKeys ?? padded.map { _ in [] }, padded).map { $0 + $1 }
        }
        if chance(10) {
            c.options.queryPadding = .lengths((0..<c.batch).map { _ in pick(0...c.queryLength) })
            c.optionNames.append("queryPadding \(c.options.queryPadding!)")
        }
        if chance(10) {
            c.options.headMasks = (0..<heads).map { $0 % 2 == 0 ? .none : .window(left: 4, right: 1) }
            c.optionNames.append("headMasks")
        }
        let padded = c.options.bias != nil || c.options.keyPadding != nil || c.options.queryPadding != nil
        if chance(15), !padded, c.options.kernel != .naive {
            // A packed batch of the entries' prefixes: lengths around 0, 1 and the full length.
            c.packedLengths = (0..<c.batch).map { _ in (pick(0...c.queryLength), pick(0...c.keyLength)) }
        }
        return c
    }

    /// Runs `c` as a packed batch and checks every sequence against its own reference.
    static func packedFailures(
        _ c: Configuration, _ inputs: (queries: Tensor, keys: Tensor, values: Tensor)
    ) throws -> [String] {
        let lengths = c.packedLengths!
        let sequences = try PackedSequences(queryLengths: lengths.map(\.queries), keyLengths: lengths.map(\.keys))
        func packed(_ tensor: Tensor, _ length: (Int) -> Int) throws -> Tensor {
            let scalars = (0..<c.batch).flatMap { packedRows(tensor, batch: $0, 0..<length($0)) }
            let (heads, width) = (tensor.shape[1], tensor.shape[3])
            return try Tensor(shape: [scalars.count / (heads * width), heads, width], scalars: scalars)
        }
        let q = try packed(inputs.queries) { lengths[$0].queries }
        let k = try packed(inputs.keys) { lengths[$0].keys }
        let v = try packed(inputs.values) { lengths[$0].keys }
        let result = try packedAttention(
            queries: q, keys: k, values: v, sequences: sequences, mask: c.mask, options: c.options)
        return packedReferenceFailures(
            result, queries: q, keys: k, values: v, sequences: sequences, mask: c.mask, options: c.options)
    }

    /// NaN in column 0 of each hidden key and +infinity in the last column of its value, every key/value head.
    static func poison(
        _ inputs: inout (queries: Tensor, keys: Tensor, values: Tensor), keys hidden: [[Int]], heads: Int
    ) {
        let (nk, dk, dv) = (inputs.keys.shape[2], inputs.keys.shape[3], inputs.values.shape[3])
        for (b, keys) in hidden.enumerated() {
            for h in 0..<heads {
                for j in keys {
                    let row = (b * heads + h) * nk + j
                    inputs.keys.withUnsafeMutableBufferPointer { $0[row * dk] = .nan }
                    inputs.values.withUnsafeMutableBufferPointer { $0[row * dv + dv - 1] = .infinity }
                }
            }
        }
    }

    func testRandomConfigurationsMatchTheReference() throws {
        let environment = ProcessInfo.processInfo.environment
        let cases = environment["ATTENTION_FUZZ_CASES"].flatMap(Int.init) ?? 300
        let first = environment["ATTENTION_FUZZ_SEED"].flatMap(UInt64.init) ?? 1
        var failures = 0
        for seed in first..<(first + UInt64(cases)) {
            let c = Self.configuration(seed: seed)
            var inputs = try attentionInputs(
                batch: c.batch, queryHeads: c.keyValueHeads * c.group, keyValueHeads: c.keyValueHeads,
                queryLength: c.queryLength, keyLength: c.keyLength, headDimension: c.keyDimension,
                valueDimension: c.valueDimension, seed: seed)
            if let hidden = c.hiddenKeys { Self.poison(&inputs, keys: hidden, heads: c.keyValueHeads) }
            do {
                if c.packedLengths != nil {
                    let problems = try Self.packedFailures(c, inputs)
                    if !problems.isEmpty {
                        failures += 1
                        XCTFail(
                            "reproduce with ATTENTION_FUZZ_SEED=\(seed) ATTENTION_FUZZ_CASES=1: \(c) :: \(problems)")
                    }
                    continue
                }
                let checks = try checkAttention(
                    queries: inputs.queries, keys: inputs.keys, values: inputs.values, mask: c.mask, options: c.options)
                if !checks.output.passes || !checks.logSumExp.passes {
                    failures += 1
                    XCTFail("reproduce with ATTENTION_FUZZ_SEED=\(seed) ATTENTION_FUZZ_CASES=1: \(c) :: \(checks)")
                }
            } catch {
                failures += 1
                XCTFail("reproduce with ATTENTION_FUZZ_SEED=\(seed) ATTENTION_FUZZ_CASES=1: \(c) threw \(error)")
            }
            if failures >= 5 { return }
        }
    }
}
