// CUDA kernels of pyramid_pool: GMP and/or GAP over windows of horizontal stripes.
//
// Geometry on the GPU. A plane is one (b, c) map; positions k = h * W + w run over [0, H * W), and
// stripe s is the position range [stripe_offset[s], stripe_offset[s + 1]) with
// stripe_offset[s] = stripe_begin(s) * W, so the kernels never divide to find a stripe.
//
// Thread mapping. A block owns kTilePlanes = 32 consecutive planes (flat index b * C + c) and is
// blockDim = (32, workers): thread (lane, worker) serves plane `lane` and stripes worker,
// worker + workers, ... Lanes are consecutive channels, so every access a warp makes to out,
// argmax, grad_out, or to x / grad_x in channels_last, is one coalesced run of 32 elements.
//
// Forward, reading x once:
//   1. Stripe statistics (float32 max, first argmax, float32 sum) per (stripe, plane) into shared
//      arrays [num_parts][32].
//      - channels_last: each thread walks its stripe's positions in global memory; at each step
//        the warp reads 32 consecutive channels.
//      - contiguous NCHW: the block's 32 planes are one contiguous span of x. It is staged into a
//        shared tile [32][tile_stride] with 16-byte loads (all threads, several loads in flight
//        each), then each thread walks its stripe in the tile with 16-byte shared loads. Planes
//        larger than the tile are staged in chunks of positions and the statistics carried over.
//   2. Thread (lane, worker) combines windows worker, worker + workers, ... from the statistics:
//      the first stripe holding the window maximum wins, so its argmax is the window's.
// Backward, writing grad_x once, without atomics (deterministic):
//   1. Per (stripe, plane) the windows' gradients fold into spread (g / count over the windows
//      that contain the stripe), peak (g over the windows whose argmax lies in the stripe) and
//      peak_pos (that argmax: a window's argmax is one of its stripes' argmaxes, so all those
//      windows share it). grad_x = spread + (k == peak_pos ? peak : 0).
//   2. channels_last: the same thread writes its stripe, a coalesced row of channels per position.
//      contiguous: warp w writes planes w, w + workers, ... as 16-byte packs along the plane.
//
// NaN: a NaN beats every number in the maximum (the first NaN in scan order is the argmax, as
// torch.max(dim) has it) and propagates through the sums, so a window holding one pools to NaN.
//
// Limits (checked before launch, ValueError naming the size and the limit): num_parts <= 64
// (kMaxParts: a block's per-stripe statistics live in shared memory) and at most 512 windows
// (kMaxWindows: the stripe and window tables travel by value in the kernel parameters, so nothing
// is copied to the device and calls can be graph-captured); H * W <= 2**31 - 1 (positions and the
// argmax are int32; checked in pyramid_pool.h for every backend); C <= 2**31 - 1;
// ceil(B * C / 32) <= 2**31 - 1 blocks. Other layouts than contiguous / channels_last are made
// contiguous first. Shared memory stays within the 48 KiB every architecture grants without
// opt-in.
#include "../pyramid_pool.h"
#include "device_types.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace reidfast {
namespace {

constexpr int kMaxParts = 64;
constexpr int kMaxWindows = 512;
constexpr int kTilePlanes = 32;  // planes per block: one per lane
constexpr int kMaxWorkers = 8;   // blockDim.y
constexpr int kSharedBytes = 48 * 1024;
constexpr int kPackBytes = 16;   // widest global / shared access
constexpr int kStageUnroll = 4;  // 16-byte loads each thread keeps in flight while staging
// Shared banks span 128 bytes: a tile row stride of 128 * m + 16 bytes sends the 16-byte loads of
// 8 consecutive lanes (one shared-memory phase) to 8 distinct bank groups.
constexpr int kBankBytes = 128;

enum class Layout { kContiguous, kChannelsLast };

// Everything the kernels need besides pointers, passed by value.
struct PoolParams {
  int64_t planes;     // B * C
  int32_t channels;   // C
  int32_t positions;  // H * W
  int32_t num_parts;
  int32_t num_windows;
  int32_t chunk;        // positions staged per pass (forward, contiguous)
  int32_t tile_stride;  // elements between two planes of the staging tile
  bool max;
  bool avg;
  int32_t stripe_offset[kMaxParts + 1];  // first position of stripe s; [num_parts] = H * W
  int16_t window_start[kMaxWindows];
  int16_t window_length[kMaxWindows];
};

template <typename scalar_t>
constexpr int kPackElems = kPackBytes / static_cast<int>(sizeof(scalar_t));

template <typename scalar_t, int Vec>
struct alignas(sizeof(scalar_t) * Vec) Pack {
  scalar_t val[Vec];
};

// Bytes of the three per-(stripe, plane) shared arrays of 4-byte slots.
constexpr int stripe_array_bytes(int num_parts) { return 3 * 4 * num_parts * kTilePlanes; }

// The k-th [num_parts][kTilePlanes] array of dynamic shared memory; the forward staging tile
// starts at k = 3 (16-byte aligned since the arrays are multiples of 128 bytes).
template <typename T>
__device__ __forceinline__ T* stripe_array(int k, int num_parts) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return reinterpret_cast<T*>(shared_bytes + k * 4 * num_parts * kTilePlanes);
}

