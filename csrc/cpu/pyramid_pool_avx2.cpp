// The CPU kernels of pyramid_pool compiled for AVX2 + FMA (chosen at run time on CPUs that have
// them, unless REIDFAST_CPU_ISA says otherwise; see cpu_isa.h). Only the kernels are compiled for
// AVX2: every header is included before the target switch.
#include "pyramid_pool_common.h"

#if REIDFAST_CPU_HAS_AVX2_KERNELS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define REIDFAST_CPU_ISA avx2
#define REIDFAST_CPU_ISA_IS_AVX2 1
#include "pyramid_pool_kernel.h"
#undef REIDFAST_CPU_ISA_IS_AVX2
#undef REIDFAST_CPU_ISA

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
