// CUDA kernel of adaptive_margin_forward: the adaptive-margin pairwise loss of a batch (see
// reidfast/ops/adaptive_margin.py), its margins and, when asked, its gradient, without ever
// writing the N x N distance matrix to global memory.
//
// Distances. D_ij = clamp_square(|x_i|^2 + |x_j|^2 - 2 x_i.x_j) in float32 (csrc/distance.h: NaN
// and inf propagate). The squared row norms are computed once by row_norms_kernel
// (distance_tile.cuh) into an [N] float32 buffer; the dot products come from 64 x 64 tiles
// computed on chip: a block owns the 64 rows of a row tile I and walks column tiles J; per tile,
// D is consumed in chunks of 16 elements, the chunk's 64 + 64 rows converted to float32 and
// staged in shared memory (k-major, double-buffered, the next chunk's global loads in flight
// while the current one is multiplied, one __syncthreads per chunk), and multiplied with FFMA,
// thread (ty, tx) = (t / 16, t % 16) owning rows 4 ty .. 4 ty + 3 and columns tx + 16 q, q < 4.
// Every element type runs on this float32 path (a product of two half or bfloat16 values is exact
// in float32; only the accumulation rounds). The code that computes the pair (i, j) in tile
// (I, J) and (j, i) in tile (J, I) performs the same operations, so D, and with it every test and
// slope, is exactly symmetric.
//
// Passes (all on the current stream; nothing is read back to the host, so a call can be captured
// in a CUDA graph):
//   1. pair_pass_kernel<kStats>, grid (row tiles, splits): block (I, s) visits the column tiles
//      J = I + s, I + s + splits, ... and sums, over its pairs i < j, the positive and negative
//      pairs' distances and counts the positive pairs, in double; a deterministic block
//      reduction (warp butterflies, then the warps in order) writes one partial per block.
//   2. margins_kernel, one block: adds the partials in a fixed order and computes s, d,
//      Mp = -expm1(-mu d) / mu, Mn = softplus(gamma s) / gamma (without overflow) and the
//      reduction's scales into a small device state.
//   3. pair_pass_kernel<kLoss> (same grid as pass 1) or, when the gradient is asked for,
//      pair_pass_kernel<kLossGrad>, grid (row tiles): block I visits every column tile J, in
//      order, on both sides of the diagonal. The hinge terms of the pairs i < j are summed as in
//      pass 1; the slopes W_IJ (scale_pos for an active positive pair, -scale_neg for an active
//      negative pair, 0 otherwise, on the diagonal and where the clamp is active) are stored
//      transposed in shared memory, their row sums kept in registers, and W_IJ x_J, a second GEMM
//      over D in slices of 64 columns (x_J's slice staged in shared memory, thread (ty, tx)
//      owning rows 4 ty + i and columns tx + 16 q), is added into a float32 accumulator of the
//      block's rows (grad_x itself for float32 x); a tile whose slopes are all zero is skipped.
//      At the end the block writes grad[I] = 2 (rowsum(W_I) x_I - sum_J W_IJ x_J) in x's dtype.
//      Each grad row is written by one block, in a fixed order: deterministic.
//   4. loss_kernel, one block: the loss from the pass-3 partials, in a fixed order.
//
// NaN, as the reference computes it. A hinge term max(t, 0) is active (its gradient passes) unless
// t <= 0, so a NaN term is active: a NaN distance or margin gives a NaN loss, and pairs with NaN
// margins keep their slopes. A pair whose squared distance is NaN or below the clamp's epsilon has
// no slope (the clamp's gradient). The reference's gradient comes from dense matrix products with
// the [N, N] gradient of the distance matrix, where a zero times a NaN or an infinity is NaN; that
// gradient is zero on and below the diagonal (only the pairs i < j are used), so every row meets a
// zero coefficient against every row of x, and every column of x holding a non-finite value is
// NaN in the whole gradient (those columns are found from the rows whose norm is not finite, so a
// finite batch costs one read of the norms). A
// batch without a positive (negative) pair has a NaN mean s (d), so a NaN loss, as in the
// reference: the op does not check it, which would need the pair counts on the host.
//
// Limits (checked before launch): 2 <= N <= 2**27, so that the pair counts, summed in double,
// are exact (N (N - 1) / 2 < 2**53); int64 offsets throughout. Loads are 16-byte (float32) or
// 8-byte (half, bfloat16) vectors when D % 4 == 0 and x is aligned, element loads otherwise. No
// tensor cores: half and bfloat16 run at the float32 FFMA rate. With the gradient the grid has one
// block per 64 rows, so small batches leave most of a large GPU idle. The dot products are summed
// in another order than the reference's matmul, so distances differ from it by rounding, and a
// pair within rounding of a margin may fall on the other side of it. Shared memory: about 37 KiB,
// static.
#include "../reduction.h"
#include "device_types.cuh"
#include "distance_tile.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/string_view.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace reidfast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;                      // rows of a row tile, and of a column tile
constexpr int kChunk = 16;                     // D elements per staged chunk of the dot products
constexpr int kStride = kTile + 4;             // floats between two k of a staged chunk
constexpr int kChunkFloats = 2 * kChunk * kStride;  // one chunk: the row tile's, then the column's
constexpr int kSlice = 64;                     // D columns per slice of the gradient's GEMM
constexpr int kSliceStride = kSlice + 4;       // floats between two rows of a staged slice
constexpr int kStageFloats = 2 * kChunkFloats;      // two chunks, or one slice
constexpr int kSlopeStride = kTile + 4;        // floats between two columns of the slope tile
constexpr int kTargetBlocks = 1024;            // blocks of the passes without gradient

