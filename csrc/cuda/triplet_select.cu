// CUDA kernels of triplet_select: per anchor, the k-th largest positive and the p-th smallest
// negative distance to a reference set (see reidfast/ops/triplet_select.py), without ever writing
// the N x M distance matrix to global memory, and the gradient of the selected distances.
//
// Distances. d(i, j) = sqrt(clamp_square(|x_i|^2 + |r_j|^2 - 2 x_i.r_j)) in float32 (squared: the
// clamped value; NaN and inf propagate), the convention of csrc/distance.h. The squared row norms
// are computed once, by row_norms_kernel (distance_tile.cuh), into an [N (+ M)] float32 buffer;
// the dot products come from tiles computed on chip.
//
// Tiling. A block (256 threads, 8 warps) owns kTileRows = 64 anchors and walks a range of
// reference tiles of kTileCols = 128 rows. Per tile, D is consumed in chunks of 64 bytes per row
// (16 float32 / 32 half or bfloat16 elements): the 64 x rows and 128 ref rows of a chunk are
// staged in shared memory (row stride 80 bytes, so 16-byte accesses of 8 consecutive rows hit
// distinct banks), double-buffered, with the next chunk's 16-byte global loads in flight in
// registers while the current chunk is multiplied (one __syncthreads per chunk). Products:
//   - half (sm_75+) and bfloat16 (sm_80+): tensor cores through WMMA 16x16x16 with float32
//     accumulators, each warp a 32 x 32 block of the 64 x 128 tile. A product of two half or
//     bfloat16 values is exact in float32, so, as on the float32 path, only the accumulation
//     rounds.
//   - float32, and bfloat16 on sm_75: FFMA, each thread 4 anchors x 8 ref rows.
// The 64 x 128 float32 dot tile is then written to shared memory (aliasing the staging buffers)
// and turned into distances by the selection.
//
// Selection. Warp w keeps the running selections of anchors 8w .. 8w + 7 in registers: per anchor
// a list of the k best positives and one of the p best negatives, lane i holding the i-th best
// (distance, index) under ranks_before of triplet_select.h (the rule every backend uses), unused
// slots holding a sentinel that ranks after every real candidate ((-inf, kNoIndex) for positives,
// (NaN, kNoIndex) for negatives). A row of the tile is offered 32 candidates at a time: one
// ballot finds those that beat the list's last entry (most do not once the list is full), and
// each of them is inserted in a few warp instructions (a ballot gives its slot, __shfl_up_sync
// shifts the entries after it), whatever k and p are. (RunningSelection of the header, one thread
// shifting up to 32 entries per insertion, would serialise the lanes of a warp on large k.) The
// lists take 32 registers of a thread. The kernel is compiled for two resident blocks per SM (128
// registers a thread) where two blocks' shared memory fits, and for one on Turing, whose 64 KiB
// per SM hold one block: there a cap of 128 registers would only make it spill.
//
// Splits. Long reference sets (memory banks) are split across blocks: the grid is (row tiles,
// splits), block (a, s) scanning the s-th contiguous range of reference tiles (blockIdx.x runs
// fastest, so the blocks reading the same reference rows run together and share them in L2). With
// one split the block writes the result; otherwise it writes its k + p list entries to a
// temporary [splits][N][k + p] (float32 distance, int32 index) and merge_kernel, a warp per
// anchor, runs the same insertion over the splits' lists. The rule is a strict total order, so the
// result depends neither on the split count nor on the order of tiles or splits. Splits are
// chosen to give about four blocks per SM (two resident, two waves): temporary memory is
// O(N * splits * (k + p)) with splits <= 4 * SMs.
//
// Backward. For a selected pair (i, j) with distance d and incoming gradient g, the coefficient
// c = g / d (2 g when squared; 0 for a missing pair, the anchor's own pair and a clamped or NaN
// distance) gives grad x_i += c (x_i - r_j) and grad r_j += c (r_j - x_i), each row summed in the
// reference's form: (sum of its coefficients) times the row, minus the sum of c times the linked
// rows. The partners' terms are gathered, not scattered: the pairs are sorted by partner row (a
// stable sort, so anchors stay in order), and a warp per gradient row adds its own pairs' terms
// and then its partner segment's, in that fixed order: deterministic, without atomics. The
// [M, D] gradient of the reference set is neither allocated nor computed unless asked for
// (ref_grad). NaN and inf, as in the reference, whose gradient comes from dense matrix products
// with the [N, M] gradient of the distance matrix: there a zero coefficient times a NaN or an
// infinity is NaN, so entry c of a gradient row is NaN where the other operand holds more
// non-finite values in column c than the rows linked to that row by a live pair do (one product
// for grad_x against a bank or for grad_ref, two under self_reference). Counting them reads x and
// ref once more.
//
// Limits (checked before launch): k, p in [1, 32] (a list is one warp); N, M <= 2**31 - 128
// (reference indices are int32 inside the kernels, up to the last tile's padding, and the
// sentinel is INT32_MAX); D <= 2**31 - 66 (chunk offsets are int32). x and ref are made
// contiguous (16-byte loads when every row starts 16-byte aligned, element loads otherwise);
// row offsets are int64. The dot products are summed in another order than the reference's
// matmul, so distances differ from it by rounding; exact ties (duplicate embeddings,
// integer-valued data) resolve exactly as the specification says. Shared memory: 36 KiB, static.
// Nothing is read back to the host: the forward and backward can be captured in a CUDA graph.
#include "../triplet_select.h"

#include "device_types.cuh"
#include "distance_tile.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace reidfast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileRows = 64;                         // anchors per block
constexpr int kTileCols = 128;                        // reference rows per tile
constexpr int kRowsPerWarp = kTileRows / kWarps;      // anchors whose selections a warp keeps
constexpr int kChunkBytes = 64;                       // bytes of D per staged row and chunk
constexpr int kStageRowBytes = 80;                    // staged row stride: 16 * odd
constexpr int kStageRows = kTileRows + kTileCols;     // x rows first, then ref rows
constexpr int kStageBytes = kStageRows * kStageRowBytes;
constexpr int kDotStride = kTileCols + 4;             // floats between two rows of the dot tile
constexpr int kDotBytes = kTileRows * kDotStride * 4;
constexpr int kUnionBytes = 2 * kStageBytes > kDotBytes ? 2 * kStageBytes : kDotBytes;
constexpr int kSharedBytes = kUnionBytes + (kTileRows + kTileCols) * (4 + 8);
constexpr int kMaxRank = 32;
constexpr int32_t kNoIndex = std::numeric_limits<int32_t>::max();
// The most anchors and reference rows: the column index of the last tile's padding,
// ceil(M / kTileCols) * kTileCols - 1, must stay below kNoIndex in int32.
constexpr int64_t kMaxRows = int64_t{std::numeric_limits<int32_t>::max()} - kTileCols + 1;
// The largest D: chunk offsets up to D + kChunkBytes are int32.
constexpr int64_t kMaxDim = int64_t{std::numeric_limits<int32_t>::max()} - kChunkBytes - 1;

