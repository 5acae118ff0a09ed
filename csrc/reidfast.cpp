// Operator schemas of the reidfast extension, defined once for every backend.
//
// Each backend registers its kernels in its own file (cpu/<op>.cpp for CPU, cuda/<op>.cu for
// CUDA); csrc/autograd/ registers the loss ops' autograd in C++ (so libtorch users have it), and
// the Python package registers the fake (meta) kernels and the other autograd formulas. Nothing
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
  //   The instruction set of the CPU kernels that have variants: "avx2" or "generic" (chosen by
  //   the CPU and the REIDFAST_CPU_ISA environment variable, see csrc/cpu/cpu_isa.h).
  m.def("cpu_isa() -> str");

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
  //   outputs -> grad_x [N, D], grad_ref [M, D] (x's dtype) when ref_grad and not
  //   self_reference, else an empty [0, D] (a frozen bank's gradient is neither allocated nor
  //   computed). Under self_reference the partners' terms are added to grad_x.
  m.def(
      "triplet_select_backward(Tensor grad_pos, Tensor grad_neg, Tensor x, Tensor ref, "
      "Tensor pos_dist, Tensor neg_dist, Tensor pos_index, Tensor neg_index, bool self_reference, "
      "bool squared, bool ref_grad) -> (Tensor, Tensor)");

  //   The triplet loss on the selection, one op (and one autograd node) for the whole loss:
  //   per anchor z = margin + pos_dist - neg_dist (float32, float64 for float64 x), loss =
  //   softplus(z) if soft else max(0, z), reduced by "mean" | "sum" | "none" -> 0-d or [N], in x's
  //   dtype. Its kernels are those of triplet_select_forward (csrc/autograd/triplet_select.cpp).
  m.def(
      "triplet_loss(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, bool self_reference, "
      "int k, int p, bool squared, float margin, bool soft, str reduction) -> Tensor");

  // Adaptive-margin pairwise loss, see reidfast/ops/adaptive_margin.py.
  //   x [N, D], labels [N] int64 (at least one positive and one negative pair), mu, gamma > 0,
  //   reduction "mean" | "sum" | "balanced" -> loss (0-d), margins [4] = (Mp, Mn, s, d) (float32,
  //   float64 for float64 x), grad_x = dloss/dx [N, D] in x's dtype when compute_grad, else
  //   [0, D].
  m.def(
      "adaptive_margin_forward(Tensor x, Tensor labels, float mu, float gamma, str reduction, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");

  // Ranks of each query's true matches in its valid gallery, see reidfast/evaluation/rank.py.
  //   dist [B, G]; row b's same-identity gallery entries are same_cols[same_offsets[b] :
  //   same_offsets[b + 1]] (offsets [B + 1] non-decreasing within [0, S]; cols [S] int64, ascending
  //   within a row), each a true match where same_is_match [S] (bool), else junk; max_matches >=
  //   any row's match count -> ranks [B, max_matches] int64 (the 1-based ranks r_1 < ... < r_k of
  //   the row's k matches, then 1), nan_rows [B] bool (the row holds a NaN; its ranks are then
  //   unspecified).
  m.def(
      "evaluate_rank_match_ranks(Tensor dist, Tensor same_offsets, Tensor same_cols, "
      "Tensor same_is_match, int max_matches) -> (Tensor, Tensor)");
}

#ifdef REIDFAST_PYTHON_MODULE
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