// `value` beats the current maximum `best`: larger, or NaN where best is not (NaN propagates).
// Equal values never beat, so the first candidate in scan order wins.
__device__ __forceinline__ bool beats(float value, float best) {
  return value > best || (isnan(value) && !isnan(best));
}

// Running max, first argmax and sum of one stripe of one plane, scanned in position order.
struct StripeStats {
  float max;
  int32_t argmax;
  float sum;

  // Before any element: an all -inf stripe keeps its first position as the argmax.
  static __device__ StripeStats empty(int32_t first_pos) {
    return {-std::numeric_limits<float>::infinity(), first_pos, 0.f};
  }
  __device__ __forceinline__ void add(float value, int32_t pos) {
    if (beats(value, max)) {
      max = value;
      argmax = pos;
    }
    sum += value;
  }
};

// Positions [lo, hi) of a channels_last plane whose position 0 is at `src`, positions `stride`
// elements apart. Unrolled so that each thread keeps 8 independent loads in flight: with 2-byte
// types a warp load is only 64 bytes.
template <typename scalar_t>
__device__ void accumulate_strided(const scalar_t* __restrict__ src, int64_t stride, int lo, int hi,
                                   StripeStats& acc) {
#pragma unroll 8
  for (int k = lo; k < hi; ++k) acc.add(static_cast<float>(src[k * stride]), k);
}

// Positions [lo, hi) of a staged tile row (row[0] is position `first`), read as aligned packs of
// Vec; the packs at the two ends may hold elements of neighbouring stripes, which are skipped.
template <int Vec, typename scalar_t>
__device__ void accumulate_staged(const scalar_t* row, int lo, int hi, int32_t first,
                                  StripeStats& acc) {
  using PackT = Pack<scalar_t, Vec>;
  for (int q = lo - lo % Vec; q < hi; q += Vec) {
    const PackT pack = *reinterpret_cast<const PackT*>(row + q);
#pragma unroll
    for (int e = 0; e < Vec; ++e) {
      const int k = q + e;
      if (k >= lo && k < hi) acc.add(static_cast<float>(pack.val[e]), first + k);
    }
  }
}

// Copies `count` positions (a multiple of Vec) of `planes` planes, plane i starting at
// src + i * plane_stride, into tile[i * tile_stride + k]. All threads of the block take part;
// each issues kStageUnroll loads before it stores any of them.
template <int Vec, typename scalar_t>
__device__ void stage_chunk(const scalar_t* __restrict__ src, int64_t plane_stride, int planes,
                            int count, int tile_stride, scalar_t* tile) {
  using PackT = Pack<scalar_t, Vec>;
  const int packs_per_plane = count / Vec;
  const int total = planes * packs_per_plane;
  const int threads = blockDim.x * blockDim.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int first = tid; first < total; first += threads * kStageUnroll) {
    PackT packs[kStageUnroll];
    int dst[kStageUnroll];
#pragma unroll
    for (int r = 0; r < kStageUnroll; ++r) {
      const int u = first + r * threads;
      if (u < total) {
        const int plane = u / packs_per_plane;
        const int k = (u - plane * packs_per_plane) * Vec;
        packs[r] = *reinterpret_cast<const PackT*>(src + plane * plane_stride + k);
        dst[r] = plane * tile_stride + k;
      }
    }
#pragma unroll
    for (int r = 0; r < kStageUnroll; ++r) {
      if (first + r * threads < total) *reinterpret_cast<PackT*>(tile + dst[r]) = packs[r];
    }
  }
}

