// CPU operators of triplet_select: the generalised batch-hard selection (PLA Eq. 3-4) and the
// gradient of the selected distances.
//
// Forward. The distance matrix is visited in tiles of at most kTileElements distances (whole rows
// of the reference set while they fit, so a batch against itself is usually one tile): one matrix
// multiply (at::mm_out, with all of ATen's threads) gives a tile's dot products; then
// at::parallel_for spreads the tile's anchor rows over the threads, each forming its row's
// distances in a contiguous buffer (a loop the compiler vectorises) and offering them to the
// anchor's running selections (csrc/triplet_select.h: the k largest positives, the p smallest
// negatives), which reject most candidates with one comparison once full. Memory beyond the
// inputs is one tile plus (k + p) candidates per anchor of a tile: the N x M distance matrix is
// not materialised, so memory banks of any size work.
//
// Backward. For a selected pair (i, j) with distance d and incoming gradient g, the coefficient
// c = g / d (g when squared; 0 for the anchor's own pair, a clamped distance or a missing pair)
// gives grad x_i += c (x_i - r_j) and grad r_j += c (r_j - x_i). The anchors' terms are written
// per anchor; the partners' terms are grouped by partner (a counting sort, stable in anchor order)
// and summed per partner row in parallel, so backward is deterministic without atomics.
//
// Numerics. Half-precision inputs are converted to float32 once; float64 stays float64. The
// distance is sqrt(max(|x_i|^2 + |r_j|^2 - 2 x_i.r_j, 1e-12)) (no sqrt when squared); the
// anchor's own pair, under self_reference, is exactly 0. The selection does not depend on the
// tiling (the ranking rule is a total order).
#include "../triplet_select.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

