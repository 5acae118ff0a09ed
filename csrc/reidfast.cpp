// Operator schemas of the reidfast extension, defined once for every backend.
//
// Each backend registers its kernels in its own file (cpu/<op>.cpp for CPU, cuda/<op>.cu for
// CUDA); the Python package registers the fake (meta) kernels and the autograd formulas. Nothing
// here needs pybind11, so this file includes Python.h only to give `import reidfast._C` a module
// to load: loading it runs the static registrations below.
#include <torch/library.h>

TORCH_LIBRARY(reidfast, m) {
  // Stripe/pyramid pooling (GMP and/or GAP over windows of horizontal stripes).
  //   x [B, C, H, W] -> out [B, num_windows, C] (x's dtype), argmax [B, num_windows, C] int32
  //   (flat h * W + w of each window maximum; an empty tensor unless return_argmax and mode
  //   pools the maximum).
  m.def(
      "pyramid_pool_forward(Tensor x, int num_parts, int[] window_starts, int[] window_lengths, "
      "str mode, bool return_argmax) -> (Tensor, Tensor)");
  //   grad_out [B, num_windows, C], argmax as above -> grad_x [B, C, height, width].
  m.def(
      "pyramid_pool_backward(Tensor grad_out, Tensor argmax, int num_parts, int[] window_starts, "
      "int[] window_lengths, str mode, SymInt height, SymInt width, bool channels_last) -> Tensor");
}

#ifdef REIDFAST_PYTHON_MODULE
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
