// Host-side helpers shared by the CUDA operators: the CUDA type of an ATen scalar type, and a
// dispatch over the floating types the GPU kernels take (float64 is refused before it).
#pragma once

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace reidfast {

template <typename S>
struct DeviceType {
  using type = S;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

}  // namespace reidfast

#define REIDFAST_DISPATCH_GPU_FLOATS(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)         \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)      \
                             AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