namespace reidfast::cpu {
namespace {

// Distances per tile: 2^21 (8 MiB of float32) keeps a tile's dot products in the last-level cache
// between the multiply that writes them and the selection that reads them.
constexpr int64_t kTileElements = int64_t(1) << 21;

// The selections of one anchor: up to k positives and p negatives, best first.
template <typename acc_t>
struct AnchorSelections {
  std::vector<acc_t> pos_dist, neg_dist;
  std::vector<int64_t> pos_index, neg_index;
  RunningSelection<true, acc_t> pos;
  RunningSelection<false, acc_t> neg;
  AnchorSelections(int64_t k, int64_t p)
      : pos_dist(k), neg_dist(p), pos_index(k), neg_index(p),
        pos(pos_dist.data(), pos_index.data(), static_cast<int>(k)),
        neg(neg_dist.data(), neg_index.data(), static_cast<int>(p)) {}
  AnchorSelections(const AnchorSelections&) = delete;
  AnchorSelections& operator=(const AnchorSelections&) = delete;
};

struct SelectInputs {
  at::Tensor x, ref, x_norm, ref_norm, labels, ref_labels;  // contiguous, x and ref in acc_t
  bool self_reference, squared;
  int64_t k, p;
};

// Offers row i's candidates among reference rows [col_begin, col_begin + cols) to its selections.
template <typename acc_t>
void offer_row(const SelectInputs& in, const acc_t* row_dots, int64_t i, int64_t col_begin,
               int64_t cols, acc_t* dist, AnchorSelections<acc_t>& sel) {
  const acc_t norm_i = in.x_norm.const_data_ptr<acc_t>()[i];
  const acc_t* norm_j = in.ref_norm.const_data_ptr<acc_t>() + col_begin;
  for (int64_t c = 0; c < cols; ++c) {
    const acc_t square = std::max(norm_i + norm_j[c] - acc_t(2) * row_dots[c], acc_t(1e-12));
    dist[c] = in.squared ? square : std::sqrt(square);
  }
  if (in.self_reference && i >= col_begin && i < col_begin + cols) dist[i - col_begin] = acc_t(0);
  const int64_t label = in.labels.const_data_ptr<int64_t>()[i];
  const int64_t* ref_labels = in.ref_labels.const_data_ptr<int64_t>() + col_begin;
  for (int64_t c = 0; c < cols; ++c) {
    if (ref_labels[c] == label) {
      sel.pos.offer(dist[c], col_begin + c);
    } else {
      sel.neg.offer(dist[c], col_begin + c);
    }
  }
}

template <typename acc_t>
void select_all(const SelectInputs& in, acc_t* pos_out, acc_t* neg_out, int64_t* pos_index_out,
                int64_t* neg_index_out) {
  const int64_t n = in.x.size(0), m = in.ref.size(0);
  // Tile shape: whole reference rows for as many anchors as fit, else column blocks.
  const int64_t tile_rows = std::clamp<int64_t>(kTileElements / std::max<int64_t>(m, 1), 1, n);
  const int64_t tile_cols = std::min(m, std::max<int64_t>(kTileElements / tile_rows, 1));
  at::Tensor dots = at::empty({tile_rows, tile_cols}, in.x.options());
  for (int64_t row_begin = 0; row_begin < n; row_begin += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - row_begin);
    std::vector<std::unique_ptr<AnchorSelections<acc_t>>> anchors(rows);
    for (auto& anchor : anchors) anchor = std::make_unique<AnchorSelections<acc_t>>(in.k, in.p);
    const at::Tensor x_rows = in.x.narrow(0, row_begin, rows);
    for (int64_t col_begin = 0; col_begin < m; col_begin += tile_cols) {
      const int64_t cols = std::min(tile_cols, m - col_begin);
      at::Tensor tile = dots.narrow(0, 0, rows).narrow(1, 0, cols);
      at::mm_out(tile, x_rows, in.ref.narrow(0, col_begin, cols).t());
      const acc_t* tile_ptr = tile.const_data_ptr<acc_t>();
      const int64_t tile_stride = tile.stride(0);
      at::parallel_for(0, rows, 1, [&](int64_t r_begin, int64_t r_end) {
        std::vector<acc_t> dist(cols);
        for (int64_t r = r_begin; r < r_end; ++r) {
          offer_row(in, tile_ptr + r * tile_stride, row_begin + r, col_begin, cols, dist.data(),
                    *anchors[r]);
        }
      });
    }
    for (int64_t r = 0; r < rows; ++r) {
      pos_out[row_begin + r] = anchors[r]->pos.selected_dist();
      pos_index_out[row_begin + r] = anchors[r]->pos.selected_index();
      neg_out[row_begin + r] = anchors[r]->neg.selected_dist();
      neg_index_out[row_begin + r] = anchors[r]->neg.selected_index();
    }
  }
}

void check_select_inputs(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
                         const at::Tensor& ref_labels, bool self_reference, int64_t k, int64_t p) {
  TORCH_CHECK_VALUE(x.dim() == 2 && ref.dim() == 2 && x.size(1) == ref.size(1),
                    "triplet_select: x [N, D] and ref [M, D] must share D, got ", x.sizes(),
                    " and ", ref.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == ref.scalar_type(), "triplet_select: ref must have x's dtype ",
                   x.scalar_type(), ", got ", ref.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == x.size(0),
                    "triplet_select: labels must be [N] with N = ", x.size(0), ", got ",
                    labels.sizes());
  TORCH_CHECK_VALUE(ref_labels.dim() == 1 && ref_labels.size(0) == ref.size(0),
                    "triplet_select: ref_labels must be [M] with M = ", ref.size(0), ", got ",
                    ref_labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong && ref_labels.scalar_type() == at::kLong,
                   "triplet_select: labels and ref_labels must be int64");
  TORCH_CHECK_VALUE(k >= 1 && p >= 1, "triplet_select: k and p must be >= 1, got k = ", k,
                    ", p = ", p);
  TORCH_CHECK_VALUE(!self_reference || x.size(0) == ref.size(0),
                    "triplet_select: self_reference needs ref to be x");
}

at::ScalarType accumulation_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_select_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& labels_in, const at::Tensor& ref_in,
    const at::Tensor& ref_labels_in, bool self_reference, int64_t k, int64_t p, bool squared) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  check_select_inputs(x_in, labels_in, ref_in, ref_labels_in, self_reference, k, p);
  const int64_t n = x_in.size(0);
  const auto acc_type = accumulation_type(x_in);
  at::Tensor pos_dist = at::empty({n}, x_in.options().dtype(acc_type));
  at::Tensor neg_dist = at::empty({n}, x_in.options().dtype(acc_type));
  at::Tensor pos_index = at::empty({n}, labels_in.options());
  at::Tensor neg_index = at::empty({n}, labels_in.options());
  if (n > 0) {
    // Detached: the op's autograd is registered around it, and at::mm_out refuses inputs that
    // require grad.
    SelectInputs in;
    in.x = x_in.detach().to(acc_type).contiguous();
    in.ref = self_reference ? in.x : ref_in.detach().to(acc_type).contiguous();
    in.x_norm = in.x.pow(2).sum(1);
    in.ref_norm = self_reference ? in.x_norm : in.ref.pow(2).sum(1);
    in.labels = labels_in.contiguous();
    in.ref_labels = ref_labels_in.contiguous();
    in.self_reference = self_reference;
    in.squared = squared;
    in.k = k;
    in.p = p;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "triplet_select_forward_cpu", [&] {
      select_all<scalar_t>(in, pos_dist.mutable_data_ptr<scalar_t>(),
                           neg_dist.mutable_data_ptr<scalar_t>(),
                           pos_index.mutable_data_ptr<int64_t>(),
                           neg_index.mutable_data_ptr<int64_t>());
    });
  }
  return {pos_dist.to(x_in.scalar_type()), neg_dist.to(x_in.scalar_type()), pos_index, neg_index};
}

// The coefficient c of one selected pair (see the file header).
template <typename acc_t>
acc_t pair_coefficient(acc_t grad, acc_t dist, int64_t index, bool squared) {
  const acc_t square = squared ? dist : dist * dist;
  if (index < 0 || !(square > acc_t(1e-12))) return acc_t(0);
  return squared ? acc_t(2) * grad : grad / dist;
}