// The pair passes.
constexpr int kStats = 0;     // sums and counts of the distances
constexpr int kLoss = 1;      // hinge terms
constexpr int kLossGrad = 2;  // hinge terms and the gradient

// The largest batch: the pair counts, sums of integers in double, are exact below 2**53 pairs.
constexpr int64_t kMaxBatch = int64_t{1} << 27;

static_assert(kThreads == kTile * (kChunk / 4), "one 4-element load per thread, tile and chunk");
static_assert(kThreads == kTile * (kSlice / 16), "four 4-element loads per thread and slice");
static_assert(kTile * kSliceStride <= kStageFloats, "a slice fits in the chunk buffers");
static_assert((kStride * 4) % 16 == 0 && (kSliceStride * 4) % 16 == 0 &&
                  (kSlopeStride * 4) % 16 == 0 && (kChunkFloats * 4) % 16 == 0,
              "16-byte aligned shared rows");

// Sizes of a pass, passed by value.
struct PassParams {
  int64_t n;      // rows of x
  int64_t d;      // embedding size
  int64_t tiles;  // ceil(n / kTile)
  bool vec_ok;    // D % 4 == 0 and x aligned: vector loads
};

// What the margins kernel leaves for the second pass and the loss kernel.
struct MarginState {
  float mp, mn;                  // the margins, as the pair tests use them
  float pos_slope, neg_slope;    // |dL/dD| of an active positive / negative pair
  double pos_scale, neg_scale;   // the reduction's scales of the two sums of hinge terms
};

// Splits of the column tiles in the passes without gradient: about kTargetBlocks blocks in all,
// from the tile count only (the summation order does not depend on the device).
int64_t column_splits(int64_t tiles) {
  return std::clamp<int64_t>((kTargetBlocks + tiles - 1) / tiles, 1, tiles);
}

// ---------------------------------------------------------------------------------------------
// Element types (float, __half, __nv_bfloat16): loaded 4 at a time as float32 (load_floats of
// distance_tile.cuh).

// A thread's 4 x 4 block of a tile product, rows 4 ty + i and columns tx + 16 q.
__device__ __forceinline__ void zero_4x4(float (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[i][q] = 0.f;
  }
}

// acc[i][q] += a[i] * b[16 q]: one step of the product over the shared dimension; a (16-byte
// aligned) holds the thread's 4 rows, b its first column of the 4 spaced 16 apart.
__device__ __forceinline__ void add_outer_product_4x4(float (&acc)[4][4], const float* a,
                                                      const float* b) {
  const float4 av = *reinterpret_cast<const float4*>(a);
  const float rows[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float bv = b[16 * q];
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i][q] = fmaf(rows[i], bv, acc[i][q]);
  }
}

