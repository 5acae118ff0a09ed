// CPU operator of the adaptive-margin pairwise loss (reidfast/ops/adaptive_margin.py).
//
// Design. The pairs i < j are visited in tiles of the distance matrix's upper triangle: a block of
// anchor rows [r0, r0 + rows) against the columns [c0, c0 + cols), c0 >= r0, at most kTileElements
// distances, their dot products from one matrix multiply (at::mm_out, with all of ATen's threads).
// Two passes:
//   1. per row (at::parallel_for over a tile's rows): the sums and counts of the positive and
//      negative pairs' squared distances, in double, kept per row and added in row order, so the
//      result does not depend on the thread count;
//   2. with the margins fixed: each pair's hinge term and its slope w = dL/dD (1 or 0 for a
//      positive pair, -1 or 0 for a negative one, times the reduction's scale), the terms summed
//      per row as in pass 1. When the gradient is asked for, the tile's slopes W give, with
//      dD_ij/dx_i = 2 (x_i - x_j): grad x_rows += 2 (rowsum(W) x_rows - W x_cols) and
//      grad x_cols += 2 (colsum(W) x_cols - W^T x_rows): two more matrix multiplies per tile.
// When the whole triangle is one tile (N^2 <= kTileElements), pass 2 reuses pass 1's products.
// Half-precision inputs are converted to float32 once; float64 stays float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <tuple>
#include <vector>

namespace reidfast::cpu {
namespace {

// Distances per tile (8 MiB of float32): a tile's products stay in the last-level cache between
// the multiply that writes them and the pass that reads them.
constexpr int64_t kTileElements = int64_t(1) << 21;
constexpr double kDistanceEps = 1e-12;

struct Tile {
  int64_t row_begin, rows, col_begin, cols;
};

// Calls visit(tile, dots) for the tiles covering the pairs i < j; dots [rows, cols] holds
// x_rows . x_cols^T. `cache` keeps the products of a single-tile triangle for a second visit.
void for_each_tile(const at::Tensor& x, at::Tensor& cache,
                   const std::function<void(const Tile&, const at::Tensor&)>& visit) {
  const int64_t n = x.size(0);
  if (n * n <= kTileElements) {
    if (!cache.defined()) cache = at::mm(x, x.t());
    visit(Tile{0, n, 0, n}, cache);
    return;
  }
  const int64_t tile_rows = std::clamp<int64_t>(kTileElements / n, 1, n);
  at::Tensor buffer = at::empty({tile_rows, std::min(n, kTileElements / tile_rows)}, x.options());
  for (int64_t row_begin = 0; row_begin < n - 1; row_begin += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - row_begin);
    for (int64_t col_begin = row_begin; col_begin < n; col_begin += buffer.size(1)) {
      const int64_t cols = std::min(buffer.size(1), n - col_begin);
      at::Tensor dots = buffer.narrow(0, 0, rows).narrow(1, 0, cols);
      at::mm_out(dots, x.narrow(0, row_begin, rows), x.narrow(0, col_begin, cols).t());
      visit(Tile{row_begin, rows, col_begin, cols}, dots);
    }
  }
}

// The rows of a triangle tile hold fewer pairs the lower they are: task q takes rows from both
// ends in turn (0, rows - 1, 1, rows - 2, ...), so contiguous task ranges carry equal work.
inline int64_t balanced_row(int64_t task, int64_t rows) {
  return task % 2 == 0 ? task / 2 : rows - 1 - task / 2;
}

// Sum over rows of `per_row` in row order (deterministic), as double.
double ordered_sum(const std::vector<double>& per_row) {
  double total = 0;
  for (const double v : per_row) total += v;
  return total;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_margin_impl(
    const at::Tensor& x, const at::Tensor& labels_in, double mu, double gamma,
    c10::string_view reduction, bool compute_grad) {
  const int64_t n = x.size(0);
  const at::Tensor norms = x.pow(2).sum(1);
  const at::Tensor labels = labels_in.contiguous();
  const acc_t* norm = norms.const_data_ptr<acc_t>();
  const int64_t* label = labels.const_data_ptr<int64_t>();
  const auto squared_distance = [&](const acc_t* dots_row, int64_t i, int64_t j, int64_t c) {
    return std::max<double>(norm[i] + norm[j] - acc_t(2) * dots_row[c], kDistanceEps);
  };
  // Calls visit(r, c, i, j, D_ij) for each pair i < j of tile t (tile row r, tile column c),
  // rows in parallel (each row i is visited by one thread).
  const auto for_each_pair = [&](const Tile& t, const at::Tensor& dots, const auto& visit) {
    const acc_t* dots_ptr = dots.const_data_ptr<acc_t>();
    const int64_t stride = dots.stride(0);
    at::parallel_for(0, t.rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = balanced_row(task, t.rows);
        const int64_t i = t.row_begin + r;
        const acc_t* row = dots_ptr + r * stride;
        for (int64_t c = std::max<int64_t>(0, i + 1 - t.col_begin); c < t.cols; ++c) {
          visit(r, c, i, t.col_begin + c, squared_distance(row, i, t.col_begin + c, c));
        }
      }
    });
  };
  at::Tensor cache;