// Blocks per SM the selection kernel is compiled for: two where two blocks' shared memory fits
// an SM, one on Turing (sm_75: 64 KiB of shared memory per SM, less than two blocks' 72 KiB).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
constexpr int kSelectMinBlocks = 1;
#else
constexpr int kSelectMinBlocks = 2;
#endif

static_assert(kThreads == kTileRows * (kChunkBytes / 16), "one x pack per thread and chunk");
static_assert(kTileCols == 2 * kTileRows, "two ref packs per thread and chunk");
static_assert(kUnionBytes % 128 == 0, "the norm and label arrays follow 128-byte aligned");

// Everything the selection kernel needs besides pointers, passed by value.
struct SelectParams {
  int64_t n;  // anchors
  int64_t m;  // reference rows
  int64_t d;  // embedding size
  int32_t k;  // rank of the positive, largest first
  int32_t p;  // rank of the negative, smallest first
  int32_t col_tiles;        // ceil(m / kTileCols)
  int32_t tiles_per_split;  // reference tiles per blockIdx.y
  bool self_reference;
  bool squared;
  bool vec_ok;        // every row of x and ref starts 16-byte aligned (16-byte loads)
  bool final_output;  // one split: write the result instead of partial lists
};

// Reference tiles per split and the split count (gridDim.y).
struct SplitPlan {
  int32_t tiles_per_split;
  int32_t splits;
};

// About four blocks per SM in all: two resident (36 KiB of shared memory each), two waves.
SplitPlan plan_splits(int64_t row_tiles, int64_t col_tiles, int sm_count) {
  const int64_t target = 4 * static_cast<int64_t>(std::max(sm_count, 1));
  const int64_t wanted = std::min(std::max((target + row_tiles - 1) / row_tiles, int64_t{1}),
                                  col_tiles);
  const int64_t per_split = (col_tiles + wanted - 1) / wanted;
  return {static_cast<int32_t>(per_split),
          static_cast<int32_t>((col_tiles + per_split - 1) / per_split)};
}

// ---------------------------------------------------------------------------------------------
// Element types (float, __half, __nv_bfloat16). Data moves as raw 16-byte packs (uint4,
// distance_tile.cuh), which keeps two 2-byte elements per register; elements become float32 only
// where they are multiplied.

template <typename T>
constexpr int kVec = kPackElems<T, 16>;  // elements per 16-byte pack
template <typename T>
constexpr int kChunk = kChunkBytes / static_cast<int>(sizeof(T));  // D elements per chunk
template <typename T>
constexpr int kStageStride = kStageRowBytes / static_cast<int>(sizeof(T));
template <typename T>
constexpr int kStageElems = kStageRows * kStageStride<T>;

// Whether the products of T run on tensor cores in this compilation pass.
template <typename T>
__host__ __device__ constexpr bool use_tensor_cores() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return !std::is_same_v<T, float>;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  return std::is_same_v<T, __half>;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------------
// Staging of one D chunk: stage rows [0, 64) are the block's anchors, [64, 192) the tile's
// reference rows. Thread t loads bytes [16 (t % 4), 16 (t % 4) + 16) of the chunk of x row t / 4
// and of ref rows t / 4 and 64 + t / 4 (4 consecutive threads read 64 contiguous bytes of a row).
// Rows past the end and elements past D are zeros, which add nothing to the dot products.

template <typename T>
struct ChunkLoader {
  // This thread's x row and ref rows r and kTileRows + r (nullptr past the end). At 128
  // registers a thread, the tensor-core path (whose fragments take more) keeps two pointers and
  // derives the second ref row at each load, the FFMA path keeps three: the split in which ptxas
  // spills least.
  static constexpr bool kDerivedRow = use_tensor_cores<T>();
  const T* rows[kDerivedRow ? 2 : 3];
  bool second_ref;  // kDerivedRow: ref row kTileRows + r exists
  uint4 packs[3];

  __device__ __forceinline__ void begin_tile(const T* x, const T* ref, int64_t row0,
                                             int64_t col0, const SelectParams& sp) {
    const int r = threadIdx.x >> 2;
    rows[0] = row0 + r < sp.n ? x + (row0 + r) * sp.d : nullptr;
    rows[1] = col0 + r < sp.m ? ref + (col0 + r) * sp.d : nullptr;
    const bool second = col0 + kTileRows + r < sp.m;
    if constexpr (kDerivedRow) {
      second_ref = second;
    } else {
      rows[2] = second ? ref + (col0 + kTileRows + r) * sp.d : nullptr;
    }
  }

  // int offsets: d <= kMaxDim.
  __device__ __forceinline__ void load(int k0, int d, bool vec_ok) {
    const int e0 = k0 + (threadIdx.x & 3) * kVec<T>;
    const T* second;
    if constexpr (kDerivedRow) {
      second = second_ref ? rows[1] + static_cast<int64_t>(kTileRows) * d : nullptr;
    } else {
      second = rows[2];
    }
    packs[0] = load_pack<T, 16, int>(rows[0], e0, d, vec_ok);
    packs[1] = load_pack<T, 16, int>(rows[1], e0, d, vec_ok);
    packs[2] = load_pack<T, 16, int>(second, e0, d, vec_ok);
  }

