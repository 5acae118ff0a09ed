// REIDFAST_CPU_ISA: which variant of the CPU kernels runs (see cpu_isa.h).
#include "cpu_isa.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace reidfast::cpu {
namespace {

bool cpu_has_avx2() {
#if REIDFAST_CPU_HAS_AVX2_KERNELS
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

CpuIsa isa_from_environment() {
  const char* value = std::getenv("REIDFAST_CPU_ISA");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "auto") return cpu_has_avx2() ? CpuIsa::kAvx2 : CpuIsa::kGeneric;
  if (name == "generic") return CpuIsa::kGeneric;
  TORCH_CHECK_VALUE(name == "avx2", "REIDFAST_CPU_ISA must be 'auto', 'generic' or 'avx2', got '",
                    name, "'");
  TORCH_CHECK_VALUE(cpu_has_avx2(), "REIDFAST_CPU_ISA=avx2, but ",
                    REIDFAST_CPU_HAS_AVX2_KERNELS ? "this CPU lacks AVX2 or FMA"
                                                  : "this build has no AVX2 kernels");
  return CpuIsa::kAvx2;
}

std::string cpu_isa_name() { return selected_cpu_isa() == CpuIsa::kAvx2 ? "avx2" : "generic"; }

}  // namespace

CpuIsa selected_cpu_isa() {
  // Initialised by the first call that succeeds; an invalid value raises on every call.
  static const CpuIsa isa = isa_from_environment();
  return isa;
}

TORCH_LIBRARY_IMPL(reidfast, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa", &cpu_isa_name);
}

}  // namespace reidfast::cpu