  // Pass 1: sums and counts of the positive and negative pairs' squared distances.
  std::vector<double> pos_sum(n, 0), neg_sum(n, 0);
  std::vector<int64_t> pos_count(n, 0);
  for_each_tile(x, cache, [&](const Tile& t, const at::Tensor& dots) {
    for_each_pair(t, dots, [&](int64_t, int64_t, int64_t i, int64_t j, double d) {
      if (label[i] == label[j]) {
        pos_sum[i] += d;
        ++pos_count[i];
      } else {
        neg_sum[i] += d;
      }
    });
  });
  const int64_t num_pairs = n * (n - 1) / 2;
  int64_t num_pos = 0;
  for (const int64_t c : pos_count) num_pos += c;
  const int64_t num_neg = num_pairs - num_pos;
  TORCH_CHECK_VALUE(num_pos > 0 && num_neg > 0,
                    "adaptive_margin_loss: the batch needs a positive and a negative pair, got ",
                    num_pos, " positive and ", num_neg, " negative pairs");
  const double s = ordered_sum(pos_sum) / num_pos;
  const double d = ordered_sum(neg_sum) / num_neg;
  const double mp = -std::expm1(-mu * d) / mu;
  const double gs = gamma * s;  // softplus(gs) = max(gs, 0) + log1p(exp(-|gs|)): no overflow
  const double mn = (std::max(gs, 0.0) + std::log1p(std::exp(-std::abs(gs)))) / gamma;
  double pos_scale = 1, neg_scale = 1;
  if (reduction == "mean") {
    pos_scale = neg_scale = 1.0 / static_cast<double>(num_pairs);
  } else if (reduction == "balanced") {
    pos_scale = 1.0 / static_cast<double>(num_pos);
    neg_scale = 1.0 / static_cast<double>(num_neg);
  }

  // Pass 2: hinge terms and, when asked, the gradient.
  const acc_t mp_acc = static_cast<acc_t>(mp), mn_acc = static_cast<acc_t>(mn);
  std::vector<double> pos_terms(n, 0), neg_terms(n, 0);
  at::Tensor grad = compute_grad ? at::zeros(x.sizes(), x.options()) : at::empty({0, x.size(1)}, x.options());
  at::Tensor slopes;
  for_each_tile(x, cache, [&](const Tile& t, const at::Tensor& dots) {
    if (compute_grad) slopes = at::zeros({t.rows, t.cols}, x.options());
    acc_t* slope_ptr = compute_grad ? slopes.mutable_data_ptr<acc_t>() : nullptr;
    for_each_pair(t, dots, [&](int64_t r, int64_t c, int64_t i, int64_t j, double d) {
      const acc_t dist = static_cast<acc_t>(d);
      acc_t slope = 0;
      if (label[i] == label[j]) {
        if (dist > mp_acc) {
          pos_terms[i] += static_cast<double>(dist - mp_acc);
          slope = static_cast<acc_t>(pos_scale);
        }
      } else if (mn_acc > dist) {
        neg_terms[i] += static_cast<double>(mn_acc - dist);
        slope = static_cast<acc_t>(-neg_scale);
      }
      // A clamped distance has no gradient, as the clamp's.
      if (slope_ptr != nullptr && dist > acc_t(kDistanceEps)) slope_ptr[r * t.cols + c] = slope;
    });
    if (compute_grad) {
      const at::Tensor x_rows = x.narrow(0, t.row_begin, t.rows);
      const at::Tensor x_cols = x.narrow(0, t.col_begin, t.cols);
      at::Tensor grad_rows = grad.narrow(0, t.row_begin, t.rows);
      if (t.row_begin == t.col_begin && t.rows == t.cols) {
        // The whole triangle in one tile: with the symmetric slopes W + W^T, one product.
        const at::Tensor symmetric = slopes.add(slopes.t());
        grad_rows.add_(x_rows.mul(symmetric.sum(1, true)), 2).addmm_(symmetric, x_cols, 1, -2);
      } else {
        grad_rows.add_(x_rows.mul(slopes.sum(1, true)), 2).addmm_(slopes, x_cols, 1, -2);
        at::Tensor grad_cols = grad.narrow(0, t.col_begin, t.cols);
        grad_cols.add_(x_cols.mul(slopes.sum(0).unsqueeze(1)), 2).addmm_(slopes.t(), x_rows, 1, -2);
      }
    }
  });
  const double loss = pos_scale * ordered_sum(pos_terms) + neg_scale * ordered_sum(neg_terms);
  at::Tensor loss_out = at::empty({}, x.options());
  loss_out.fill_(loss);
  at::Tensor margins = at::empty({4}, x.options());
  acc_t* m = margins.mutable_data_ptr<acc_t>();
  m[0] = static_cast<acc_t>(mp);
  m[1] = static_cast<acc_t>(mn);
  m[2] = static_cast<acc_t>(s);
  m[3] = static_cast<acc_t>(d);
  return {loss_out, margins, grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_margin_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& labels, double mu, double gamma,
    c10::string_view reduction, bool compute_grad) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  TORCH_CHECK_VALUE(x_in.dim() == 2, "adaptive_margin_loss: x must be [N, D], got ", x_in.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == x_in.size(0),
                    "adaptive_margin_loss: labels must be [N] with N = ", x_in.size(0), ", got ",
                    labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "adaptive_margin_loss: labels must be int64");
  TORCH_CHECK_VALUE(mu > 0 && gamma > 0, "adaptive_margin_loss: mu and gamma must be > 0, got mu = ",
                    mu, ", gamma = ", gamma);
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "balanced",
                    "adaptive_margin_loss: reduction must be mean, sum or balanced, got ", reduction);
  const auto acc_type = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Detached: the op's autograd is registered around it, and at::mm_out refuses inputs that
  // require grad.
  const at::Tensor x = x_in.detach().to(acc_type).contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(acc_type, "adaptive_margin_forward_cpu", [&] {
    result = adaptive_margin_impl<scalar_t>(x, labels, mu, gamma, reduction, compute_grad);
  });
  auto& [loss, margins, grad] = result;
  return {loss, margins, grad.to(x_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("adaptive_margin_forward", &adaptive_margin_forward_cpu);
}

}  // namespace reidfast::cpu