  __device__ __forceinline__ void store(T* stage) const {
    unsigned char* dst = reinterpret_cast<unsigned char*>(stage) +
                         (threadIdx.x >> 2) * kStageRowBytes + (threadIdx.x & 3) * 16;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      *reinterpret_cast<uint4*>(dst + i * kTileRows * kStageRowBytes) = packs[i];
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Dot products of a 64 x 128 tile, accumulated over the staged chunks, then stored to the dot
// tile dot[anchor * kDotStride + ref].

// FFMA: thread (ty, tx) = (t / 16, t % 16) owns anchors 4 ty .. 4 ty + 3 and ref rows tx + 16 j,
// j < 8. Its ref rows are 16 apart, so the 16-byte loads of 8 consecutive tx hit distinct banks;
// the two anchor rows a warp reads are broadcasts.
template <typename T>
struct FmaTile {
  float acc[4][8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    }
  }

  __device__ __forceinline__ void accumulate(const T* stage) {
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const unsigned char* xs =
        reinterpret_cast<const unsigned char*>(stage) + ty * 4 * kStageRowBytes;
    const unsigned char* rs =
        reinterpret_cast<const unsigned char*>(stage) + (kTileRows + tx) * kStageRowBytes;
#pragma unroll
    for (int g = 0; g < kChunkBytes; g += 16) {
      float a[4][kVec<T>];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        unpack<T, 16>(*reinterpret_cast<const uint4*>(xs + i * kStageRowBytes + g), a[i]);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float b[kVec<T>];
        unpack<T, 16>(*reinterpret_cast<const uint4*>(rs + 16 * j * kStageRowBytes + g), b);
#pragma unroll
        for (int e = 0; e < kVec<T>; ++e) {
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(a[i][e], b[e], acc[i][j]);
        }
      }
    }
  }

  __device__ __forceinline__ void store(float* dot) const {
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 8; ++j) dot[(ty * 4 + i) * kDotStride + tx + 16 * j] = acc[i][j];
    }
  }
};

