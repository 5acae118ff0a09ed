// CPU operator of pyramid_pool: argument checks, layout choice, allocation, and the kernels'
// instruction set (csrc/cpu/pyramid_pool_kernel.h, compiled once for the baseline and, on x86-64,
// once for AVX2 + FMA in pyramid_pool_avx2.cpp): the one selected_cpu_isa() names, which follows
// the CPU unless the environment variable REIDFAST_CPU_ISA says otherwise (csrc/cpu/cpu_isa.h;
// REIDFAST_CPU_ISA=generic runs the generic kernels on an AVX2 machine).
#include "pyramid_pool_common.h"

#define REIDFAST_CPU_ISA generic
#include "pyramid_pool_kernel.h"
#undef REIDFAST_CPU_ISA

namespace reidfast::cpu {

#if REIDFAST_CPU_HAS_AVX2_KERNELS
namespace avx2 {
void forward_kernel(const at::Tensor& x, int64_t num_parts, at::IntArrayRef starts,
                    at::IntArrayRef lengths, PoolMode mode, bool channels_inner, at::Tensor& out,
                    at::Tensor& argmax);
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& argmax, int64_t num_parts,
                     at::IntArrayRef starts, at::IntArrayRef lengths, PoolMode mode,
                     bool channels_last, at::Tensor& grad_x);
}  // namespace avx2
#endif

namespace {

using ForwardKernel = void (*)(const at::Tensor&, int64_t, at::IntArrayRef, at::IntArrayRef,
                               PoolMode, bool, at::Tensor&, at::Tensor&);
using BackwardKernel = void (*)(const at::Tensor&, const at::Tensor&, int64_t, at::IntArrayRef,
                                at::IntArrayRef, PoolMode, bool, at::Tensor&);

ForwardKernel selected_forward_kernel() {
#if REIDFAST_CPU_HAS_AVX2_KERNELS
  if (selected_cpu_isa() == CpuIsa::kAvx2) return avx2::forward_kernel;
#endif
  return generic::forward_kernel;
}

BackwardKernel selected_backward_kernel() {
#if REIDFAST_CPU_HAS_AVX2_KERNELS
  if (selected_cpu_isa() == CpuIsa::kAvx2) return avx2::backward_kernel;
#endif
  return generic::backward_kernel;
}

std::tuple<at::Tensor, at::Tensor> pyramid_pool_forward_cpu(const at::Tensor& input,
                                                            int64_t num_parts,
                                                            at::IntArrayRef starts,
                                                            at::IntArrayRef lengths,
                                                            c10::string_view mode_name,
                                                            bool return_argmax) {
  TORCH_INTERNAL_ASSERT(input.device().is_cpu());
  check_forward_input(input, num_parts, starts, lengths);
  const PoolMode mode = parse_pool_mode(mode_name);
  const ForwardKernel kernel = selected_forward_kernel();
  const int64_t num_windows = static_cast<int64_t>(starts.size());
  const bool want_argmax = return_argmax && mode.max;

  const bool channels_inner = input.stride(1) == 1 && input.size(1) > 1;
  const bool rows_inner = input.stride(3) == 1 || input.size(3) == 1;
  const at::Tensor x = (channels_inner || rows_inner) ? input : input.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1);

  at::Tensor out = at::empty({batch, num_windows, channels}, x.options());
  at::Tensor argmax = want_argmax ? at::empty({batch, num_windows, channels}, x.options().dtype(at::kInt))
                                  : at::empty({0}, x.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  kernel(x, num_parts, starts, lengths, mode, channels_inner, out, argmax);
  return {out, argmax};
}

at::Tensor pyramid_pool_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& argmax_in,
                                     int64_t num_parts, at::IntArrayRef starts,
                                     at::IntArrayRef lengths, c10::string_view mode_name,
                                     int64_t height, int64_t width, bool channels_last) {
  TORCH_INTERNAL_ASSERT(grad_out_in.device().is_cpu());
  const PoolMode mode = parse_pool_mode(mode_name);
  check_backward_input(grad_out_in, argmax_in, num_parts, starts, lengths, mode, height, width);
  const BackwardKernel kernel = selected_backward_kernel();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor argmax = mode.max ? argmax_in.contiguous() : argmax_in;
  at::Tensor grad_x = at::empty({grad_out.size(0), grad_out.size(2), height, width},
                                grad_out.options().memory_format(grad_memory_format(channels_last)));
  if (grad_x.numel() == 0) return grad_x;
  kernel(grad_out, argmax, num_parts, starts, lengths, mode, channels_last, grad_x);
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("pyramid_pool_forward", &pyramid_pool_forward_cpu);
  m.impl("pyramid_pool_backward", &pyramid_pool_backward_cpu);
}

}  // namespace reidfast::cpu
