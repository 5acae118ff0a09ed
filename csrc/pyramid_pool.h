// Shared by the CPU and CUDA kernels of pyramid_pool: the stripe geometry, the pooling mode and
// the checks every backend makes on its arguments before any work starts, the 32-bit limit
// included: the argmax is int32 (by schema), so a plane must have at most INT32_MAX positions.
//
// Stripe s of n covers rows [floor(s*H/n), floor((s+1)*H/n)) of an H-row map (a partition of
// H); window w covers stripes [start_w, start_w + length_w).
#pragma once

#include "distance.h"

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <limits>

namespace reidfast {

// First row of stripe `stripe` (stripe == num_parts gives H, the end of the last stripe).
REIDFAST_HOST_DEVICE int64_t stripe_begin(int64_t stripe, int64_t height, int64_t num_parts) {
  return stripe * height / num_parts;
}

// The stripe that holds `row`: the largest s with floor(s*H/n) <= row, i.e. s < (row+1)*n/H.
REIDFAST_HOST_DEVICE int64_t stripe_of_row(int64_t row, int64_t height, int64_t num_parts) {
  return ((row + 1) * num_parts - 1) / height;
}

struct PoolMode {
  bool max;
  bool avg;
};

inline PoolMode parse_pool_mode(c10::string_view mode) {
  if (mode == "max") return {true, false};
  if (mode == "avg") return {false, true};
  if (mode == "max+avg") return {true, true};
  TORCH_CHECK(false, "pyramid_pool: mode must be 'max', 'avg' or 'max+avg', got '",
              std::string(mode), "'");
}

inline void check_windows(int64_t num_parts, int64_t height, at::IntArrayRef starts,
                          at::IntArrayRef lengths) {
  TORCH_CHECK(num_parts >= 1 && num_parts <= height,
              "pyramid_pool: num_parts must be in [1, H=", height, "], got ", num_parts);
  TORCH_CHECK(starts.size() == lengths.size(),
              "pyramid_pool: window_starts and window_lengths differ in length (",
              starts.size(), " vs ", lengths.size(), ")");
  TORCH_CHECK(!starts.empty(), "pyramid_pool: at least one window is needed");
  for (size_t w = 0; w < starts.size(); ++w) {
    TORCH_CHECK(lengths[w] >= 1 && starts[w] >= 0 && starts[w] + lengths[w] <= num_parts,
                "pyramid_pool: window ", w, " = (start ", starts[w], ", length ", lengths[w],
                ") is empty or outside the ", num_parts, " stripes");
  }
}

// H * W <= INT32_MAX, written as a division so that no product of sizes overflows.
inline void check_plane_positions(int64_t height, int64_t width, const char* op) {
  constexpr int64_t kMaxPositions = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(width >= 1 && height <= kMaxPositions / width, op, ": H * W = ", height, " * ",
                    width, " exceeds ", kMaxPositions,
                    ", the largest position the int32 argmax holds; pool a smaller map or split it");
}

inline void check_forward_input(const at::Tensor& x, int64_t num_parts, at::IntArrayRef starts,
                                at::IntArrayRef lengths) {
  TORCH_CHECK(x.dim() == 4, "pyramid_pool: x must be 4-D [B, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(x.size(3) >= 1, "pyramid_pool: x must have W >= 1, got shape ", x.sizes());
  check_windows(num_parts, x.size(2), starts, lengths);
  check_plane_positions(x.size(2), x.size(3), "pyramid_pool");
}

inline void check_backward_input(const at::Tensor& grad_out, const at::Tensor& argmax,
                                 int64_t num_parts, at::IntArrayRef starts,
                                 at::IntArrayRef lengths, PoolMode mode, int64_t height,
                                 int64_t width) {
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(1) == static_cast<int64_t>(starts.size()),
              "pyramid_pool_backward: grad_out must be [B, num_windows=", starts.size(),
              ", C], got ", grad_out.sizes());
  TORCH_CHECK(width >= 1, "pyramid_pool_backward: width must be >= 1, got ", width);
  check_windows(num_parts, height, starts, lengths);
  check_plane_positions(height, width, "pyramid_pool_backward");
  if (mode.max) {
    TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.sizes() == grad_out.sizes(),
                "pyramid_pool_backward: argmax must be int32 of grad_out's shape ",
                grad_out.sizes(), ", got ", argmax.scalar_type(), " ", argmax.sizes());
    TORCH_CHECK(argmax.device() == grad_out.device(),
                "pyramid_pool_backward: argmax is on ", argmax.device(), ", grad_out on ",
                grad_out.device());
  }
}

inline c10::MemoryFormat grad_memory_format(bool channels_last) {
  return channels_last ? c10::MemoryFormat::ChannelsLast : c10::MemoryFormat::Contiguous;
}

}  // namespace reidfast