// Shared geometry of a thread within its block.
struct TileThread {
  int lane;     // plane within the tile
  int worker;   // first stripe / window / plane group this thread serves
  int workers;  // blockDim.y
  int tile_planes;  // planes of this tile that exist (the last tile may be partial)
  int64_t plane0;   // flat index of the tile's first plane
  int64_t b;        // batch of plane `lane`
  int32_t c;        // channel of plane `lane`

  __device__ bool active() const { return lane < tile_planes; }
};

__device__ TileThread tile_thread(const PoolParams& p) {
  TileThread t;
  t.lane = threadIdx.x;
  t.worker = threadIdx.y;
  t.workers = blockDim.y;
  t.plane0 = static_cast<int64_t>(blockIdx.x) * kTilePlanes;
  t.tile_planes = static_cast<int>(min(static_cast<int64_t>(kTilePlanes), p.planes - t.plane0));
  const int64_t plane = t.plane0 + t.lane;
  t.b = plane / p.channels;
  t.c = static_cast<int32_t>(plane - t.b * p.channels);
  return t;
}

// Forward.
//   x: [B, C, H, W], contiguous or channels_last (kLayout); Vec: elements per staged 16-byte pack
//      (1 when the planes are not 16-byte aligned); grid: ceil(B * C / 32) blocks of (32, workers).
//   out: [B, NW, C]; argmax: [B, NW, C] int32, or nullptr when not wanted.
template <typename scalar_t, Layout kLayout, int Vec>
__global__ void __launch_bounds__(kTilePlanes * kMaxWorkers)
    pyramid_pool_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                int32_t* __restrict__ argmax, const PoolParams p) {
  const TileThread t = tile_thread(p);
  float* stripe_max = stripe_array<float>(0, p.num_parts);
  float* stripe_sum = stripe_array<float>(1, p.num_parts);
  int32_t* stripe_argmax = stripe_array<int32_t>(2, p.num_parts);
  const auto slot = [&](int s) { return s * kTilePlanes + t.lane; };

  if constexpr (kLayout == Layout::kChannelsLast) {
    if (t.active()) {
      const scalar_t* src = x + t.b * p.positions * p.channels + t.c;
      for (int s = t.worker; s < p.num_parts; s += t.workers) {
        StripeStats acc = StripeStats::empty(p.stripe_offset[s]);
        accumulate_strided(src, p.channels, p.stripe_offset[s], p.stripe_offset[s + 1], acc);
        stripe_max[slot(s)] = acc.max;
        stripe_argmax[slot(s)] = acc.argmax;
        stripe_sum[slot(s)] = acc.sum;
      }
    }
  } else {
    if (t.active()) {
      for (int s = t.worker; s < p.num_parts; s += t.workers) {
        const StripeStats init = StripeStats::empty(p.stripe_offset[s]);
        stripe_max[slot(s)] = init.max;
        stripe_argmax[slot(s)] = init.argmax;
        stripe_sum[slot(s)] = init.sum;
      }
    }
    scalar_t* tile = stripe_array<scalar_t>(3, p.num_parts);
    const scalar_t* planes = x + t.plane0 * p.positions;
    for (int k0 = 0; k0 < p.positions; k0 += p.chunk) {
      const int count = min(p.chunk, p.positions - k0);
      __syncthreads();  // every thread is done with the previous chunk
      stage_chunk<Vec>(planes + k0, p.positions, t.tile_planes, count, p.tile_stride, tile);
      __syncthreads();
      if (!t.active()) continue;
      for (int s = t.worker; s < p.num_parts; s += t.workers) {
        const int lo = max(p.stripe_offset[s], k0);
        const int hi = min(p.stripe_offset[s + 1], k0 + count);
        if (lo >= hi) continue;
        StripeStats acc{stripe_max[slot(s)], stripe_argmax[slot(s)], stripe_sum[slot(s)]};
        accumulate_staged<Vec>(tile + t.lane * p.tile_stride, lo - k0, hi - k0, k0, acc);
        stripe_max[slot(s)] = acc.max;
        stripe_argmax[slot(s)] = acc.argmax;
        stripe_sum[slot(s)] = acc.sum;
      }
    }
  }
  __syncthreads();
  if (!t.active()) return;

  for (int i = t.worker; i < p.num_windows; i += t.workers) {
    const int first = p.window_start[i];
    const int last = first + p.window_length[i];
    float best = stripe_max[slot(first)];
    int32_t best_pos = stripe_argmax[slot(first)];
    float total = stripe_sum[slot(first)];
    for (int s = first + 1; s < last; ++s) {
      const float m = stripe_max[slot(s)];
      if (beats(m, best)) {
        best = m;
        best_pos = stripe_argmax[slot(s)];
      }
      total += stripe_sum[slot(s)];
    }
    const float inv_count =
        1.f / static_cast<float>(p.stripe_offset[last] - p.stripe_offset[first]);
    // Same formula and rounding as the CPU backend (the mean is not fused into an FMA).
    const float value = (p.max ? best : 0.f) + (p.avg ? __fmul_rn(total, inv_count) : 0.f);
    const int64_t o = (t.b * p.num_windows + i) * p.channels + t.c;
    out[o] = static_cast<scalar_t>(value);
    if (argmax != nullptr) argmax[o] = best_pos;
  }
}

