// Vector lanes and parallel grains for the CPU pair loops, shared by the kernels that scan rows of distances
// (adaptive_margin.cpp, triplet_select.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>

namespace reidfast::cpu {

// Lanes of the pair loops: GCC/Clang vector types of 16 bytes (SSE2 on x86-64, NEON on Arm: the
// baseline the extension is built for), with an integer mask type of the same width. Identities
// are dense ids of the mask's element width, so a comparison of ids is a lane mask; hinges and sign
// choices are selects, not branches (the hinge of a negative pair is data-dependent, so a branch
// would mispredict about half the time).
template <typename acc_t>
struct Lanes;
template <>
struct Lanes<float> {
  using Value = float __attribute__((vector_size(16)));
  using Mask = int32_t __attribute__((vector_size(16)));
  using Id = int32_t;
};
template <>
struct Lanes<double> {
  using Value = double __attribute__((vector_size(16)));
  using Mask = int64_t __attribute__((vector_size(16)));
  using Id = int64_t;
};

template <typename acc_t>
constexpr int64_t kWidth = sizeof(typename Lanes<acc_t>::Value) / sizeof(acc_t);

template <typename Mask, typename Value>
inline Value select(Mask mask, Value a, Value b) {
  return reinterpret_cast<Value>((mask & reinterpret_cast<Mask>(a)) | (~mask & reinterpret_cast<Mask>(b)));
}

// `count` (<= the vector's width) elements from `data`, the other lanes `fill`.
template <typename Vector, typename T>
inline Vector load_lanes(const T* data, int64_t count, T fill) {
  Vector v;
  if (count * static_cast<int64_t>(sizeof(T)) == static_cast<int64_t>(sizeof(Vector))) {
    std::memcpy(&v, data, sizeof(Vector));
    return v;
  }
  T lanes[sizeof(Vector) / sizeof(T)];
  std::fill(std::begin(lanes), std::end(lanes), fill);
  std::copy_n(data, count, lanes);
  std::memcpy(&v, lanes, sizeof(Vector));
  return v;
}

// Adds the lanes in order into `total` and resets them (callers fold per chunk of columns, so that
// the lanes stay accurate and the result does not depend on the thread count).
template <typename Value>
inline void fold_lanes(Value& lanes, double& total) {
  for (int64_t lane = 0; lane < static_cast<int64_t>(sizeof(Value) / sizeof(lanes[0])); ++lane) {
    total += lanes[lane];
  }
  lanes = Value{};
}

// The fewest element operations a parallel task is given: a smaller loop runs on the calling
// thread, since waking the thread pool costs more than such work.
constexpr int64_t kMinTaskWork = int64_t(1) << 15;

// The grain (rows per task) of at::parallel_for over rows of `row_work` element operations each.
inline int64_t rows_per_task(int64_t row_work) {
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(row_work, 1));
}

// Squared L2 norm of each row of x [N, D] (contiguous, acc_t) -> [N].
template <typename acc_t>
at::Tensor squared_norms(const at::Tensor& x) {
  const int64_t n = x.size(0), dim = x.size(1);
  at::Tensor norms = at::empty({n}, x.options());
  const acc_t* data = x.const_data_ptr<acc_t>();
  acc_t* out = norms.mutable_data_ptr<acc_t>();
  at::parallel_for(0, n, rows_per_task(dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      using Value = typename Lanes<acc_t>::Value;
      const acc_t* row = data + i * dim;
      Value lanes{};
      for (int64_t k = 0; k < dim; k += kWidth<acc_t>) {
        const Value v = load_lanes<Value>(row + k, std::min(kWidth<acc_t>, dim - k), acc_t(0));
        lanes += v * v;
      }
      double total = 0;
      fold_lanes(lanes, total);
      out[i] = static_cast<acc_t>(total);
    }
  });
  return norms;
}

}  // namespace reidfast::cpu
