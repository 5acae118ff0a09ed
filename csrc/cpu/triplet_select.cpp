// CPU operator of triplet_select: the generalised batch-hard selection (PLA Eq. 3-4).
//
// Design. Anchors are split into blocks of kRowBlock rows; at::parallel_for spreads the blocks over
// the OpenMP threads. For its block, a task walks the reference set in tiles of kColumnBlock rows:
// one matrix multiply (at::mm_out, single-threaded inside the parallel region) gives the tile's
// dot products, the distances of one anchor's row of the tile are formed in a contiguous buffer
// (a loop the compiler vectorises), and each candidate is offered to the anchor's running
// selections (csrc/triplet_select.h: the k largest positives, the p smallest negatives), which
// reject most candidates with one comparison once full. Memory beyond the inputs is one
// [kRowBlock, kColumnBlock] tile per thread plus (k + p) candidates per anchor: the N x M
// distance matrix never exists, so memory banks of any size work.
//
// Numerics. Half-precision inputs are converted to float32 once; float64 stays float64. The
// distance is sqrt(max(|x_i|^2 + |r_j|^2 - 2 x_i.r_j, 1e-12)) (no sqrt when squared); the
// anchor's own pair, under self_reference, is exactly 0. The selection does not depend on the
// tiling (the ranking rule is a total order), so results are deterministic.
#include "../triplet_select.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

