// Memory layouts the CPU kernels tell apart.
#pragma once

#include <torch/extension.h>

// Channels innermost (channels_last or channels_last_3d) and not also plain contiguous (C == 1, or 1x1 pixels).
inline bool is_channels_innermost(const at::Tensor& x) {
  return !x.is_contiguous() && ((x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                                (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)));
}
