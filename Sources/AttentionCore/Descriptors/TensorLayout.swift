// TensorLayout: the order of the axes of a rank-4 query, key, value or output tensor.
//
// The kernels take every layout as it is: a row (one token of one head, its d values consecutive) is found from
// (batch, head, token) strides, so a [B, N, H, d] tensor straight out of a projection needs no transpose copy by
// the caller. Query rows are packed per work item anyway and the output is written through its strides. Key and
// value rows that are not consecutive within a head: when the prefill kernel reads each key more than once (more
// than one query block), they are copied head-major, one pass over them (reading them in place took 1.21x the
// time, see `withHeadMajorRows`): with 16 or more (batch, key/value head) groups per thread (or one thread) each
// worker copies one group at a time into its own buffer and runs that group's work items (`RowStaging`), else
// the call copies all of K and V once; with one query block the prefill micro-kernels read them in place at
// their stride; the decode kernel gathers each tile into its tile scratch (the path stored formats decode through).

/// The axis order of rank-4 attention tensors (``AttentionOptions/layout``, ``AttentionOptions/outputLayout``).
public enum TensorLayout: Sendable, Hashable {
    /// [batch, heads, tokens, headDimension]: each head's tokens consecutive (PyTorch's SDPA, this package's
    /// default and its caches).
    case bhnd
    /// [batch, tokens, heads, headDimension]: each token's heads consecutive, as a projection writes them
    /// (FlashAttention's `(batch, seqlen, nheads, headdim)`, Hugging Face before its transpose).
    case bnhd

    /// `shape` (in this layout) reordered to [batch, heads, tokens, dimension]; other ranks unchanged.
    package func canonical(_ shape: [Int]) -> [Int] {
        guard self == .bnhd, shape.count == 4 else { return shape }
        return [shape[0], shape[2], shape[1], shape[3]]
    }

    /// The shape of a tensor of these sizes in this layout.
    package func shape(batch: Int, heads: Int, tokens: Int, dimension: Int) -> [Int] {
        self == .bhnd ? [batch, heads, tokens, dimension] : [batch, tokens, heads, dimension]
    }

    /// The row strides of a dense tensor of these sizes in this layout.
    package func strides(heads: Int, tokens: Int, dimension: Int) -> RowStrides {
        switch self {
        case .bhnd: return RowStrides(batch: heads * tokens * dimension, head: tokens * dimension, token: dimension)
        case .bnhd: return RowStrides(batch: heads * tokens * dimension, head: dimension, token: heads * dimension)
        }
    }
}

/// Where the rows of a rank-4 Float32 tensor live, in floats: row (b, h, n) starts at b * batch + h * head +
/// n * token, and its values are consecutive.
package struct RowStrides: Sendable, Hashable {
    package var batch: Int
    package var head: Int
    package var token: Int

    package init(batch: Int, head: Int, token: Int) {
        self.batch = batch
        self.head = head
        self.token = token
    }

    @inline(__always) package func offset(batch b: Int, head h: Int, token n: Int) -> Int {
        b &* batch &+ h &* head &+ n &* token
    }
}