template <typename acc_t>
void backward_all(const acc_t* grad_pos, const acc_t* grad_neg, const acc_t* x, const acc_t* ref,
                  const acc_t* pos_dist, const acc_t* neg_dist, const int64_t* pos_index,
                  const int64_t* neg_index, int64_t n, int64_t m, int64_t d, bool self_reference,
                  bool squared, acc_t* grad_x, acc_t* grad_ref) {
  // Two pairs per anchor: entry 2i is the positive, 2i + 1 the negative.
  std::vector<acc_t> coefficient(2 * n);
  std::vector<int64_t> partner(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    coefficient[2 * i] = pair_coefficient(grad_pos[i], pos_dist[i], pos_index[i], squared);
    coefficient[2 * i + 1] = pair_coefficient(grad_neg[i], neg_dist[i], neg_index[i], squared);
    partner[2 * i] = pos_index[i];
    partner[2 * i + 1] = neg_index[i];
  }
  // Anchors' terms: grad x_i = sum over its pairs of c (x_i - r_j).
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t* out = grad_x + i * d;
      const acc_t* xi = x + i * d;
      std::fill(out, out + d, acc_t(0));
      for (int64_t e = 2 * i; e < 2 * i + 2; ++e) {
        if (coefficient[e] == acc_t(0)) continue;
        const acc_t c = coefficient[e];
        const acc_t* rj = ref + partner[e] * d;
        for (int64_t t = 0; t < d; ++t) out[t] += c * (xi[t] - rj[t]);
      }
    }
  });
  // Partners' terms, grouped by partner row (counting sort, stable in anchor order).
  std::vector<int64_t> start(m + 1, 0);
  for (int64_t e = 0; e < 2 * n; ++e) {
    if (coefficient[e] != acc_t(0)) ++start[partner[e] + 1];
  }
  for (int64_t j = 0; j < m; ++j) start[j + 1] += start[j];
  std::vector<int64_t> order(start[m]);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t e = 0; e < 2 * n; ++e) {
    if (coefficient[e] != acc_t(0)) order[fill[partner[e]]++] = e;
  }
  // Against itself, the partners' terms add to grad_x; against a bank they fill grad_ref.
  acc_t* partner_out = self_reference ? grad_x : grad_ref;
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      acc_t* out = partner_out + j * d;
      if (!self_reference) std::fill(out, out + d, acc_t(0));
      const acc_t* rj = ref + j * d;
      for (int64_t q = start[j]; q < start[j + 1]; ++q) {
        const int64_t e = order[q];
        const acc_t c = coefficient[e];
        const acc_t* xi = x + (e / 2) * d;
        for (int64_t t = 0; t < d; ++t) out[t] += c * (rj[t] - xi[t]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> triplet_select_backward_cpu(
    const at::Tensor& grad_pos_in, const at::Tensor& grad_neg_in, const at::Tensor& x_in,
    const at::Tensor& ref_in, const at::Tensor& pos_dist_in, const at::Tensor& neg_dist_in,
    const at::Tensor& pos_index_in, const at::Tensor& neg_index_in, bool self_reference,
    bool squared) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  const int64_t n = x_in.size(0), m = ref_in.size(0), d = x_in.size(1);
  for (const at::Tensor* t : {&grad_pos_in, &grad_neg_in, &pos_dist_in, &neg_dist_in, &pos_index_in, &neg_index_in}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n,
                      "triplet_select_backward: per-anchor tensors must be [N] with N = ", n,
                      ", got ", t->sizes());
  }
  const auto acc_type = accumulation_type(x_in);
  const auto as_acc = [&](const at::Tensor& t) { return t.detach().to(acc_type).contiguous(); };
  const at::Tensor x = as_acc(x_in), ref = self_reference ? x : as_acc(ref_in);
  const at::Tensor grad_pos = as_acc(grad_pos_in), grad_neg = as_acc(grad_neg_in);
  const at::Tensor pos_dist = as_acc(pos_dist_in), neg_dist = as_acc(neg_dist_in);
  const at::Tensor pos_index = pos_index_in.contiguous(), neg_index = neg_index_in.contiguous();
  at::Tensor grad_x = at::empty({n, d}, x.options());
  at::Tensor grad_ref = at::empty({self_reference ? 0 : m, d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(acc_type, "triplet_select_backward_cpu", [&] {
    backward_all<scalar_t>(grad_pos.const_data_ptr<scalar_t>(), grad_neg.const_data_ptr<scalar_t>(),
                           x.const_data_ptr<scalar_t>(), ref.const_data_ptr<scalar_t>(),
                           pos_dist.const_data_ptr<scalar_t>(), neg_dist.const_data_ptr<scalar_t>(),
                           pos_index.const_data_ptr<int64_t>(), neg_index.const_data_ptr<int64_t>(),
                           n, m, d, self_reference, squared, grad_x.mutable_data_ptr<scalar_t>(),
                           grad_ref.mutable_data_ptr<scalar_t>());
  });
  return {grad_x.to(x_in.scalar_type()), grad_ref.to(ref_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("triplet_select_forward", &triplet_select_forward_cpu);
  m.impl("triplet_select_backward", &triplet_select_backward_cpu);
}

}  // namespace reidfast::cpu