// The windows' gradients folded onto stripe s of one plane; grad_x = spread + (k == peak_pos ?
// peak : 0) over the stripe (peak_pos = -1 matches no position).
struct StripeGrad {
  float spread;
  float peak;
  int32_t peak_pos;
};

// g / a: grad_out / argmax of the plane at window 0, windows `stride` elements apart (a is
// nullptr when the mode has no max). Windows are folded in index order with the product rounded
// before the add (__fmul_rn: no FMA contraction), exactly as the CPU backend computes it.
template <typename scalar_t>
__device__ StripeGrad fold_window_grads(const scalar_t* __restrict__ g,
                                        const int32_t* __restrict__ a, int64_t stride, int s,
                                        const PoolParams& p) {
  StripeGrad r{0.f, 0.f, -1};
  const int lo = p.stripe_offset[s];
  const int hi = p.stripe_offset[s + 1];
  for (int i = 0; i < p.num_windows; ++i) {
    const float gi = static_cast<float>(g[i * stride]);
    const int first = p.window_start[i];
    const int last = first + p.window_length[i];
    if (p.avg && first <= s && s < last) {
      const float inv_count =
          1.f / static_cast<float>(p.stripe_offset[last] - p.stripe_offset[first]);
      r.spread += __fmul_rn(gi, inv_count);
    }
    if (a != nullptr) {
      const int32_t pos = a[i * stride];
      if (pos >= lo && pos < hi) {
        r.peak += gi;
        r.peak_pos = pos;
      }
    }
  }
  return r;
}

__device__ __forceinline__ float grad_at(const StripeGrad& r, int32_t pos) {
  return r.spread + (pos == r.peak_pos ? r.peak : 0.f);
}

// Follows increasing positions of one plane through its stripes, holding the current stripe's
// StripeGrad from the shared arrays.
struct StripeCursor {
  int stripe = -1;
  int end = 0;  // first position past the current stripe
  StripeGrad grad{};

  __device__ void seek(int pos, const PoolParams& p, const float* spread, const float* peak,
                       const int32_t* peak_pos, int lane) {
    if (pos < end) return;
    do {
      ++stripe;
    } while (pos >= p.stripe_offset[stripe + 1]);
    end = p.stripe_offset[stripe + 1];
    const int slot = stripe * kTilePlanes + lane;
    grad = {spread[slot], peak[slot], peak_pos[slot]};
  }
};

