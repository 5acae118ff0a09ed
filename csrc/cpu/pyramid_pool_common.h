// Everything the CPU kernels of pyramid_pool include, in one place: both compilations of
// pyramid_pool_kernel.h include it first, so that library headers are compiled for the baseline
// instruction set only (a target pragma then applies to the kernels alone).
#pragma once

#include "../pyramid_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

// AVX2 kernels exist on x86-64 with GCC or Clang (which know the target pragma/attribute).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define REIDFAST_CPU_HAS_AVX2_KERNELS 1
#include <immintrin.h>
#define AVX2_OR_GENERIC(name) avx2::name
#else
#define REIDFAST_CPU_HAS_AVX2_KERNELS 0
#define AVX2_OR_GENERIC(name) generic::name
#endif