// WMMA: warp w owns anchors 32 (w / 4) .. + 31 and ref rows 32 (w % 4) .. + 31 as 2 x 2
// fragments. A = the staged x rows (row major), B = the staged ref rows read as a column-major
// K x 128 matrix: B(k, n) = ref row n, element k. Fragment pointers are 32-byte aligned (rows
// 16 * 80 bytes apart, k steps of 32 bytes) and the leading dimension is 40 elements.
template <typename T>
struct WmmaTile {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.f);
    }
  }

  __device__ __forceinline__ void accumulate(const T* stage) {
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x >> 5;
    const T* xs = stage + (warp >> 2) * 32 * kStageStride<T>;
    const T* rs = stage + (kTileRows + (warp & 3) * 32) * kStageStride<T>;
#pragma unroll
    for (int ks = 0; ks < kChunk<T>; ks += 16) {
      // Both B fragments, then one A fragment at a time: three fragments live, not four.
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(b[j], rs + j * 16 * kStageStride<T> + ks, kStageStride<T>);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, xs + i * 16 * kStageStride<T> + ks, kStageStride<T>);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
      }
    }
  }

  __device__ __forceinline__ void store(float* dot) const {
    const int warp = threadIdx.x >> 5;
    float* base = dot + (warp >> 2) * 32 * kDotStride + (warp & 3) * 32;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        nvcuda::wmma::store_matrix_sync(base + i * 16 * kDotStride + j * 16, acc[i][j],
                                        kDotStride, nvcuda::wmma::mem_row_major);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Warp-wide selections: lane i holds the i-th best entry of a list of `cap` <= 32 entries; lanes
// >= cap hold the sentinel. Every function is called by all 32 lanes with warp-uniform arguments
// (except the per-lane candidate).

template <bool kLargest>
__device__ __forceinline__ bool before(float a, int32_t ia, float b, int32_t ib) {
  return ranks_before<kLargest>(a, static_cast<int64_t>(ia), b, static_cast<int64_t>(ib));
}

// The entry of an empty slot: ranks after every candidate (NaN ranks last among distances, and
// kNoIndex after every index).
template <bool kLargest>
__device__ __forceinline__ float sentinel_dist() {
  return kLargest ? -std::numeric_limits<float>::infinity()
                  : std::numeric_limits<float>::quiet_NaN();
}

// Offers each lane's candidate (d, j) where `member`. (thr_d, thr_i) is entry cap - 1, the one a
// candidate must beat; it is kept up to date here.
template <bool kLargest>
__device__ __forceinline__ void warp_offer(float& mine_d, int32_t& mine_i, float& thr_d,
                                           int32_t& thr_i, int cap, float d, int32_t j,
                                           bool member, int lane) {
  unsigned pending = __ballot_sync(kFullWarpMask, member && before<kLargest>(d, j, thr_d, thr_i));
  while (pending != 0) {
    const int src = __ffs(static_cast<int>(pending)) - 1;
    pending &= pending - 1;
    const float cd = __shfl_sync(kFullWarpMask, d, src);
    const int32_t cj = __shfl_sync(kFullWarpMask, j, src);
    if (!before<kLargest>(cd, cj, thr_d, thr_i)) continue;  // an earlier insertion raised the bar
    // The entries that rank before the candidate are a prefix of the list: it goes after them.
    const int slot = __popc(
        __ballot_sync(kFullWarpMask, lane < cap && before<kLargest>(mine_d, mine_i, cd, cj)));
    const float up_d = __shfl_up_sync(kFullWarpMask, mine_d, 1);
    const int32_t up_i = __shfl_up_sync(kFullWarpMask, mine_i, 1);
    if (lane == slot) {
      mine_d = cd;
      mine_i = cj;
    } else if (lane > slot && lane < cap) {
      mine_d = up_d;
      mine_i = up_i;
    }
    thr_d = __shfl_sync(kFullWarpMask, mine_d, cap - 1);
    thr_i = __shfl_sync(kFullWarpMask, mine_i, cap - 1);
  }
}

// Writes the list's min(cap, entries)-th entry, or (-inf / +inf, -1) when it is empty.
template <bool kLargest, typename T>
__device__ __forceinline__ void write_selected(float mine_d, int32_t mine_i, int cap, int lane,
                                               T* out_dist, int64_t* out_index) {
  const unsigned filled = __ballot_sync(kFullWarpMask, lane < cap && mine_i != kNoIndex);
  if (filled == 0) {
    if (lane == 0) {
      *out_dist = from_float<T>(kLargest ? -std::numeric_limits<float>::infinity()
                                         : std::numeric_limits<float>::infinity());
      *out_index = -1;
    }
    return;
  }
  if (lane == 31 - __clz(static_cast<int>(filled))) {
    *out_dist = from_float<T>(mine_d);
    *out_index = mine_i;
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels.

// Block (blockIdx.x, blockIdx.y): anchors [64 blockIdx.x, + 64) against reference tiles
// [blockIdx.y * tiles_per_split, + tiles_per_split). x_norm [n], ref_norm [m]: squared norms.
// Writes the result (sp.final_output) or the lists to part_* [splits][n][k + p].
template <typename T>
__global__ void __launch_bounds__(kThreads, kSelectMinBlocks)
    select_kernel(const T* __restrict__ x, const T* __restrict__ ref,
                  const float* __restrict__ x_norm, const float* __restrict__ ref_norm,
                  const int64_t* __restrict__ labels, const int64_t* __restrict__ ref_labels,
                  const SelectParams sp, float* __restrict__ part_dist,
                  int32_t* __restrict__ part_index, T* __restrict__ pos_dist,
                  T* __restrict__ neg_dist, int64_t* __restrict__ pos_index,
                  int64_t* __restrict__ neg_index) {
  using Tile = std::conditional_t<use_tensor_cores<T>(), WmmaTile<T>, FmaTile<T>>;
  __shared__ __align__(128) unsigned char shared[kSharedBytes];
  T* stages = reinterpret_cast<T*>(shared);
  float* dot = reinterpret_cast<float*>(shared);  // aliases the stages once a tile is multiplied
  float* x_norm_s = reinterpret_cast<float*>(shared + kUnionBytes);
  float* ref_norm_s = x_norm_s + kTileRows;
  int64_t* x_label_s = reinterpret_cast<int64_t*>(ref_norm_s + kTileCols);
  int64_t* ref_label_s = x_label_s + kTileRows;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int tile_begin = static_cast<int>(blockIdx.y) * sp.tiles_per_split;
  const int tile_end = min(tile_begin + sp.tiles_per_split, sp.col_tiles);
  const int d = static_cast<int>(sp.d);
  const int chunks = d > 0 ? (d + kChunk<T> - 1) / kChunk<T> : 1;
  const int32_t m_32 = static_cast<int32_t>(sp.m);

  if (tid < kTileRows) {
    const int64_t a = row0 + tid;
    x_norm_s[tid] = a < sp.n ? x_norm[a] : 0.f;
    x_label_s[tid] = a < sp.n ? labels[a] : 0;
  }

  float pos_d[kRowsPerWarp], neg_d[kRowsPerWarp];
  int32_t pos_i[kRowsPerWarp], neg_i[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    pos_d[r] = sentinel_dist<true>();
    neg_d[r] = sentinel_dist<false>();
    pos_i[r] = kNoIndex;
    neg_i[r] = kNoIndex;
  }

  ChunkLoader<T> loader;
  loader.begin_tile(x, ref, row0, static_cast<int64_t>(tile_begin) * kTileCols, sp);
  loader.load(0, d, sp.vec_ok);
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t col0 = static_cast<int64_t>(tile) * kTileCols;
    const int32_t col0_32 = tile * kTileCols;
    if (tid < kTileCols) {  // the previous tile's selection is done with these
      const int64_t c = col0 + tid;
      ref_norm_s[tid] = c < sp.m ? ref_norm[c] : 0.f;
      ref_label_s[tid] = c < sp.m ? ref_labels[c] : 0;
    }
    Tile product;
    product.zero();
    for (int chunk = 0; chunk < chunks; ++chunk) {
      T* stage = stages + (chunk & 1) * kStageElems<T>;
      loader.store(stage);
      __syncthreads();
      if (chunk + 1 < chunks) {
        loader.load((chunk + 1) * kChunk<T>, d, sp.vec_ok);
      } else if (tile + 1 < tile_end) {
        loader.begin_tile(x, ref, row0, col0 + kTileCols, sp);
        loader.load(0, d, sp.vec_ok);
      }
      product.accumulate(stage);
    }
    __syncthreads();  // every warp is done with the stages, which the dot tile overwrites
    product.store(dot);
    __syncthreads();

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int lr = warp * kRowsPerWarp + r;
      const int64_t a = row0 + lr;
      if (a >= sp.n) continue;  // warp-uniform
      const float xn = x_norm_s[lr];
      const int64_t label = x_label_s[lr];
      float pos_thr_d = __shfl_sync(kFullWarpMask, pos_d[r], sp.k - 1);
      int32_t pos_thr_i = __shfl_sync(kFullWarpMask, pos_i[r], sp.k - 1);
      float neg_thr_d = __shfl_sync(kFullWarpMask, neg_d[r], sp.p - 1);
      int32_t neg_thr_i = __shfl_sync(kFullWarpMask, neg_i[r], sp.p - 1);
#pragma unroll 1
      for (int q = 0; q < kTileCols / 32; ++q) {
        const int lc = q * 32 + lane;
        const int32_t j = col0_32 + lc;  // < ceil(M / kTileCols) * kTileCols <= kMaxRows
        const bool valid = j < m_32;
        const float s = clamp_square(pair_square(xn, ref_norm_s[lc], dot[lr * kDotStride + lc]));
        float dist = sp.squared ? s : sqrtf(s);
        if (sp.self_reference && j == static_cast<int32_t>(a)) dist = 0.f;  // the anchor, exactly
        const bool same = ref_label_s[lc] == label;
        warp_offer<true>(pos_d[r], pos_i[r], pos_thr_d, pos_thr_i, sp.k, dist, j, valid && same,
                         lane);
        warp_offer<false>(neg_d[r], neg_i[r], neg_thr_d, neg_thr_i, sp.p, dist, j,
                          valid && !same, lane);
      }
    }
    __syncthreads();  // the next tile overwrites the stages, ref norms and labels
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t a = row0 + warp * kRowsPerWarp + r;
    if (a >= sp.n) continue;
    if (sp.final_output) {
      write_selected<true>(pos_d[r], pos_i[r], sp.k, lane, pos_dist + a, pos_index + a);
      write_selected<false>(neg_d[r], neg_i[r], sp.p, lane, neg_dist + a, neg_index + a);
    } else {
      const int64_t base = (static_cast<int64_t>(blockIdx.y) * sp.n + a) * (sp.k + sp.p);
      if (lane < sp.k) {
        part_dist[base + lane] = pos_d[r];
        part_index[base + lane] = pos_i[r];
      }
      if (lane < sp.p) {
        part_dist[base + sp.k + lane] = neg_d[r];
        part_index[base + sp.k + lane] = neg_i[r];
      }
    }
  }
}

// Merges the splits' lists: a warp per anchor offers each split's k (p) entries to its running
// selection. grid: ceil(n / 8) blocks.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const float* __restrict__ part_dist, const int32_t* __restrict__ part_index,
                 int64_t n, int splits, int k, int p, T* __restrict__ pos_dist,
                 T* __restrict__ neg_dist, int64_t* __restrict__ pos_index,
                 int64_t* __restrict__ neg_index) {
  const int lane = threadIdx.x & 31;
  const int64_t a = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (a >= n) return;  // the whole warp
  float pos_d = sentinel_dist<true>(), neg_d = sentinel_dist<false>();
  int32_t pos_i = kNoIndex, neg_i = kNoIndex;
  float pos_thr_d = pos_d, neg_thr_d = neg_d;
  int32_t pos_thr_i = kNoIndex, neg_thr_i = kNoIndex;
#pragma unroll 4
  for (int s = 0; s < splits; ++s) {
    const int64_t base = (static_cast<int64_t>(s) * n + a) * (k + p);
    float d = 0.f;
    int32_t j = kNoIndex;
    if (lane < k) {
      d = part_dist[base + lane];
      j = part_index[base + lane];
    }
    warp_offer<true>(pos_d, pos_i, pos_thr_d, pos_thr_i, k, d, j, j != kNoIndex, lane);
    d = 0.f;
    j = kNoIndex;
    if (lane < p) {
      d = part_dist[base + k + lane];
      j = part_index[base + k + lane];
    }
    warp_offer<false>(neg_d, neg_i, neg_thr_d, neg_thr_i, p, d, j, j != kNoIndex, lane);
  }
  write_selected<true>(pos_d, pos_i, k, lane, pos_dist + a, pos_index + a);
  write_selected<false>(neg_d, neg_i, p, lane, neg_dist + a, neg_index + a);
}

