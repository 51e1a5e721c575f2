import AttentionCore
import Foundation
import XCTest
import _AttentionTestSupport

/// One real model's attention: the last self-attention layer of all-MiniLM-L6-v2 (12 heads, d = 32) on a padded
/// batch of four sentences (10, 8, 42 and 4 tokens), recorded from the model's own framework (PyTorch through
/// sentence-transformers) by `scripts/make-minilm-fixture.py`. The fixture holds each real token's query, key and
/// value projections and the model's attention output, packed sentence after sentence in [tokens, heads, d] rows.
/// The kernels run the same batch padded ([B, N, H, d] with key and query padding) and packed, and must agree with
/// the model and with the Float64 reference at least as well as the model's own Float32 does.
final class RealModelTests: XCTestCase {
    struct Fixture: Decodable {
        struct Entry: Decodable {
            let layer: Int
            let name: String
            let shape: [Int]
        }
        let model: String
        let lengths: [Int]
        let heads: Int
        let headDimension: Int
        let scale: Double
        let tensors: [Entry]
    }

    /// The fixture's metadata and its tensors by name.
    func loadFixture() throws -> (Fixture, [String: Tensor]) {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
        let fixture = try JSONDecoder().decode(
            Fixture.self, from: Data(contentsOf: directory.appendingPathComponent("minilm-attention.json")))
        let bytes = try Data(contentsOf: directory.appendingPathComponent("minilm-attention.bin"))
        var tensors: [String: Tensor] = [:]
        var offset = 0
        for entry in fixture.tensors {
            let count = entry.shape.reduce(1, *)
            var scalars = [Float](repeating: 0, count: count)
            _ = scalars.withUnsafeMutableBytes { bytes.copyBytes(to: $0, from: offset..<(offset + count * 4)) }
            offset += count * 4
            tensors[entry.name] = try Tensor(
                shape: entry.shape, scalars: scalars.map { Float(bitPattern: $0.bitPattern.littleEndian) })
        }
        XCTAssertEqual(offset, bytes.count, "the binary holds exactly the listed tensors")
        return (fixture, tensors)
    }

    func testLastLayerOfAllMiniLMMatchesTheModelPaddedAndPacked() throws {
        let (fixture, tensors) = try loadFixture()
        let (h, d, lengths) = (fixture.heads, fixture.headDimension, fixture.lengths)
        XCTAssertEqual(lengths, [10, 8, 42, 4])
        XCTAssertEqual(fixture.scale, 1 / Double(d).squareRoot(), accuracy: 1e-12)
        guard let q = tensors["query"], let k = tensors["key"], let v = tensors["value"],
            let expected = tensors["context"]
        else { return XCTFail("fixture tensors missing: \(tensors.keys.sorted())") }
        let sequences = try PackedSequences(lengths: lengths)

        // The Float64 reference of each sentence alone, and how far the model's Float32 output is from it.
        var reference: [Double] = []
        for b in 0..<lengths.count {
            let range = sequences.queryRange(b)
            let result = referenceAttention(
                queries: headMajor(q, range), keys: headMajor(k, range), values: headMajor(v, range))
            reference += result.output
        }
        let modelRows = (0..<lengths.count).flatMap { headMajor(expected, sequences.queryRange($0)).scalars }
        let modelError = maxAbsoluteError(modelRows, reference)
        // The fixture computes what the reference computes (scale, padding): the model's own rounding is all that
        // separates them.
        XCTAssertLessThan(modelError, 5e-6, "model vs Float64 reference (measured 1.0e-6)")

        /// Our rows (in the reference's [sentence, head, token, d] order) against the reference and the model.
        func check(_ rows: [Float], _ context: String) {
            let verdict = toleranceCheck(kernel: rows, reference: reference, plain: modelRows, context: context)
            XCTAssertTrue(verdict.passes, "\(verdict)")
            XCTAssertLessThan(
                maxAbsoluteError(rows, modelRows.map(Double.init)), 5e-6, "\(context) vs the model (measured 9.5e-7)")
        }

        // Packed: the fixture as it is.
        let packed = try packedAttention(queries: q, keys: k, values: v, sequences: sequences)
        check((0..<lengths.count).flatMap { headMajor(packed.output, sequences.queryRange($0)).scalars }, "packed")

        // Padded: [4, 42, 12, 32] as the model held it, padding positions poisoned with NaN (they must not matter).
        let n = lengths.max()!
        func padded(_ tensor: Tensor) throws -> Tensor {
            try Tensor(shape: [lengths.count, n, h, d]) { i in
                i[1] < lengths[i[0]]
                    ? tensor.scalars[((sequences.queryOffsets[i[0]] + i[1]) * h + i[2]) * d + i[3]] : .nan
            }
        }
        let padding = SequencePadding.lengths(lengths)
        for kernel in [AttentionKernel.automatic, .naive, .blockwise(queryBlock: 7, keyBlock: 5)] {
            let output = try attention(
                queries: padded(q), keys: padded(k), values: padded(v),
                options: AttentionOptions(
                    keyPadding: padding, queryPadding: padding, layout: .bnhd, outputLayout: .bhnd, kernel: kernel))
            var rows: [Float] = []
            for b in 0..<lengths.count {
                for head in 0..<h {
                    let start = output.offset(of: [b, head, 0, 0])
                    rows += output.scalars[start..<(start + lengths[b] * d)]
                }
            }
            check(rows, "padded \(kernel)")
            // Padding query rows answer as rows that see nothing: zeros.
            let pad = output.offset(of: [3, 0, lengths[3], 0])
            XCTAssertEqual(output.scalars[pad..<(pad + d)].allSatisfy { $0 == 0 }, true)
        }
    }
}
