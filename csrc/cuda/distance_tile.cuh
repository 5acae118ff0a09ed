// Device building blocks of the CUDA pairwise ops (triplet_select, adaptive_margin), which never
// write the distance matrix to global memory: the squared row norms, the loads that stage row
// segments of x and of the reference set for an on-chip tile of dot products, the squared
// distance of a pair from its norms and dot product, and the count of non-finite values per
// column (for the NaN pattern of the gradients). The distance convention, its epsilon and its
// NaN-keeping clamp come from csrc/distance.h.
//
// A row segment moves as a pack of kBytes (8 or 16) raw bytes, two 2-byte elements per 32-bit
// word; its elements become float32 only where they are used (unpack). Rows past the end and
// elements past D load as zeros, which add nothing to a dot product or a norm. Row offsets are
// int64 throughout.
#pragma once

#include "../distance.h"
#include "device_types.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace reidfast {

constexpr unsigned kFullWarpMask = 0xffffffffu;

// The raw bits of a pack of kBytes bytes.
template <int kBytes>
using PackBits = std::conditional_t<kBytes == 16, uint4, uint2>;

// Elements of T per pack of kBytes.
template <typename T, int kBytes>
constexpr int kPackElems = kBytes / static_cast<int>(sizeof(T));

// Whether every row of a row-major [rows, d] matrix of `elem_size`-byte elements at `data` starts
// `bytes`-aligned, so that packs of `bytes` at multiples of the pack width are single vector loads.
inline bool rows_aligned(const void* data, int64_t d, int64_t elem_size, int bytes) {
  return (d * elem_size) % bytes == 0 && reinterpret_cast<uintptr_t>(data) % bytes == 0;
}