// ---------------------------------------------------------------------------------------------
// Backward kernels.

constexpr int kGradThreads = 256;  // a warp per anchor pair, or per gradient row
constexpr int kGradRowsPerBlock = kGradThreads / 32;

// Entry e = 2 i + s of anchor i's pairs (s = 0: the positive, 1: the negative): the coefficient
// c_e = g / d (2 g when squared) in float32, or 0 where the pair has no gradient: no such pair
// (an index outside [0, m)), or a clamped distance (one not above the clamp's floor rounded to
// T: the anchor's own pair at distance 0 is one) or a NaN distance. keys (nullable): the sort key
// of the partners' terms, the partner row where c_e != 0 (NaN included), else m (after every row).
template <typename T>
__global__ void __launch_bounds__(kGradThreads)
    pair_coefficients_kernel(const T* __restrict__ grad_pos, const T* __restrict__ grad_neg,
                             const T* __restrict__ pos_dist, const T* __restrict__ neg_dist,
                             const int64_t* __restrict__ pos_index,
                             const int64_t* __restrict__ neg_index, int64_t n, int64_t m,
                             bool squared, float* __restrict__ coef, int64_t* __restrict__ keys) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kGradThreads + threadIdx.x;
  if (e >= 2 * n) return;
  const int64_t i = e >> 1;
  const bool positive = (e & 1) == 0;
  const float g = to_float(positive ? grad_pos[i] : grad_neg[i]);
  const float dist = to_float(positive ? pos_dist[i] : neg_dist[i]);
  const int64_t j = positive ? pos_index[i] : neg_index[i];
  // The smallest distance the forward returns, as it returns it: the clamped value in T.
  const float eps = static_cast<float>(kDistanceEps);
  const float smallest = to_float(from_float<T>(squared ? eps : sqrtf(eps)));
  const bool live = j >= 0 && j < m && dist > smallest;
  const float c = live ? (squared ? 2.f * g : g / dist) : 0.f;
  coef[e] = c;
  if (keys != nullptr) keys[e] = c != 0.f ? j : m;
}

