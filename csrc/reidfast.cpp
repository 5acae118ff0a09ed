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

  // Generalised batch-hard selection (PLA Eq. 3-4), see reidfast/ops/triplet_select.py.
  //   x [N, D], labels [N] int64, ref [M, D] (x's dtype and device), ref_labels [M] int64;
  //   self_reference: ref is x itself, and pair (i, i) is the anchor's own positive at distance 0.
  //   -> pos_dist [N], neg_dist [N] (x's dtype), pos_index [N], neg_index [N] (int64): the k-th
  //   largest positive and p-th smallest negative distance (ties to the lower index), -inf / +inf
  //   and index -1 for an anchor without positives / negatives.
  m.def(
      "triplet_select_forward(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, "
      "bool self_reference, int k, int p, bool squared) -> (Tensor, Tensor, Tensor, Tensor)");
  //   Gradients of the selected distances: grad_pos, grad_neg [N] and the forward's inputs and
  //   outputs -> grad_x [N, D], grad_ref [M, D] (x's dtype). Under self_reference the partners'
  //   terms are added to grad_x and grad_ref is empty [0, D].
  m.def(
      "triplet_select_backward(Tensor grad_pos, Tensor grad_neg, Tensor x, Tensor ref, "
      "Tensor pos_dist, Tensor neg_dist, Tensor pos_index, Tensor neg_index, bool self_reference, "
      "bool squared) -> (Tensor, Tensor)");

  // Adaptive-margin pairwise loss, see reidfast/ops/adaptive_margin.py.
  //   x [N, D], labels [N] int64 (at least one positive and one negative pair), mu, gamma > 0,
  //   reduction "mean" | "sum" | "balanced" -> loss (0-d), margins [4] = (Mp, Mn, s, d) (float32,
  //   float64 for float64 x), grad_x = dloss/dx [N, D] in x's dtype when compute_grad, else
  //   [0, D].
  m.def(
      "adaptive_margin_forward(Tensor x, Tensor labels, float mu, float gamma, str reduction, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");
}

#ifdef REIDFAST_PYTHON_MODULE
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
