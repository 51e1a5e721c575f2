// The README's concurrency promise, checked by the compiler: every public type of the library products is
// `Sendable`, except the buffer views, which borrow the caller's memory as `UnsafeBufferPointer` does. A type that
// stopped conforming would fail to compile here.

import Attention
import XCTest

final class SendabilityTests: XCTestCase {
    private func sendable<T: Sendable>(_: T.Type) -> String { "\(T.self)" }

    func testEveryPublicTypeIsSendable() {
        let core = [
            sendable(AttentionError.self), sendable(AttentionGradients.self), sendable(AttentionKernel.self),
            sendable(AttentionMask.self), sendable(AttentionOptions.self), sendable(AttentionResult.self),
            sendable(BlockSparseLayout.self), sendable(BlockSparseLayout.BlockScoring.self),
            sendable(CPUFeatures.self), sendable(CacheStorage.self), sendable(FeatureMap.self),
            sendable(KVCache.self), sendable(KernelBuild.self), sendable(LinearAttentionGradients.self),
            sendable(LinearAttentionMask.self), sendable(LinearAttentionOptions.self),
            sendable(LinearAttentionState.self), sendable(PackedSequences.self), sendable(PagedKVCache.self),
            sendable(PagedKVCache.SequenceID.self), sendable(RotaryEmbedding.self),
            sendable(RotaryEmbedding.Pairing.self), sendable(RotaryEmbedding.Scaling.self),
            sendable(SequencePadding.self), sendable(StorageFormat.self), sendable(StoredTensor.self),
            sendable(Tensor.self), sendable(TensorLayout.self),
        ]
        let variants = [
            sendable(GroupedQuery.self), sendable(MultiQuery.self), sendable(HeadPolicy.self),
            sendable(SinkTokens.self), sendable(StreamingKVCache.self), sendable(StreamingKVCache.RotationTiming.self),
            sendable(RollingKVCache.self), sendable(SlidingWindow.self),
        ]
        // The cache protocol refines Sendable, so generic code over any cache can send it.
        func viaProtocol<C: KeyValueCache>(_: C.Type) -> String { sendable(C.self) }
        let caches = [viaProtocol(KVCache.self), viaProtocol(StreamingKVCache.self), viaProtocol(RollingKVCache.self)]
        // The check is the compilation; at run time, that no entry was pasted twice in place of another type.
        let names = core + variants
        XCTAssertEqual(Set(names).count, names.count, "\(names)")
        XCTAssertEqual(caches, ["KVCache", "StreamingKVCache", "RollingKVCache"])
    }
}