// The first position of sorted[0, count) holding a value >= `value`.
__device__ __forceinline__ int64_t lower_bound(const int64_t* __restrict__ sorted, int64_t count,
                                               int64_t value) {
  int64_t lo = 0, hi = count;
  while (lo < hi) {
    const int64_t mid = lo + ((hi - lo) >> 1);
    if (sorted[mid] < value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Rows of a gradient, a warp per row r of out [rows, d], in float32, in the reference's form
// (norm terms minus matrix products, so that non-finite entries give its values):
//   own product (own_counts != nullptr: grad_x, entries 2r and 2r + 1 are r's pairs):
//     out[r] = (c_2r + c_2r+1) own[r] - sum over r's live pairs e of c_e ref[j_e]
//   partner product (seg_counts != nullptr: r's segment of the sorted keys, [lower_bound(r),
//   lower_bound(r + 1)), the anchors in order):
//     out[r] += (sum over the segment of c_e) own[r] - sum over the segment of c_e x[e / 2]
// in that order: deterministic. The reference sums each product over every row of the other
// operand, zero coefficients included, so entry c is NaN where that operand has more non-finite
// values in column c (counts[c]) than the rows linked to r by a live pair hold.
template <typename T>
__global__ void __launch_bounds__(kGradThreads)
    gradient_rows_kernel(const T* __restrict__ own, const T* __restrict__ ref,
                         const T* __restrict__ x, const float* __restrict__ coef,
                         const int64_t* __restrict__ pos_index,
                         const int64_t* __restrict__ neg_index,
                         const int32_t* __restrict__ own_counts,
                         const int64_t* __restrict__ sorted_keys,
                         const int64_t* __restrict__ order, int64_t entries,
                         const int32_t* __restrict__ seg_counts, int64_t rows, int64_t d,
                         bool vec_ok, T* __restrict__ out) {
  constexpr int kV = kVec<T>;
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGradRowsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // the whole warp
  const bool own_product = own_counts != nullptr;
  const bool seg_product = seg_counts != nullptr;
  float own_c[2] = {0.f, 0.f};
  const T* own_partner[2] = {nullptr, nullptr};
  if (own_product) {
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      own_c[s] = coef[2 * r + s];
      if (own_c[s] != 0.f) own_partner[s] = ref + (s == 0 ? pos_index[r] : neg_index[r]) * d;
    }
  }
  int64_t seg_begin = 0, seg_end = 0;
  float seg_total = 0.f;
  if (seg_product) {
    seg_begin = lower_bound(sorted_keys, entries, r);
    seg_end = lower_bound(sorted_keys, entries, r + 1);
    for (int64_t q = seg_begin; q < seg_end; ++q) seg_total += coef[order[q]];
  }
  const T* own_row = own + r * d;
  T* out_row = out + r * d;
  for (int64_t e0 = static_cast<int64_t>(lane) * kV; e0 < d; e0 += 32 * kV) {
    float mine[kV], acc[kV], other[kV];
    int own_covered[kV], seg_covered[kV];
    load_floats<T, kV>(own_row, e0, d, vec_ok, mine);
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      acc[v] = own_product ? (own_c[0] + own_c[1]) * mine[v] : 0.f;
      own_covered[v] = 0;
      seg_covered[v] = 0;
    }
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      if (own_partner[s] == nullptr) continue;
      load_floats<T, kV>(own_partner[s], e0, d, vec_ok, other);
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        acc[v] = fmaf(-own_c[s], other[v], acc[v]);
        own_covered[v] += !isfinite(other[v]);
      }
    }
    if (seg_product) {
#pragma unroll
      for (int v = 0; v < kV; ++v) acc[v] = fmaf(seg_total, mine[v], acc[v]);
    }
    for (int64_t q = seg_begin; q < seg_end; ++q) {
      const int64_t e = order[q];
      const float c = coef[e];
      load_floats<T, kV>(x + (e >> 1) * d, e0, d, vec_ok, other);
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        acc[v] = fmaf(-c, other[v], acc[v]);
        seg_covered[v] += !isfinite(other[v]);
      }
    }
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      if (e0 + v >= d) continue;
      if ((own_product && own_counts[e0 + v] > own_covered[v]) ||
          (seg_product && seg_counts[e0 + v] > seg_covered[v])) {
        acc[v] = std::numeric_limits<float>::quiet_NaN();
      }
    }
    if (vec_ok && e0 + kV <= d) {
      *reinterpret_cast<uint4*>(out_row + e0) = pack_floats<T, 16>(acc);
    } else {
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        if (e0 + v < d) out_row[e0 + v] = from_float<T>(acc[v]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// The size limits of the kernels, checked before any launch.
void check_sizes(const char* op, int64_t n, int64_t m, int64_t d) {
  TORCH_CHECK_VALUE(n <= kMaxRows, op, " (CUDA): N = ", n,
                    " anchors exceeds the kernel's limit of ", kMaxRows,
                    " (int32 reference indices)");
  TORCH_CHECK_VALUE(m <= kMaxRows, op, " (CUDA): M = ", m,
                    " reference rows exceeds the kernel's limit of ", kMaxRows,
                    " (int32 reference indices)");
  TORCH_CHECK_VALUE(d <= kMaxDim, op, " (CUDA): D = ", d, " exceeds the kernel's limit of ",
                    kMaxDim, " (int32 offsets within a row)");
}

void check_float_input(const at::Tensor& x, const char* op) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype != at::kDouble, op, " (CUDA): x is float64, which only the reference ",
                   "and CPU backends support; use float32, float16 or bfloat16 on the GPU");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   " (CUDA): x must be float32, float16 or bfloat16, got ", dtype);
}

void check_inputs(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
                  const at::Tensor& ref_labels, bool self_reference, int64_t k, int64_t p) {
  check_float_input(x, "triplet_select");
  const auto dtype = x.scalar_type();
  TORCH_CHECK_VALUE(x.dim() == 2, "triplet_select (CUDA): x must be [N, D], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(ref.dim() == 2, "triplet_select (CUDA): ref must be [M, D], got shape ",
                    ref.sizes());
  TORCH_CHECK_TYPE(ref.scalar_type() == dtype, "triplet_select (CUDA): ref must have x's dtype ",
                   dtype, ", got ", ref.scalar_type());
  TORCH_CHECK_VALUE(ref.size(1) == x.size(1), "triplet_select (CUDA): ref must have x's D = ",
                    x.size(1), ", got shape ", ref.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == x.size(0),
                    "triplet_select (CUDA): labels must be [N] with N = ", x.size(0),
                    ", got shape ", labels.sizes());
  TORCH_CHECK_VALUE(ref_labels.dim() == 1 && ref_labels.size(0) == ref.size(0),
                    "triplet_select (CUDA): ref_labels must be [M] with M = ", ref.size(0),
                    ", got shape ", ref_labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong && ref_labels.scalar_type() == at::kLong,
                   "triplet_select (CUDA): labels and ref_labels must be int64, got ",
                   labels.scalar_type(), " and ", ref_labels.scalar_type());
  for (const at::Tensor* t : {&labels, &ref, &ref_labels}) {
    TORCH_CHECK(t->device() == x.device(), "triplet_select (CUDA): every input must be on x's ",
                "device ", x.device(), ", got one on ", t->device());
  }
  TORCH_CHECK_VALUE(k >= 1 && k <= kMaxRank, "triplet_select (CUDA): k must be in [1, ",
                    kMaxRank, "] (a running selection is one warp), got ", k);
  TORCH_CHECK_VALUE(p >= 1 && p <= kMaxRank, "triplet_select (CUDA): p must be in [1, ",
                    kMaxRank, "] (a running selection is one warp), got ", p);
  TORCH_CHECK_VALUE(!self_reference || ref.size(0) == x.size(0),
                    "triplet_select (CUDA): self_reference needs ref to be x, got N = ", x.size(0),
                    " and M = ", ref.size(0));
  check_sizes("triplet_select", x.size(0), ref.size(0), x.size(1));
}

