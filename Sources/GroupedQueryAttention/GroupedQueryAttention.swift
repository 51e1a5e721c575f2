// GroupedQueryAttention: G query heads per key/value head (Ainslie et al., 2023).
//
// Today the core kernels already run grouped-query attention by index mapping (query head h reads key/value
// head h / (queryHeads / keyValueHeads)); K and V are never copied. Issue 4 adds the thin descriptor type of
// this module; it will hold no loop over Q, K or V.

@_exported import AttentionCore