// ---------------------------------------------------------------------------------------------
// Block-wide building blocks; every thread of the block calls them.

// acc[i][q] = x[row0 + 4 ty + i] . x[col0 + tx + 16 q] (0 for rows past n). `stage` holds
// kStageFloats; it is free again when this returns.
template <typename T>
__device__ __forceinline__ void dot_tile(const T* __restrict__ x, const PassParams& pp,
                                         int64_t row0, int64_t col0, float* stage,
                                         float (&acc)[4][4]) {
  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int lr = tid >> 2, kq = (tid & 3) * 4;  // the rows and elements this thread stages
  const T* a_row = row0 + lr < pp.n ? x + (row0 + lr) * pp.d : nullptr;
  const T* b_row = col0 + lr < pp.n ? x + (col0 + lr) * pp.d : nullptr;
  zero_4x4(acc);
  const int64_t chunks = (pp.d + kChunk - 1) / kChunk;
  float a[4], b[4];
  load_floats<T, 4>(a_row, kq, pp.d, pp.vec_ok, a);
  load_floats<T, 4>(b_row, kq, pp.d, pp.vec_ok, b);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    float* as = stage + (chunk & 1) * kChunkFloats;  // as[k * kStride + row]
    float* bs = as + kChunk * kStride;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      as[(kq + e) * kStride + lr] = a[e];
      bs[(kq + e) * kStride + lr] = b[e];
    }
    __syncthreads();
    if (chunk + 1 < chunks) {
      const int64_t k = (chunk + 1) * kChunk + kq;
      load_floats<T, 4>(a_row, k, pp.d, pp.vec_ok, a);
      load_floats<T, 4>(b_row, k, pp.d, pp.vec_ok, b);
    }
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      add_outer_product_4x4(acc, as + k * kStride + ty * 4, bs + k * kStride + tx);
    }
  }
  __syncthreads();  // every thread is done with the stages
}

// Calls visit(i, q, row * d + k) for the elements of an [n, d] row-major matrix that the thread's
// 4 x 4 block covers (rows row0 + 4 ty + i, columns k0 + tx + 16 q), skipping those out of bounds.
template <typename Visit>
__device__ __forceinline__ void for_each_owned_4x4(int64_t row0, int64_t k0, const PassParams& pp,
                                                   const Visit& visit) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty * 4 + i;
    if (row >= pp.n) continue;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t k = k0 + tx + 16 * q;
      if (k < pp.d) visit(i, q, row * pp.d + k);
    }
  }
}

// g[row0 + 4 ty + i][k] (+)= sum_c wt[c][4 ty + i] x[col0 + c][k] for k = k0 + tx + 16 q over the
// slices of D; written (rather than added) when `first`. wt [kTile][kSlopeStride]: the slope
// tile, transposed. `stage` holds kStageFloats; it is free again when this returns.
template <typename T>
__device__ __forceinline__ void accumulate_slopes(const T* __restrict__ x, const PassParams& pp,
                                                  int64_t row0, int64_t col0, float* stage,
                                                  const float* wt, float* g, bool first) {
  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int lr = tid >> 2, kq = (tid & 3) * 16;  // the row and 16 elements this thread stages
  const T* src = col0 + lr < pp.n ? x + (col0 + lr) * pp.d : nullptr;
  const int64_t slices = (pp.d + kSlice - 1) / kSlice;
  float v[4][4];
#pragma unroll
  for (int u = 0; u < 4; ++u) load_floats<T, 4>(src, kq + 4 * u, pp.d, pp.vec_ok, v[u]);
  for (int64_t slice = 0; slice < slices; ++slice) {
    const int64_t k0 = slice * kSlice;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      *reinterpret_cast<float4*>(stage + lr * kSliceStride + kq + 4 * u) =
          make_float4(v[u][0], v[u][1], v[u][2], v[u][3]);
    }
    __syncthreads();
    if (slice + 1 < slices) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        load_floats<T, 4>(src, k0 + kSlice + kq + 4 * u, pp.d, pp.vec_ok, v[u]);
      }
    }
    float out[4][4];
    zero_4x4(out);