// Backward.
//   grad_out: [B, NW, C] contiguous; argmax: [B, NW, C] int32, nullptr when the mode has no max.
//   grad_x: [B, C, H, W], contiguous or channels_last (kLayout); Vec: elements per 16-byte pack
//   of the contiguous writes. grid: ceil(B * C / 32) blocks of (32, workers).
template <typename scalar_t, Layout kLayout, int Vec>
__global__ void __launch_bounds__(kTilePlanes * kMaxWorkers)
    pyramid_pool_backward_kernel(const scalar_t* __restrict__ grad_out,
                                 const int32_t* __restrict__ argmax,
                                 scalar_t* __restrict__ grad_x, const PoolParams p) {
  const TileThread t = tile_thread(p);
  const int64_t window_row = t.b * p.num_windows * p.channels + t.c;
  const scalar_t* g = grad_out + window_row;
  const int32_t* a = argmax != nullptr ? argmax + window_row : nullptr;

  if constexpr (kLayout == Layout::kChannelsLast) {
    if (!t.active()) return;
    scalar_t* dst = grad_x + t.b * p.positions * p.channels + t.c;
    for (int s = t.worker; s < p.num_parts; s += t.workers) {
      const StripeGrad r = fold_window_grads(g, a, p.channels, s, p);
#pragma unroll 4
      for (int k = p.stripe_offset[s]; k < p.stripe_offset[s + 1]; ++k) {
        dst[k * static_cast<int64_t>(p.channels)] = static_cast<scalar_t>(grad_at(r, k));
      }
    }
  } else {
    using PackT = Pack<scalar_t, Vec>;
    float* spread = stripe_array<float>(0, p.num_parts);
    float* peak = stripe_array<float>(1, p.num_parts);
    int32_t* peak_pos = stripe_array<int32_t>(2, p.num_parts);
    if (t.active()) {
      for (int s = t.worker; s < p.num_parts; s += t.workers) {
        const StripeGrad r = fold_window_grads(g, a, p.channels, s, p);
        const int slot = s * kTilePlanes + t.lane;
        spread[slot] = r.spread;
        peak[slot] = r.peak;
        peak_pos[slot] = r.peak_pos;
      }
    }
    __syncthreads();
    for (int plane = t.worker; plane < t.tile_planes; plane += t.workers) {
      scalar_t* dst = grad_x + (t.plane0 + plane) * p.positions;
      StripeCursor cursor;
      for (int k = t.lane * Vec; k < p.positions; k += kTilePlanes * Vec) {
        PackT pack;
#pragma unroll
        for (int e = 0; e < Vec; ++e) {
          cursor.seek(k + e, p, spread, peak, peak_pos, plane);
          pack.val[e] = static_cast<scalar_t>(grad_at(cursor.grad, k + e));
        }
        *reinterpret_cast<PackT*>(dst + k) = pack;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// The kernels' parameters, after the limits of this kernel are checked (check_forward_input and
// check_backward_input of pyramid_pool.h have checked the arguments and H * W <= INT32_MAX).
PoolParams make_params(int64_t batch, int64_t channels, int64_t height, int64_t width,
                       int64_t num_parts, at::IntArrayRef starts, at::IntArrayRef lengths,
                       PoolMode mode) {
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(num_parts <= kMaxParts, "pyramid_pool (CUDA): num_parts = ", num_parts,
                    " exceeds the kernel's limit of ", kMaxParts,
                    " stripes (per-stripe statistics in shared memory)");
  TORCH_CHECK_VALUE(static_cast<int64_t>(starts.size()) <= kMaxWindows,
                    "pyramid_pool (CUDA): ", starts.size(),
                    " windows exceed the kernel's limit of ", kMaxWindows,
                    " (the window table is a kernel parameter)");
  TORCH_CHECK_VALUE(channels <= kInt32Max, "pyramid_pool (CUDA): C = ", channels,
                    " exceeds the kernel's limit of ", kInt32Max);
  const int64_t planes = batch * channels;
  TORCH_CHECK_VALUE((planes + kTilePlanes - 1) / kTilePlanes <= kInt32Max,
                    "pyramid_pool (CUDA): B * C = ", planes, " exceeds the kernel's limit of ",
                    kInt32Max * kTilePlanes, " (one block per ", kTilePlanes, " planes)");

  PoolParams p{};
  p.planes = planes;
  p.channels = static_cast<int32_t>(channels);
  p.positions = static_cast<int32_t>(height * width);
  p.num_parts = static_cast<int32_t>(num_parts);
  p.num_windows = static_cast<int32_t>(starts.size());
  p.max = mode.max;
  p.avg = mode.avg;
  for (int64_t s = 0; s <= num_parts; ++s) {
    p.stripe_offset[s] = static_cast<int32_t>(stripe_begin(s, height, num_parts) * width);
  }
  for (size_t i = 0; i < starts.size(); ++i) {
    p.window_start[i] = static_cast<int16_t>(starts[i]);
    p.window_length[i] = static_cast<int16_t>(lengths[i]);
  }
  return p;
}

// Sets p.chunk and p.tile_stride for the forward staging tile: whole planes when they fit in
// kSharedBytes next to the stripe arrays, else the largest chunk of positions that does. With
// Vec > 1 a row stride of 128 * m + 16 bytes keeps the 16-byte shared loads of 8 consecutive lanes
// on distinct banks; with Vec == 1 an odd stride does the same for 4-byte loads.
void set_tile_geometry(PoolParams& p, int elem_size, int vec) {
  const int granule = kBankBytes / kPackBytes * vec;  // 128 bytes of 16-byte packs, or 8 elements
  const auto stride_for = [&](int chunk) { return (chunk + granule - 1) / granule * granule + vec; };
  const int max_stride =
      (kSharedBytes - stripe_array_bytes(p.num_parts)) / (kTilePlanes * elem_size);
  if (stride_for(p.positions) <= max_stride) {
    p.chunk = p.positions;
  } else {
    p.chunk = (max_stride - vec) / granule * granule;
  }
  p.tile_stride = stride_for(p.chunk);
}

int worker_count(Layout layout, int num_parts) {
  // Contiguous layouts use every worker for staging and writing whatever the stripe count.
  return layout == Layout::kContiguous ? kMaxWorkers : std::min(num_parts, kMaxWorkers);
}

template <Layout L>
using LayoutTag = std::integral_constant<Layout, L>;
template <int V>
using VecTag = std::integral_constant<int, V>;

// Calls f(LayoutTag, VecTag) for the kernel variant that serves `data` (the tensor the kernel
// streams: x forward, grad_x backward): channels_last, or contiguous with 16-byte packs when every
// plane starts 16-byte aligned, or contiguous element by element.
template <typename scalar_t, typename F>
void with_variant(bool channels_last, const void* data, int64_t positions, F&& f) {
  constexpr int vec = kPackElems<scalar_t>;
  if (channels_last) {
    f(LayoutTag<Layout::kChannelsLast>{}, VecTag<1>{});
  } else if (positions % vec == 0 && reinterpret_cast<uintptr_t>(data) % kPackBytes == 0) {
    f(LayoutTag<Layout::kContiguous>{}, VecTag<vec>{});
  } else {
    f(LayoutTag<Layout::kContiguous>{}, VecTag<1>{});
  }
}

void check_cuda_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() != at::kDouble, "pyramid_pool (CUDA): ", name,
              " is float64, which only the CPU backend supports; use float32, float16 or "
              "bfloat16 on the GPU");
}

std::tuple<at::Tensor, at::Tensor> pyramid_pool_forward_cuda(const at::Tensor& input,
                                                             int64_t num_parts,
                                                             at::IntArrayRef starts,
                                                             at::IntArrayRef lengths,
                                                             c10::string_view mode_name,
                                                             bool return_argmax) {
  TORCH_INTERNAL_ASSERT(input.is_cuda());
  check_cuda_dtype(input, "x");
  check_forward_input(input, num_parts, starts, lengths);
  const PoolMode mode = parse_pool_mode(mode_name);
  const bool want_argmax = return_argmax && mode.max;
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t num_windows = static_cast<int64_t>(starts.size());

  const c10::cuda::CUDAGuard guard(input.device());
  const auto int_options = input.options().dtype(at::kInt);
  at::Tensor out = at::empty({batch, num_windows, channels}, input.options());
  at::Tensor argmax = want_argmax ? at::empty({batch, num_windows, channels}, int_options)
                                  : at::empty({0}, int_options);
  PoolParams params = make_params(batch, channels, input.size(2), input.size(3), num_parts,
                                  starts, lengths, mode);
  if (out.numel() == 0) return {out, argmax};
  const bool channels_last =
      !input.is_contiguous() && input.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = channels_last ? input : input.contiguous();

  REIDFAST_DISPATCH_GPU_FLOATS(x.scalar_type(), "pyramid_pool_forward_cuda", [&] {
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    with_variant<scalar_t>(channels_last, x_ptr, params.positions, [&](auto layout, auto vec) {
      constexpr Layout kLayout = decltype(layout)::value;
      constexpr int kVec = decltype(vec)::value;
      int shared = stripe_array_bytes(params.num_parts);
      if constexpr (kLayout == Layout::kContiguous) {
        set_tile_geometry(params, static_cast<int>(sizeof(scalar_t)), kVec);
        shared += kTilePlanes * params.tile_stride * static_cast<int>(sizeof(scalar_t));
      }
      const dim3 block(kTilePlanes, worker_count(kLayout, params.num_parts));
      const dim3 grid(static_cast<unsigned>((params.planes + kTilePlanes - 1) / kTilePlanes));
      pyramid_pool_forward_kernel<scalar_t, kLayout, kVec>
          <<<grid, block, shared, c10::cuda::getCurrentCUDAStream()>>>(
              x_ptr, out.mutable_data_ptr<scalar_t>(),
              want_argmax ? argmax.mutable_data_ptr<int32_t>() : nullptr, params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, argmax};
}

at::Tensor pyramid_pool_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& argmax_in,
                                      int64_t num_parts, at::IntArrayRef starts,
                                      at::IntArrayRef lengths, c10::string_view mode_name,
                                      int64_t height, int64_t width, bool channels_last) {
  TORCH_INTERNAL_ASSERT(grad_out_in.is_cuda());
  check_cuda_dtype(grad_out_in, "grad_out");
  const PoolMode mode = parse_pool_mode(mode_name);
  check_backward_input(grad_out_in, argmax_in, num_parts, starts, lengths, mode, height, width);
  const int64_t batch = grad_out_in.size(0), channels = grad_out_in.size(2);

  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  at::Tensor grad_x =
      at::empty({batch, channels, height, width},
                grad_out_in.options().memory_format(grad_memory_format(channels_last)));
  const PoolParams params =
      make_params(batch, channels, height, width, num_parts, starts, lengths, mode);
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor argmax = mode.max ? argmax_in.contiguous() : at::Tensor();

  REIDFAST_DISPATCH_GPU_FLOATS(grad_out.scalar_type(), "pyramid_pool_backward_cuda", [&] {
    scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
    with_variant<scalar_t>(channels_last, dx, params.positions, [&](auto layout, auto vec) {
      constexpr Layout kLayout = decltype(layout)::value;
      constexpr int kVec = decltype(vec)::value;
      const int shared =
          kLayout == Layout::kContiguous ? stripe_array_bytes(params.num_parts) : 0;
      const dim3 block(kTilePlanes, worker_count(kLayout, params.num_parts));
      const dim3 grid(static_cast<unsigned>((params.planes + kTilePlanes - 1) / kTilePlanes));
      pyramid_pool_backward_kernel<scalar_t, kLayout, kVec>
          <<<grid, block, shared, c10::cuda::getCurrentCUDAStream()>>>(
              grad_out.const_data_ptr<scalar_t>(),
              mode.max ? argmax.const_data_ptr<int32_t>() : nullptr, dx, params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) {
  m.impl("pyramid_pool_forward", &pyramid_pool_forward_cuda);
  m.impl("pyramid_pool_backward", &pyramid_pool_backward_cuda);
}

}  // namespace reidfast
