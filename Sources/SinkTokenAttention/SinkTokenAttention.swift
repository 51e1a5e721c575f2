// SinkTokenAttention: StreamingLLM attention sinks (Xiao et al., 2023): the first tokens stay visible forever
// beside a window of recent tokens.
//
// Today `AttentionMask.sinks(count:window:)` in the core expresses the visibility. Issue 4 adds this module's
// descriptor and its streaming key/value cache.

@_exported import AttentionCore