#pragma unroll 8
    for (int c = 0; c < kTile; ++c) {
      add_outer_product_4x4(out, wt + c * kSlopeStride + ty * 4, stage + c * kSliceStride + tx);
    }
    for_each_owned_4x4(row0, k0, pp, [&](int i, int q, int64_t at) {
      g[at] = first ? out[i][q] : g[at] + out[i][q];
    });
    __syncthreads();  // every thread is done with the staged slice
  }
}

// Sums v over the block: warp butterflies, then the warps in order. The result is in thread 0.
template <int kValues>
__device__ __forceinline__ void block_sum(double (&v)[kValues], double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < kValues; ++q) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      v[q] += __shfl_xor_sync(kFullWarpMask, v[q], offset);
    }
    if (lane == 0) scratch[warp * kValues + q] = v[q];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int q = 0; q < kValues; ++q) {
      double total = 0;
      for (int w = 0; w < kWarps; ++w) total += scratch[w * kValues + q];
      v[q] = total;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels.

// The pair passes; see the header. Block (blockIdx.x, blockIdx.y) owns the rows
// [64 blockIdx.x, + 64) and writes its partial sums to partials[(blockIdx.y * gridDim.x +
// blockIdx.x) * kValues + v]: kStats (pos_sum, neg_sum, pos_count), otherwise (pos_terms,
// neg_terms), unscaled. kLossGrad: gridDim.y == 1; grad_acc [n, d] float32 and grad_out [n, d]
// (the same memory for float32 x); nonfinite [d]: per column of x, its NaN and infinities.
template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads)
    pair_pass_kernel(const T* __restrict__ x, const float* __restrict__ norms,
                     const int64_t* __restrict__ labels, const PassParams pp,
                     const MarginState* __restrict__ state, double* __restrict__ partials,
                     float* grad_acc, T* grad_out, const int32_t* __restrict__ nonfinite) {
  constexpr int kValues = kMode == kStats ? 3 : 2;
  __shared__ __align__(16) float stage[kStageFloats];
  __shared__ __align__(16) float slopes[kMode == kLossGrad ? kTile * kSlopeStride : 4];
  __shared__ float row_norm_s[kTile], col_norm_s[kTile];
  __shared__ int64_t row_label_s[kTile], col_label_s[kTile];
  __shared__ double scratch[kWarps * kValues];

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (tid < kTile) {
    const int64_t r = row0 + tid;
    row_norm_s[tid] = r < pp.n ? norms[r] : 0.f;
    row_label_s[tid] = r < pp.n ? labels[r] : 0;
  }
  float mp = 0.f, mn = 0.f, pos_slope = 0.f, neg_slope = 0.f;
  if constexpr (kMode != kStats) {
    mp = state->mp;
    mn = state->mn;
    pos_slope = state->pos_slope;
    neg_slope = state->neg_slope;
  }

  double sums[kValues];
#pragma unroll
  for (int q = 0; q < kValues; ++q) sums[q] = 0;
  float row_sum[4] = {0.f, 0.f, 0.f, 0.f};  // kLossGrad: rowsum(W) of rows 4 ty + i
  bool written = false;                      // kLossGrad: grad_acc holds this block's rows

  const int64_t tile_begin = kMode == kLossGrad ? 0 : static_cast<int64_t>(blockIdx.x) + blockIdx.y;
  const int64_t tile_step = kMode == kLossGrad ? 1 : gridDim.y;
  for (int64_t tile = tile_begin; tile < pp.tiles; tile += tile_step) {
    const int64_t col0 = tile * kTile;
    if (tid < kTile) {
      const int64_t c = col0 + tid;
      col_norm_s[tid] = c < pp.n ? norms[c] : 0.f;
      col_label_s[tid] = c < pp.n ? labels[c] : 0;
    }
    float acc[4][4];
    dot_tile<T>(x, pp, row0, col0, stage, acc);  // its barriers publish the norms and labels

    float tile_row_sum[4] = {0.f, 0.f, 0.f, 0.f};
    bool any_slope = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ty * 4 + i;
      const int64_t gi = row0 + r;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int c = tx + 16 * q;
        const int64_t gj = col0 + c;
        const bool valid = gi < pp.n && gj < pp.n;
        const bool counted = valid && gj > gi;  // the pair i < j, counted once
        const float square = pair_square(row_norm_s[r], col_norm_s[c], acc[i][q]);
        const float dist = clamp_square(square);
        const bool same = row_label_s[r] == col_label_s[c];
        if constexpr (kMode == kStats) {
          if (counted) {
            if (same) {
              sums[0] += static_cast<double>(dist);
              sums[2] += 1.0;
            } else {
              sums[1] += static_cast<double>(dist);
            }
          }
        } else {
          // The hinge term max(gap, 0) is active unless gap <= 0: a NaN gap is (max(NaN, 0) is
          // NaN, and its gradient passes), so a NaN distance or margin reaches the loss.
          const float gap = same ? dist - mp : mn - dist;
          float w = 0.f;
          if (!(gap <= 0.f)) {
            if (counted) (same ? sums[0] : sums[1]) += static_cast<double>(gap);
            w = same ? pos_slope : -neg_slope;
          }
          if constexpr (kMode == kLossGrad) {
            // No slope off the pairs, on the diagonal, or where the clamp's gradient is zero: a
            // square below its epsilon, or NaN.
            if (!valid || gi == gj || !(square >= static_cast<float>(kDistanceEps))) w = 0.f;
            slopes[c * kSlopeStride + r] = w;
            tile_row_sum[i] += w;
            any_slope = any_slope || w != 0.f;
          }
        }
      }
    }

    if constexpr (kMode == kLossGrad) {
      // Row sums over the tile's 64 columns: the 16 threads of a row group are 16 lanes.
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int offset = 1; offset < 16; offset <<= 1) {
          tile_row_sum[i] += __shfl_xor_sync(kFullWarpMask, tile_row_sum[i], offset);
        }
        row_sum[i] += tile_row_sum[i];
      }
      if (__syncthreads_or(any_slope)) {  // also publishes the slope tile
        accumulate_slopes<T>(x, pp, row0, col0, stage, slopes, grad_acc, !written);
        written = true;
      }
    }
    __syncthreads();  // the next tile overwrites the column norms, labels and slopes
  }

  if constexpr (kMode == kLossGrad) {
    // grad = 2 (rowsum(W) x - W x); each element by the thread that accumulated it. NaN in
    // the columns of x that hold a non-finite value (see the header).
    const int64_t slices = (pp.d + kSlice - 1) / kSlice;
    for (int64_t slice = 0; slice < slices; ++slice) {
      for_each_owned_4x4(row0, slice * kSlice, pp, [&](int i, int q, int64_t at) {
        const float wx = written ? grad_acc[at] : 0.f;
        const float g = 2.f * (row_sum[i] * to_float(x[at]) - wx);
        const bool poisoned = nonfinite[slice * kSlice + tx + 16 * q] != 0;
        grad_out[at] = from_float<T>(poisoned ? std::numeric_limits<float>::quiet_NaN() : g);
      });
    }
  }

  block_sum<kValues>(sums, scratch);
  if (tid == 0) {
    const int64_t slot = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
#pragma unroll
    for (int q = 0; q < kValues; ++q) partials[slot * kValues + q] = sums[q];
  }
}