int sm_count(c10::DeviceIndex device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_select_forward_cuda(
    const at::Tensor& x_in, const at::Tensor& labels_in, const at::Tensor& ref_in,
    const at::Tensor& ref_labels_in, bool self_reference, int64_t k, int64_t p, bool squared) {
  TORCH_INTERNAL_ASSERT(x_in.is_cuda());
  check_inputs(x_in, labels_in, ref_in, ref_labels_in, self_reference, k, p);
  const int64_t n = x_in.size(0), m = ref_in.size(0), d = x_in.size(1);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto index_options = labels_in.options();
  if (n == 0 || m == 0) {  // no anchor, or no positive and no negative for any
    const double inf = std::numeric_limits<double>::infinity();
    return {at::full({n}, -inf, x_in.options()), at::full({n}, inf, x_in.options()),
            at::full({n}, -1, index_options), at::full({n}, -1, index_options)};
  }
  at::Tensor pos_dist = at::empty({n}, x_in.options());
  at::Tensor neg_dist = at::empty({n}, x_in.options());
  at::Tensor pos_index = at::empty({n}, index_options);
  at::Tensor neg_index = at::empty({n}, index_options);

  // ref is x itself (the Python layer passes the same tensor) for self-reference: one copy and
  // one set of norms.
  const bool ref_is_x = ref_in.is_same(x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor ref = ref_is_x ? x : ref_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor ref_labels =
      ref_labels_in.is_same(labels_in) ? labels : ref_labels_in.contiguous();
  const int64_t elem = x.element_size();
  const bool x_aligned = rows_aligned(x.const_data_ptr(), d, elem, 16);
  const bool ref_aligned = rows_aligned(ref.const_data_ptr(), d, elem, 16);

  at::Tensor norms = at::empty({ref_is_x ? n : n + m}, x.options().dtype(at::kFloat));
  const float* x_norm = norms.const_data_ptr<float>();
  const float* ref_norm = ref_is_x ? x_norm : x_norm + n;

  const int64_t row_tiles = (n + kTileRows - 1) / kTileRows;
  const int64_t col_tiles = (m + kTileCols - 1) / kTileCols;
  const SplitPlan plan = plan_splits(row_tiles, col_tiles, sm_count(x.get_device()));

  SelectParams sp{};
  sp.n = n;
  sp.m = m;
  sp.d = d;
  sp.k = static_cast<int32_t>(k);
  sp.p = static_cast<int32_t>(p);
  sp.col_tiles = static_cast<int32_t>(col_tiles);
  sp.tiles_per_split = plan.tiles_per_split;
  sp.self_reference = self_reference;
  sp.squared = squared;
  sp.vec_ok = x_aligned && ref_aligned;
  sp.final_output = plan.splits == 1;

  at::Tensor part_dist, part_index;
  if (!sp.final_output) {
    const int64_t entries = static_cast<int64_t>(plan.splits) * n * (k + p);
    part_dist = at::empty({entries}, x.options().dtype(at::kFloat));
    part_index = at::empty({entries}, x.options().dtype(at::kInt));
  }

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  REIDFAST_DISPATCH_GPU_FLOATS(x.scalar_type(), "triplet_select_forward_cuda", [&] {
    using T = typename DeviceType<scalar_t>::type;
    const T* x_ptr = reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>());
    const T* ref_ptr = reinterpret_cast<const T*>(ref.const_data_ptr<scalar_t>());
    float* norm_ptr = norms.mutable_data_ptr<float>();

    launch_row_norms<T>(x_ptr, n, d, x_aligned, norm_ptr, stream);
    if (!ref_is_x) launch_row_norms<T>(ref_ptr, m, d, ref_aligned, norm_ptr + n, stream);

    T* pos_dist_ptr = reinterpret_cast<T*>(pos_dist.mutable_data_ptr<scalar_t>());
    T* neg_dist_ptr = reinterpret_cast<T*>(neg_dist.mutable_data_ptr<scalar_t>());
    int64_t* pos_index_ptr = pos_index.mutable_data_ptr<int64_t>();
    int64_t* neg_index_ptr = neg_index.mutable_data_ptr<int64_t>();
    float* part_dist_ptr = sp.final_output ? nullptr : part_dist.mutable_data_ptr<float>();
    int32_t* part_index_ptr = sp.final_output ? nullptr : part_index.mutable_data_ptr<int32_t>();

    const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(plan.splits));
    select_kernel<T><<<grid, kThreads, 0, stream>>>(
        x_ptr, ref_ptr, x_norm, ref_norm, labels.const_data_ptr<int64_t>(),
        ref_labels.const_data_ptr<int64_t>(), sp, part_dist_ptr, part_index_ptr, pos_dist_ptr,
        neg_dist_ptr, pos_index_ptr, neg_index_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    if (!sp.final_output) {
      merge_kernel<T><<<static_cast<unsigned>((n + kWarps - 1) / kWarps), kThreads, 0, stream>>>(
          part_dist_ptr, part_index_ptr, n, plan.splits, sp.k, sp.p, pos_dist_ptr, neg_dist_ptr,
          pos_index_ptr, neg_index_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {pos_dist, neg_dist, pos_index, neg_index};
}

void check_backward_inputs(const at::Tensor& grad_pos, const at::Tensor& grad_neg,
                           const at::Tensor& x, const at::Tensor& ref, const at::Tensor& pos_dist,
                           const at::Tensor& neg_dist, const at::Tensor& pos_index,
                           const at::Tensor& neg_index, bool self_reference) {
  check_float_input(x, "triplet_select_backward");
  TORCH_CHECK_VALUE(x.dim() == 2 && ref.dim() == 2 && ref.size(1) == x.size(1),
                    "triplet_select_backward (CUDA): x must be [N, D] and ref [M, D], got shapes ",
                    x.sizes(), " and ", ref.sizes());
  TORCH_CHECK_TYPE(ref.scalar_type() == x.scalar_type(),
                   "triplet_select_backward (CUDA): ref must have x's dtype ", x.scalar_type(),
                   ", got ", ref.scalar_type());
  TORCH_CHECK_VALUE(!self_reference || ref.size(0) == x.size(0),
                    "triplet_select_backward (CUDA): self_reference needs ref to be x, got N = ",
                    x.size(0), " and M = ", ref.size(0));
  const int64_t n = x.size(0);
  for (const at::Tensor* t : {&grad_pos, &grad_neg, &pos_dist, &neg_dist}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n,
                      "triplet_select_backward (CUDA): gradients and distances must be [N] with "
                      "N = ", n, ", got shape ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(),
                     "triplet_select_backward (CUDA): gradients and distances must have x's "
                     "dtype ", x.scalar_type(), ", got ", t->scalar_type());
  }
  for (const at::Tensor* t : {&pos_index, &neg_index}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n,
                      "triplet_select_backward (CUDA): indices must be [N] with N = ", n,
                      ", got shape ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong,
                     "triplet_select_backward (CUDA): indices must be int64, got ",
                     t->scalar_type());
  }
  for (const at::Tensor* t :
       {&grad_pos, &grad_neg, &ref, &pos_dist, &neg_dist, &pos_index, &neg_index}) {
    TORCH_CHECK(t->device() == x.device(),
                "triplet_select_backward (CUDA): every input must be on x's device ", x.device(),
                ", got one on ", t->device());
  }
  check_sizes("triplet_select_backward", n, ref.size(0), x.size(1));
}

// Gradients of the selected distances (see the header): grad_x [N, D], and grad_ref [M, D] when
// ref_grad and not self_reference, else [0, D] (under self_reference the partners' terms are in
// grad_x). The indices are the forward's: a pair whose index is outside [0, M) has no gradient.
std::tuple<at::Tensor, at::Tensor> triplet_select_backward_cuda(
    const at::Tensor& grad_pos_in, const at::Tensor& grad_neg_in, const at::Tensor& x_in,
    const at::Tensor& ref_in, const at::Tensor& pos_dist_in, const at::Tensor& neg_dist_in,
    const at::Tensor& pos_index_in, const at::Tensor& neg_index_in, bool self_reference,
    bool squared, bool ref_grad) {
  TORCH_INTERNAL_ASSERT(x_in.is_cuda());
  check_backward_inputs(grad_pos_in, grad_neg_in, x_in, ref_in, pos_dist_in, neg_dist_in,
                        pos_index_in, neg_index_in, self_reference);
  const int64_t n = x_in.size(0), m = ref_in.size(0), d = x_in.size(1);
  const bool want_ref = ref_grad && !self_reference;
  // Partner terms: into grad_x against x itself, into grad_ref against a reference set.
  const bool partner_terms = self_reference || want_ref;

  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor grad_x = at::empty({n, d}, x_in.options());
  at::Tensor grad_ref = at::empty({want_ref ? m : 0, d}, ref_in.options());
  if (d == 0) return {grad_x, grad_ref};

  const at::Tensor x = x_in.contiguous();
  const at::Tensor ref = self_reference ? x : ref_in.contiguous();
  const at::Tensor grad_pos = grad_pos_in.contiguous(), grad_neg = grad_neg_in.contiguous();
  const at::Tensor pos_dist = pos_dist_in.contiguous(), neg_dist = neg_dist_in.contiguous();
  const at::Tensor pos_index = pos_index_in.contiguous(), neg_index = neg_index_in.contiguous();
  const int64_t elem = x.element_size();
  const bool vec_ok = rows_aligned(x.const_data_ptr(), d, elem, 16) &&
                      rows_aligned(ref.const_data_ptr(), d, elem, 16) &&
                      rows_aligned(grad_x.const_data_ptr(), d, elem, 16) &&
                      (!want_ref || rows_aligned(grad_ref.const_data_ptr(), d, elem, 16));

  const auto float_options = x.options().dtype(at::kFloat);
  at::Tensor coef = at::empty({2 * n}, float_options);
  at::Tensor keys = partner_terms ? at::empty({2 * n}, x.options().dtype(at::kLong)) : at::Tensor();
  // Non-finite values per column: row 0 of x, row 1 of ref (x's under self_reference).
  at::Tensor nonfinite = at::zeros({2, d}, x.options().dtype(at::kInt));
  int32_t* x_counts = nonfinite.mutable_data_ptr<int32_t>();
  int32_t* ref_counts = self_reference ? x_counts : x_counts + d;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  REIDFAST_DISPATCH_GPU_FLOATS(x.scalar_type(), "triplet_select_backward_cuda", [&] {
    using T = typename DeviceType<scalar_t>::type;
    const auto ptr = [](const at::Tensor& t) {
      return reinterpret_cast<const T*>(t.const_data_ptr<scalar_t>());
    };
    const T* x_ptr = ptr(x);
    const T* ref_ptr = ptr(ref);
    if (n > 0) {
      pair_coefficients_kernel<T>
          <<<static_cast<unsigned>((2 * n + kGradThreads - 1) / kGradThreads), kGradThreads, 0,
             stream>>>(ptr(grad_pos), ptr(grad_neg), ptr(pos_dist), ptr(neg_dist),
                       pos_index.const_data_ptr<int64_t>(), neg_index.const_data_ptr<int64_t>(),
                       n, m, squared, coef.mutable_data_ptr<float>(),
                       partner_terms ? keys.mutable_data_ptr<int64_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (partner_terms) launch_nonfinite_counts<T>(x_ptr, n, d, nullptr, x_counts, stream);
    }
    if (m > 0 && !self_reference) {
      launch_nonfinite_counts<T>(ref_ptr, m, d, nullptr, ref_counts, stream);
    }
    at::Tensor sorted_keys, order;
    if (partner_terms) std::tie(sorted_keys, order) = at::sort(keys, std::optional<bool>(true), 0);
    const int64_t* sorted_ptr = partner_terms ? sorted_keys.const_data_ptr<int64_t>() : nullptr;
    const int64_t* order_ptr = partner_terms ? order.const_data_ptr<int64_t>() : nullptr;

    const auto rows_grid = [](int64_t rows) {
      return static_cast<unsigned>((rows + kGradRowsPerBlock - 1) / kGradRowsPerBlock);
    };
    if (n > 0) {  // x's rows: the own product with ref, and under self_reference the partners'
      gradient_rows_kernel<T><<<rows_grid(n), kGradThreads, 0, stream>>>(
          x_ptr, ref_ptr, x_ptr, coef.const_data_ptr<float>(),
          pos_index.const_data_ptr<int64_t>(), neg_index.const_data_ptr<int64_t>(), ref_counts,
          sorted_ptr, order_ptr, 2 * n, self_reference ? x_counts : nullptr, n, d, vec_ok,
          reinterpret_cast<T*>(grad_x.mutable_data_ptr<scalar_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (want_ref && m > 0) {  // the bank's rows: the partner product with x
      gradient_rows_kernel<T><<<rows_grid(m), kGradThreads, 0, stream>>>(
          ref_ptr, ref_ptr, x_ptr, coef.const_data_ptr<float>(), nullptr, nullptr, nullptr,
          sorted_ptr, order_ptr, 2 * n, x_counts, m, d, vec_ok,
          reinterpret_cast<T*>(grad_ref.mutable_data_ptr<scalar_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_ref};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) {
  m.impl("triplet_select_forward", &triplet_select_forward_cuda);
  m.impl("triplet_select_backward", &triplet_select_backward_cuda);
}

}  // namespace reidfast
