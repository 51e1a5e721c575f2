// Attention: the umbrella module. `import Attention` brings in the core kernels and every variant module.

@_exported import AttentionCore
@_exported import GroupedQueryAttention
@_exported import MultiQueryAttention
@_exported import SinkTokenAttention
@_exported import SlidingWindowAttention