// One block: the margins from pass 1's partials [num_partials][3]. Writes `state` and margins
// (Mp, Mn, s, d). Without positive (negative) pairs s (d) is 0 / 0 = NaN, as the reference's
// mean of no values.
__global__ void __launch_bounds__(kThreads)
    margins_kernel(const double* __restrict__ partials, int64_t num_partials, int64_t n,
                   double mu, double gamma, Reduction reduction, MarginState* __restrict__ state,
                   float* __restrict__ margins) {
  __shared__ double scratch[kWarps * 3];
  double v[3] = {0, 0, 0};
  for (int64_t p = threadIdx.x; p < num_partials; p += kThreads) {
#pragma unroll
    for (int q = 0; q < 3; ++q) v[q] += partials[p * 3 + q];
  }
  block_sum<3>(v, scratch);
  if (threadIdx.x != 0) return;
  const int64_t num_pairs = n * (n - 1) / 2;
  const int64_t num_pos = static_cast<int64_t>(v[2]);  // exact: a sum of integers below 2**53
  const int64_t num_neg = num_pairs - num_pos;
  const double s = v[0] / static_cast<double>(num_pos);
  const double d = v[1] / static_cast<double>(num_neg);
  const double mp = -expm1(-mu * d) / mu;
  const double gs = gamma * s;  // softplus(gs) = max(gs, 0) + log1p(exp(-|gs|)): no overflow
  const double mn = (fmax(gs, 0.0) + log1p(exp(-fabs(gs)))) / gamma;
  double pos_scale = 1, neg_scale = 1;
  if (reduction == Reduction::kMean) {
    pos_scale = neg_scale = 1.0 / static_cast<double>(num_pairs);
  } else if (reduction == Reduction::kBalanced) {
    pos_scale = 1.0 / static_cast<double>(num_pos);
    neg_scale = 1.0 / static_cast<double>(num_neg);
  }
  MarginState st;
  st.mp = static_cast<float>(mp);
  st.mn = static_cast<float>(mn);
  st.pos_slope = static_cast<float>(pos_scale);
  st.neg_slope = static_cast<float>(neg_scale);
  st.pos_scale = pos_scale;
  st.neg_scale = neg_scale;
  *state = st;
  margins[0] = static_cast<float>(mp);
  margins[1] = static_cast<float>(mn);
  margins[2] = static_cast<float>(s);
  margins[3] = static_cast<float>(d);
}

