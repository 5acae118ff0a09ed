// The instruction set of the CPU kernels that have variants, chosen once per process.
//
// pyramid_pool's kernels are compiled twice: for the baseline of the target (generic) and, on
// x86-64 with GCC or Clang, for AVX2 + FMA. The environment variable REIDFAST_CPU_ISA, read on
// the first call of selected_cpu_isa(), picks the variant:
//   unset, "" or "auto"  AVX2 + FMA where the CPU has both and the build has those kernels, else
//                        generic;
//   "generic"            the generic kernels on any CPU (so that an AVX2 machine, CI included,
//                        can test them);
//   "avx2"               the AVX2 + FMA kernels; an error where the CPU or the build lacks them.
// Any other value is an error (ValueError) naming the variable and its value, raised by every op
// call that asks, before any work. The op reidfast::cpu_isa() says which variant runs.
#pragma once

// AVX2 kernels exist on x86-64 with GCC or Clang (which know the target pragma/attribute).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define REIDFAST_CPU_HAS_AVX2_KERNELS 1
#else
#define REIDFAST_CPU_HAS_AVX2_KERNELS 0
#endif

namespace reidfast::cpu {

enum class CpuIsa { kGeneric, kAvx2 };

CpuIsa selected_cpu_isa();

}  // namespace reidfast::cpu
