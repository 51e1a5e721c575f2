// Everything of AttentionPlatform is in its header (static inline functions the Swift kernels inline); this file
// exists because a C target needs a source file.
#include "AttentionPlatform.h"
