// MultiQueryAttention: one key/value head shared by every query head (Shazeer, 2019).
//
// Today the core kernels already run multi-query attention: pass keys and values with one head
// ([batch, 1, keyLength, headDimension]) and any number of query heads. Issue 4 adds the thin descriptor type
// of this module; it will hold no loop over Q, K or V.

@_exported import AttentionCore
