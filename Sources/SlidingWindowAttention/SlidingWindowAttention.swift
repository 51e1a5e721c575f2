// SlidingWindowAttention: each query sees a fixed window of keys around its diagonal (Longformer, Mistral).
//
// Today `AttentionMask.window(left:right:)` in the core expresses the visibility. Issue 4 adds this module's
// descriptor and its rolling key/value cache.

@_exported import AttentionCore