// The 32-bit words of a pack, and a pack from its words.
__device__ __forceinline__ void pack_words(const uint4& p, uint32_t (&w)[4]) {
  w[0] = p.x;
  w[1] = p.y;
  w[2] = p.z;
  w[3] = p.w;
}
__device__ __forceinline__ void pack_words(const uint2& p, uint32_t (&w)[2]) {
  w[0] = p.x;
  w[1] = p.y;
}
__device__ __forceinline__ uint4 make_pack(const uint32_t (&w)[4]) {
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ uint2 make_pack(const uint32_t (&w)[2]) {
  return make_uint2(w[0], w[1]);
}

// Elements [e0, e0 + kPackElems) of a row as raw bits; zeros past d, and for row == nullptr (a
// row past the end). vec_ok: rows are kBytes-aligned (rows_aligned) and e0 is a multiple of the
// pack width, so a pack that lies inside the row is one vector load. Index: int64_t, or int
// where the caller knows d + the pack width < 2**31 (fewer registers in a tight loop).
template <typename T, int kBytes, typename Index>
__device__ __forceinline__ PackBits<kBytes> load_pack(const T* row, Index e0, Index d,
                                                      bool vec_ok) {
  static_assert(kBytes == 8 || kBytes == 16, "packs of 8 or 16 bytes");
  constexpr int kElems = kPackElems<T, kBytes>;
  constexpr int kSize = static_cast<int>(sizeof(T));
  uint32_t words[kBytes / 4] = {};
  if (row == nullptr) return make_pack(words);
  if (vec_ok && e0 + kElems <= d) return __ldg(reinterpret_cast<const PackBits<kBytes>*>(row + e0));
#pragma unroll
  for (int e = 0; e < kElems; ++e) {
    if (e0 + e < d) words[e * kSize / 4] |= bits_of(row[e0 + e]) << (8 * (e * kSize % 4));
  }
  return make_pack(words);
}

// The elements of a pack as float32, in memory order.
template <typename T, int kBytes>
__device__ __forceinline__ void unpack(const PackBits<kBytes>& pack,
                                       float (&out)[kPackElems<T, kBytes>]) {
  uint32_t words[kBytes / 4];
  pack_words(pack, words);
#pragma unroll
  for (int w = 0; w < kBytes / 4; ++w) {
    if constexpr (std::is_same_v<T, float>) {
      out[w] = __uint_as_float(words[w]);
    } else {
      out[2 * w] = half_bits_to_float<T>(words[w] & 0xffffu);
      out[2 * w + 1] = half_bits_to_float<T>(words[w] >> 16);
    }
  }
}

// A pack of kPackElems elements rounded from float32 (the inverse of unpack).
template <typename T, int kBytes>
__device__ __forceinline__ PackBits<kBytes> pack_floats(const float (&in)[kPackElems<T, kBytes>]) {
  constexpr int kSize = static_cast<int>(sizeof(T));
  uint32_t words[kBytes / 4] = {};
#pragma unroll
  for (int e = 0; e < kPackElems<T, kBytes>; ++e) {
    words[e * kSize / 4] |= bits_of(from_float<T>(in[e])) << (8 * (e * kSize % 4));
  }
  return make_pack(words);
}

// Elements [e0, e0 + kCount) of a row as float32 (a pack of kCount elements: see load_pack).
template <typename T, int kCount>
__device__ __forceinline__ void load_floats(const T* row, int64_t e0, int64_t d, bool vec_ok,
                                            float (&out)[kCount]) {
  constexpr int kBytes = kCount * static_cast<int>(sizeof(T));
  unpack<T, kBytes>(load_pack<T, kBytes, int64_t>(row, e0, d, vec_ok), out);
}

// The squared distance of a pair from the squared norms and the dot product, before the clamp
// (clamp_square of distance.h); NaN and inf propagate.
__device__ __forceinline__ float pair_square(float x_norm, float r_norm, float dot) {
  return (x_norm + r_norm) - 2.f * dot;
}

// ---------------------------------------------------------------------------------------------
// Kernels. A warp per row; blocks of kRowThreads threads.

constexpr int kRowThreads = 256;
constexpr int kRowsPerBlock = kRowThreads / 32;

// out[row] = sum of squares of x's row [rows, d], in float32 (NaN or inf when the row holds one).
// vec_ok: rows are 16-byte aligned (rows_aligned), so the row is read in 16-byte packs.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    row_norms_kernel(const T* __restrict__ x, int64_t rows, int64_t d, bool vec_ok,
                     float* __restrict__ out) {
  constexpr int kVec = kPackElems<T, 16>;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp
  const T* src = x + row * d;
  float sum = 0.f;
  if (vec_ok) {  // d is a multiple of the pack
    for (int64_t e = static_cast<int64_t>(lane) * kVec; e < d; e += 32 * kVec) {
      float f[kVec];
      unpack<T, 16>(__ldg(reinterpret_cast<const uint4*>(src + e)), f);
#pragma unroll
      for (int v = 0; v < kVec; ++v) sum = fmaf(f[v], f[v], sum);
    }
  } else {
    for (int64_t e = lane; e < d; e += 32) {
      const float f = to_float(src[e]);
      sum = fmaf(f, f, sum);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    sum += __shfl_xor_sync(kFullWarpMask, sum, offset);
  }
  if (lane == 0) out[row] = sum;
}

// counts[c] += the number of rows of x [rows, d] holding a NaN or an infinity in column c;
// counts [d] is zeroed by the caller. norms (nullable): the rows' squared norms from
// row_norms_kernel; a row whose norm is finite holds only finite values (a NaN or an infinity
// makes the sum of squares non-finite), so only the other rows are read.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    nonfinite_counts_kernel(const T* __restrict__ x, int64_t rows, int64_t d,
                            const float* __restrict__ norms, int32_t* __restrict__ counts) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  if (norms != nullptr && isfinite(norms[row])) return;
  const T* src = x + row * d;
  for (int64_t e = lane; e < d; e += 32) {
    if (!isfinite(to_float(src[e]))) atomicAdd(counts + e, 1);
  }
}

// Host side: the launches of the kernels above on `stream` (rows >= 1).
template <typename T>
void launch_row_norms(const T* x, int64_t rows, int64_t d, bool vec_ok, float* out,
                      cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  row_norms_kernel<T><<<blocks, kRowThreads, 0, stream>>>(x, rows, d, vec_ok, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_nonfinite_counts(const T* x, int64_t rows, int64_t d, const float* norms,
                             int32_t* counts, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  nonfinite_counts_kernel<T><<<blocks, kRowThreads, 0, stream>>>(x, rows, d, norms, counts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace reidfast