namespace reidfast::cpu {
namespace {

constexpr int64_t kRowBlock = 32;
constexpr int64_t kColumnBlock = 512;

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

template <typename acc_t>
void select_block(const at::Tensor& x, const at::Tensor& ref, const acc_t* x_norm,
                  const acc_t* ref_norm, const int64_t* labels, const int64_t* ref_labels,
                  bool self_reference, int64_t k, int64_t p, bool squared, int64_t row_begin,
                  int64_t row_end, acc_t* pos_out, acc_t* neg_out, int64_t* pos_index_out,
                  int64_t* neg_index_out) {
  const int64_t rows = row_end - row_begin;
  const int64_t num_ref = ref.size(0);
  std::vector<std::unique_ptr<AnchorSelections<acc_t>>> anchors;
  anchors.reserve(rows);
  for (int64_t r = 0; r < rows; ++r) anchors.push_back(std::make_unique<AnchorSelections<acc_t>>(k, p));
  const at::Tensor x_block = x.narrow(0, row_begin, rows);
  at::Tensor dots = at::empty({rows, std::min(kColumnBlock, num_ref)}, x.options());
  std::vector<acc_t> dist(kColumnBlock);
  for (int64_t col_begin = 0; col_begin < num_ref; col_begin += kColumnBlock) {
    const int64_t cols = std::min(kColumnBlock, num_ref - col_begin);
    at::Tensor tile = dots.narrow(1, 0, cols);
    at::mm_out(tile, x_block, ref.narrow(0, col_begin, cols).t());
    const acc_t* tile_ptr = tile.const_data_ptr<acc_t>();
    const int64_t tile_stride = tile.stride(0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row_begin + r;
      const acc_t* row_dots = tile_ptr + r * tile_stride;
      const acc_t norm_i = x_norm[i];
      const acc_t* norm_j = ref_norm + col_begin;
      for (int64_t c = 0; c < cols; ++c) {
        const acc_t square = std::max(norm_i + norm_j[c] - acc_t(2) * row_dots[c], acc_t(1e-12));
        dist[c] = squared ? square : std::sqrt(square);
      }
      if (self_reference && i >= col_begin && i < col_begin + cols) dist[i - col_begin] = acc_t(0);
      AnchorSelections<acc_t>& sel = *anchors[r];
      const int64_t label = labels[i];
      for (int64_t c = 0; c < cols; ++c) {
        if (ref_labels[col_begin + c] == label) {
          sel.pos.offer(dist[c], col_begin + c);
        } else {
          sel.neg.offer(dist[c], col_begin + c);
        }
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const AnchorSelections<acc_t>& sel = *anchors[r];
    pos_out[row_begin + r] = sel.pos.selected_dist();
    pos_index_out[row_begin + r] = sel.pos.selected_index();
    neg_out[row_begin + r] = sel.neg.selected_dist();
    neg_index_out[row_begin + r] = sel.neg.selected_index();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_select_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& labels_in, const at::Tensor& ref_in,
    const at::Tensor& ref_labels_in, bool self_reference, int64_t k, int64_t p, bool squared) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  TORCH_CHECK_VALUE(x_in.dim() == 2 && ref_in.dim() == 2 && x_in.size(1) == ref_in.size(1),
                    "triplet_select: x [N, D] and ref [M, D] must share D, got ", x_in.sizes(),
                    " and ", ref_in.sizes());
  TORCH_CHECK_TYPE(x_in.scalar_type() == ref_in.scalar_type(),
                   "triplet_select: ref must have x's dtype ", x_in.scalar_type(), ", got ",
                   ref_in.scalar_type());
  TORCH_CHECK_VALUE(labels_in.dim() == 1 && labels_in.size(0) == x_in.size(0),
                    "triplet_select: labels must be [N] with N = ", x_in.size(0), ", got ",
                    labels_in.sizes());
  TORCH_CHECK_VALUE(ref_labels_in.dim() == 1 && ref_labels_in.size(0) == ref_in.size(0),
                    "triplet_select: ref_labels must be [M] with M = ", ref_in.size(0), ", got ",
                    ref_labels_in.sizes());
  TORCH_CHECK_TYPE(labels_in.scalar_type() == at::kLong && ref_labels_in.scalar_type() == at::kLong,
                   "triplet_select: labels and ref_labels must be int64");
  TORCH_CHECK_VALUE(k >= 1 && p >= 1, "triplet_select: k and p must be >= 1, got k = ", k,
                    ", p = ", p);
  TORCH_CHECK_VALUE(!self_reference || x_in.size(0) == ref_in.size(0),
                    "triplet_select: self_reference needs ref to be x");
  const int64_t n = x_in.size(0);
  const auto acc_type = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor pos_dist = at::empty({n}, x_in.options().dtype(acc_type));
  at::Tensor neg_dist = at::empty({n}, x_in.options().dtype(acc_type));
  at::Tensor pos_index = at::empty({n}, labels_in.options());
  at::Tensor neg_index = at::empty({n}, labels_in.options());
  if (n > 0) {
    // Detached: the op's autograd is registered around it, and at::mm_out refuses inputs that
    // require grad.
    const at::Tensor x = x_in.detach().to(acc_type).contiguous();
    const at::Tensor ref = self_reference ? x : ref_in.detach().to(acc_type).contiguous();
    const at::Tensor x_norm = x.pow(2).sum(1);
    const at::Tensor ref_norm = self_reference ? x_norm : ref.pow(2).sum(1);
    const at::Tensor labels = labels_in.contiguous();
    const at::Tensor ref_labels = ref_labels_in.contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "triplet_select_forward_cpu", [&] {
      const scalar_t* x_norm_ptr = x_norm.const_data_ptr<scalar_t>();
      const scalar_t* ref_norm_ptr = ref_norm.const_data_ptr<scalar_t>();
      const int64_t* labels_ptr = labels.const_data_ptr<int64_t>();
      const int64_t* ref_labels_ptr = ref_labels.const_data_ptr<int64_t>();
      scalar_t* pos_ptr = pos_dist.mutable_data_ptr<scalar_t>();
      scalar_t* neg_ptr = neg_dist.mutable_data_ptr<scalar_t>();
      int64_t* pos_index_ptr = pos_index.mutable_data_ptr<int64_t>();
      int64_t* neg_index_ptr = neg_index.mutable_data_ptr<int64_t>();
      const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
      at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
        for (int64_t block = block_begin; block < block_end; ++block) {
          const int64_t row_begin = block * kRowBlock;
          select_block<scalar_t>(x, ref, x_norm_ptr, ref_norm_ptr, labels_ptr, ref_labels_ptr,
                                 self_reference, k, p, squared, row_begin,
                                 std::min(n, row_begin + kRowBlock), pos_ptr, neg_ptr,
                                 pos_index_ptr, neg_index_ptr);
        }
      });
    });
  }
  return {pos_dist.to(x_in.scalar_type()), neg_dist.to(x_in.scalar_type()), pos_index, neg_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("triplet_select_forward", &triplet_select_forward_cpu);
}

}  // namespace reidfast::cpu
