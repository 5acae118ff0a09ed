// Everything the CPU kernels of pyramid_pool include, in one place: both compilations of
// pyramid_pool_kernel.h include it first, so that library headers are compiled for the baseline
// instruction set only (a target pragma then applies to the kernels alone).
#pragma once

#include "../pyramid_pool.h"
#include "cpu_isa.h"

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

#if REIDFAST_CPU_HAS_AVX2_KERNELS
#include <immintrin.h>
#endif