// One block: loss = pos_scale * sum of the positive terms + neg_scale * that of the negative ones,
// from pass 3's partials [num_partials][2].
__global__ void __launch_bounds__(kThreads)
    loss_kernel(const double* __restrict__ partials, int64_t num_partials,
                const MarginState* __restrict__ state, float* __restrict__ loss) {
  __shared__ double scratch[kWarps * 2];
  double v[2] = {0, 0};
  for (int64_t p = threadIdx.x; p < num_partials; p += kThreads) {
    v[0] += partials[p * 2];
    v[1] += partials[p * 2 + 1];
  }
  block_sum<2>(v, scratch);
  if (threadIdx.x == 0) {
    *loss = static_cast<float>(state->pos_scale * v[0] + state->neg_scale * v[1]);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_margin_forward_cuda(
    const at::Tensor& x_in, const at::Tensor& labels_in, double mu, double gamma,
    c10::string_view reduction_name, bool compute_grad) {
  TORCH_INTERNAL_ASSERT(x_in.is_cuda());
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK_TYPE(dtype != at::kDouble,
                   "adaptive_margin_loss (CUDA): x is float64, which only the reference and CPU "
                   "backends support; use float32, float16 or bfloat16 on the GPU");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                   "adaptive_margin_loss (CUDA): x must be float32, float16 or bfloat16, got ",
                   dtype);
  TORCH_CHECK_VALUE(x_in.dim() == 2, "adaptive_margin_loss (CUDA): x must be [N, D], got ",
                    x_in.sizes());
  TORCH_CHECK_VALUE(labels_in.dim() == 1 && labels_in.size(0) == x_in.size(0),
                    "adaptive_margin_loss (CUDA): labels must be [N] with N = ", x_in.size(0),
                    ", got ", labels_in.sizes());
  TORCH_CHECK_TYPE(labels_in.scalar_type() == at::kLong,
                   "adaptive_margin_loss (CUDA): labels must be int64, got ",
                   labels_in.scalar_type());
  TORCH_CHECK(labels_in.device() == x_in.device(),
              "adaptive_margin_loss (CUDA): labels must be on x's device ", x_in.device(),
              ", got ", labels_in.device());
  TORCH_CHECK_VALUE(mu > 0 && gamma > 0,
                    "adaptive_margin_loss (CUDA): mu and gamma must be > 0, got mu = ", mu,
                    ", gamma = ", gamma);
  const Reduction reduction = parse_reduction(reduction_name, "adaptive_margin_loss (CUDA)");
  const int64_t n = x_in.size(0), d = x_in.size(1);
  TORCH_CHECK_VALUE(n >= 2, "adaptive_margin_loss (CUDA): the batch needs a positive and a "
                    "negative pair, got N = ", n);
  TORCH_CHECK_VALUE(n <= kMaxBatch, "adaptive_margin_loss (CUDA): N = ", n,
                    " exceeds the kernel's limit of ", kMaxBatch,
                    " (pair counts summed exactly in double)");
  const int64_t tiles = (n + kTile - 1) / kTile;

  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const auto float_options = x.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({}, float_options);
  at::Tensor margins = at::empty({4}, float_options);
  at::Tensor grad = compute_grad ? at::empty({n, d}, x.options()) : at::empty({0, d}, x.options());
  at::Tensor grad_acc;
  if (compute_grad && dtype != at::kFloat) grad_acc = at::empty({n, d}, float_options);
  at::Tensor nonfinite;
  if (compute_grad) nonfinite = at::zeros({d}, x.options().dtype(at::kInt));
  at::Tensor norms = at::empty({n}, float_options);
  at::Tensor state = at::empty({static_cast<int64_t>(sizeof(MarginState))},
                               x.options().dtype(at::kByte));

  const int64_t splits = column_splits(tiles);
  const int64_t stats_partials = tiles * splits;
  const int64_t loss_partials = compute_grad ? tiles : tiles * splits;
  at::Tensor partials =
      at::empty({stats_partials * 3 + loss_partials * 2}, x.options().dtype(at::kDouble));
  double* stats_ptr = partials.mutable_data_ptr<double>();
  double* loss_ptr = stats_ptr + stats_partials * 3;
  MarginState* state_ptr = reinterpret_cast<MarginState*>(state.mutable_data_ptr<uint8_t>());

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  REIDFAST_DISPATCH_GPU_FLOATS(dtype, "adaptive_margin_forward_cuda", [&] {
    using T = typename DeviceType<scalar_t>::type;
    const T* x_ptr = reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>());
    const int64_t* label_ptr = labels.const_data_ptr<int64_t>();
    float* norm_ptr = norms.mutable_data_ptr<float>();
    const int64_t elem = x.element_size();
    PassParams pp{};
    pp.n = n;
    pp.d = d;
    pp.tiles = tiles;
    pp.vec_ok = rows_aligned(x_ptr, d, elem, 4 * static_cast<int>(elem));

    launch_row_norms<T>(x_ptr, n, d, rows_aligned(x_ptr, d, elem, 16), norm_ptr, stream);

    const dim3 split_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
    pair_pass_kernel<T, kStats><<<split_grid, kThreads, 0, stream>>>(
        x_ptr, norm_ptr, label_ptr, pp, nullptr, stats_ptr, nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    margins_kernel<<<1, kThreads, 0, stream>>>(stats_ptr, stats_partials, n, mu, gamma, reduction,
                                               state_ptr, margins.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    if (compute_grad) {
      int32_t* nonfinite_ptr = nonfinite.mutable_data_ptr<int32_t>();
      launch_nonfinite_counts<T>(x_ptr, n, d, norm_ptr, nonfinite_ptr, stream);
      T* grad_ptr = reinterpret_cast<T*>(grad.mutable_data_ptr<scalar_t>());
      float* acc_ptr = grad_acc.defined() ? grad_acc.mutable_data_ptr<float>()
                                          : reinterpret_cast<float*>(grad_ptr);
      pair_pass_kernel<T, kLossGrad><<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
          x_ptr, norm_ptr, label_ptr, pp, state_ptr, loss_ptr, acc_ptr, grad_ptr, nonfinite_ptr);
    } else {
      pair_pass_kernel<T, kLoss><<<split_grid, kThreads, 0, stream>>>(
          x_ptr, norm_ptr, label_ptr, pp, state_ptr, loss_ptr, nullptr, nullptr, nullptr);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    loss_kernel<<<1, kThreads, 0, stream>>>(loss_ptr, loss_partials, state_ptr,
                                            loss.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, margins, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) {
  m.impl("adaptive_margin_forward", &adaptive_margin_forward_cuda);
}

}  // namespace reidfast
