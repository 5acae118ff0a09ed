// The distance convention of every pairwise op, defined once for the CPU and CUDA kernels
// (host and device code), and the one host/device qualifier of the shared headers.
//
//   d(a, b)^2 = max(|a|^2 + |b|^2 - 2 a.b, kDistanceEps)      (GEMM form, so it exports to ONNX)
//   d(a, b)   = sqrt(d(a, b)^2),  at least sqrt(kDistanceEps) = 1e-6
//
// The clamp keeps NaN: a NaN embedding gives a NaN distance, so a NaN loss (the package's NaN
// policy), never a silently clamped one. The Python side defines the same epsilon in
// reidfast/ops/distance.py and kernels/_distance.py.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define REIDFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define REIDFAST_HOST_DEVICE inline
#endif

namespace reidfast {

// Smallest squared distance.
constexpr double kDistanceEps = 1e-12;

// Distances per tile of the CPU kernels: 2^21 (8 MiB of float32) keeps a tile's dot products in
// the last-level cache between the matrix multiply that writes them and the pass that reads them.
constexpr int64_t kCpuTileElements = int64_t(1) << 21;

// max(square, kDistanceEps), NaN kept (written as !(square >= eps) would not be: NaN fails both).
template <typename T>
REIDFAST_HOST_DEVICE T clamp_square(T square) {
  return square < T(kDistanceEps) ? T(kDistanceEps) : square;
}

}  // namespace reidfast
