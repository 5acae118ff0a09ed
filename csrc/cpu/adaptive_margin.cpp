// CPU operator of the adaptive-margin pairwise loss (reidfast/ops/adaptive_margin.py).
//
// Design. The pairs i < j are visited in tiles of the distance matrix's upper triangle: a block of
// anchor rows [r0, r0 + rows) against the columns [c0, c0 + cols), c0 >= r0, at most
// kCpuTileElements distances (csrc/distance.h), their dot products from matrix multiplies
// (at::mm_out, with all of ATen's threads). Two passes, rows in parallel (at::parallel_for over
// a tile's rows):
//   1. the sums and counts of the positive and negative pairs' squared distances;
//   2. with the margins fixed: each pair's hinge term and, when the gradient is asked for, its
//      coefficient T_ij = -2 w_ij, with w_ij = dL/dD_ij (the reduction's scale, signed, for a pair
//      inside its hinge, else 0), written over the tile's products, which are not read again.
// Per row, the pair loops run on vector lanes (see Lanes) over chunks of kChunk columns, each
// chunk's lanes added in order into double: the result does not depend on the thread count.
// With dD_ij/dx_i = 2 (x_i - x_j) the gradient is
//   grad x_i = sum_j T_ij x_j - (sum_j T_ij) x_i    over the symmetric T (j != i),
// so when the whole triangle is one tile (N^2 <= kCpuTileElements, every usual batch) T is
// mirrored into the lower triangle with -rowsum(T) on the diagonal and grad x = T x is one matrix
// multiply; the triangle's products come from row strips (rows [r0, r0 + h) against columns
// [r0, N)), part of the full product's work (3/4 of it with two strips). Larger batches
// accumulate per tile:
//   grad x_rows += T x_cols - rowsum(T) x_rows,   grad x_cols += T^T x_rows - colsum(T) x_cols.
// Half-precision inputs are converted to float32 once; float64 stays float64.
//
// NaN and inf (the package's NaN policy: the NaN pattern of the reference in
// reidfast/ops/adaptive_margin.py). A non-finite embedding makes a pair mean, so both margins, so
// every hinge term NaN: the loss is NaN. Each hinge is active unless its argument is <= 0, so a
// NaN argument is active, as the reference's relu lets the gradient through; a NaN or clamped
// distance has no gradient, as the clamp's. The reference's gradient goes through matrix
// multiplies over all rows, where a zero coefficient times a non-finite entry is NaN: every row of
// the gradient is NaN in each column that holds a non-finite entry. The kernel finds such rows by
// their squared norms (a check of N values) and writes those columns NaN; a finite batch pays
// nothing more.
#include "../distance.h"
#include "../reduction.h"
#include "lanes.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

namespace reidfast::cpu {
namespace {

constexpr int64_t kChunk = 256;
// Row strips of the single-tile triangle product: at least kMinStripRows rows (smaller products
// lose more to the multiply's overheads than the skipped half saves), at most kMaxStrips strips.
constexpr int64_t kMinStripRows = 128;
constexpr int64_t kMaxStrips = 8;

// Whether the triangle of an N-row batch is one tile (every usual batch).
inline bool is_single_tile(int64_t n) { return n * n <= kCpuTileElements; }

struct Tile {
  int64_t row_begin, rows, col_begin, cols;
};

// Calls visit(tile, dots) for the tiles covering the pairs i < j; dots [rows, cols] holds
// x_rows . x_cols^T on and above the diagonal i = j (a single tile's lower triangle is not
// computed). `cache` keeps the products of a single-tile triangle for a second visit.
void for_each_tile(const at::Tensor& x, at::Tensor& cache,
                   const std::function<void(const Tile&, const at::Tensor&)>& visit) {
  const int64_t n = x.size(0);
  if (is_single_tile(n)) {
    if (!cache.defined()) {
      cache = at::empty({n, n}, x.options());
      const int64_t strip = std::max(kMinStripRows, (n + kMaxStrips - 1) / kMaxStrips);
      for (int64_t row_begin = 0; row_begin < n; row_begin += strip) {
        const int64_t rows = std::min(strip, n - row_begin);
        at::Tensor out = cache.narrow(0, row_begin, rows).narrow(1, row_begin, n - row_begin);
        at::mm_out(out, x.narrow(0, row_begin, rows), x.narrow(0, row_begin, n - row_begin).t());
      }
    }
    visit(Tile{0, n, 0, n}, cache);
    return;
  }
  const int64_t tile_rows = std::clamp<int64_t>(kCpuTileElements / n, 1, n);
  at::Tensor buffer = at::empty({tile_rows, std::min(n, kCpuTileElements / tile_rows)}, x.options());
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

// Identities as dense ids 0 .. #identities - 1 (in label order).
template <typename Id>
std::vector<Id> dense_identities(const at::Tensor& labels) {
  const int64_t n = labels.size(0);
  const int64_t* label = labels.const_data_ptr<int64_t>();
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return label[a] < label[b]; });
  std::vector<Id> ids(n);
  Id id = -1;
  for (int64_t k = 0; k < n; ++k) {
    if (k == 0 || label[order[k]] != label[order[k - 1]]) ++id;
    ids[order[k]] = id;
  }
  return ids;
}

// The pairs (i, j) of one row of a tile, j in [first, first + count): the anchor's squared norm
// and identity, and for each j its squared norm, identity and product x_i . x_j.
template <typename acc_t>
struct RowPairs {
  using L = Lanes<acc_t>;
  acc_t norm_i;
  typename L::Id id_i;
  const acc_t* norm_j;
  const typename L::Id* id_j;
  acc_t* dots;  // pass 2 writes the coefficients T_ij over the products
  int64_t count;

  // The lanes [c, c + width) of the row: D_ij = max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, eps) (NaN
  // kept), whether the pair is positive, and which lanes are pairs of the row at all.
  struct Block {
    typename L::Value distance;
    typename L::Mask same, valid;
    int64_t lanes;
  };
  Block block(int64_t c) const {
    using Value = typename L::Value;
    using Mask = typename L::Mask;
    const int64_t lanes = std::min(kWidth<acc_t>, count - c);
    const Value square = norm_i + load_lanes<Value>(norm_j + c, lanes, acc_t(0)) -
                         acc_t(2) * load_lanes<Value>(dots + c, lanes, acc_t(0));
    const Value eps = Value{} + static_cast<acc_t>(kDistanceEps);
    const Mask ids = load_lanes<Mask>(id_j + c, lanes, typename L::Id(-1));
    Mask valid;
    for (int64_t lane = 0; lane < kWidth<acc_t>; ++lane) valid[lane] = lane < lanes ? -1 : 0;
    // clamp_square (csrc/distance.h) on each lane, NaN kept.
    return {select(square < eps, eps, square), ids == id_i, valid, lanes};
  }
};

// Pass 1 on one row: sum of the positive pairs' distances, their count, sum of the negatives'.
template <typename acc_t>
void row_sums(const RowPairs<acc_t>& row, double& pos_sum, double& pos_count, double& neg_sum) {
  using Value = typename Lanes<acc_t>::Value;
  const Value zero{}, one = zero + acc_t(1);
  Value pos{}, neg{}, same_count{};  // chunk counts (<= kChunk) are exact in the lanes
  for (int64_t chunk = 0; chunk < row.count; chunk += kChunk) {
    for (int64_t c = chunk; c < std::min(row.count, chunk + kChunk); c += kWidth<acc_t>) {
      const auto b = row.block(c);
      pos += select(b.same & b.valid, b.distance, zero);
      neg += select(~b.same & b.valid, b.distance, zero);
      same_count += select(b.same & b.valid, one, zero);
    }
    fold_lanes(pos, pos_sum);
    fold_lanes(neg, neg_sum);
    fold_lanes(same_count, pos_count);
  }
}

// Pass 2 on one row: the positive and negative hinge terms; with kWrite, T_ij over the products.
template <bool kWrite, typename acc_t>
void row_terms(const RowPairs<acc_t>& row, acc_t mp, acc_t mn, acc_t pos_coef, acc_t neg_coef,
               double& pos_terms, double& neg_terms) {
  using Value = typename Lanes<acc_t>::Value;
  const Value zero{}, eps = zero + static_cast<acc_t>(kDistanceEps);
  Value pos{}, neg{};
  for (int64_t chunk = 0; chunk < row.count; chunk += kChunk) {
    for (int64_t c = chunk; c < std::min(row.count, chunk + kChunk); c += kWidth<acc_t>) {
      const auto b = row.block(c);
      const Value pos_excess = b.distance - mp, neg_excess = mn - b.distance;
      // Active unless the excess is <= 0: NaN is active, as relu's gradient is (see the header).
      const auto pos_active = b.same & b.valid & ~(pos_excess <= zero);
      const auto neg_active = ~b.same & b.valid & ~(neg_excess <= zero);
      pos += select(pos_active, pos_excess, zero);
      neg += select(neg_active, neg_excess, zero);
      if constexpr (kWrite) {
        // A clamped distance has no gradient, as the clamp's.
        const Value hinge_coef = select(pos_active, zero + pos_coef, select(neg_active, zero + neg_coef, zero));
        const Value coef = select(b.distance > eps, hinge_coef, zero);
        acc_t lanes[kWidth<acc_t>];
        std::memcpy(lanes, &coef, sizeof(coef));
        std::copy_n(lanes, b.lanes, row.dots + c);
      }
    }
    fold_lanes(pos, pos_terms);
    fold_lanes(neg, neg_terms);
  }
}

// Mirrors the single tile's coefficients T (upper triangle) into the lower triangle and puts
// -rowsum(T) on the diagonal, so that grad x = T x.
template <typename acc_t>
void symmetrize_with_diagonal(at::Tensor& coefficients) {
  const int64_t n = coefficients.size(0);
  acc_t* t = coefficients.mutable_data_ptr<acc_t>();
  at::parallel_for(0, n, rows_per_task(n), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      acc_t* row = t + j * n;
      acc_t total = 0;
      for (int64_t i = 0; i < j; ++i) {
        row[i] = t[i * n + j];
        total += row[i];
      }
      for (int64_t i = j + 1; i < n; ++i) total += row[i];
      row[j] = -total;
    }
  });
}

// The reference's NaN pattern of the gradient (see the header): grad[:, c] = NaN for each column c
// in which x has a NaN or inf. Rows with a non-finite entry have a non-finite squared norm, so
// only those rows are read (none for a finite batch; a finite row whose norm overflows is read
// and changes nothing).
template <typename acc_t>
void nan_columns_of_nonfinite_entries(const at::Tensor& x, const at::Tensor& norms, at::Tensor& grad) {
  const int64_t n = x.size(0), dim = x.size(1);
  const acc_t* norm = norms.const_data_ptr<acc_t>();
  const acc_t* data = x.const_data_ptr<acc_t>();
  std::vector<bool> nonfinite_column;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(norm[i])) continue;
    nonfinite_column.resize(dim);
    for (int64_t c = 0; c < dim; ++c) {
      if (!std::isfinite(data[i * dim + c])) nonfinite_column[c] = true;
    }
  }
  if (nonfinite_column.empty()) return;
  acc_t* out = grad.mutable_data_ptr<acc_t>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < dim; ++c) {
      if (nonfinite_column[c]) out[i * dim + c] = std::numeric_limits<acc_t>::quiet_NaN();
    }
  }
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_margin_impl(
    const at::Tensor& x, const at::Tensor& labels_in, double mu, double gamma,
    Reduction reduction, bool compute_grad) {
  const int64_t n = x.size(0);
  const at::Tensor norms = squared_norms<acc_t>(x);
  using Id = typename Lanes<acc_t>::Id;
  const std::vector<Id> ids = dense_identities<Id>(labels_in.contiguous());
  const acc_t* norm = norms.const_data_ptr<acc_t>();
  const Id* id = ids.data();
  // Calls visit(i, pairs) for each row i of tile t with its pairs i < j, rows in parallel.
  const auto for_each_row = [&](const Tile& t, const at::Tensor& dots, const auto& visit) {
    acc_t* dots_ptr = dots.mutable_data_ptr<acc_t>();
    const int64_t stride = dots.stride(0);
    at::parallel_for(0, t.rows, rows_per_task(t.cols), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = balanced_row(task, t.rows);
        const int64_t i = t.row_begin + r;
        const int64_t first = std::max<int64_t>(0, i + 1 - t.col_begin);
        visit(i, r, first,
              RowPairs<acc_t>{norm[i], id[i], norm + t.col_begin + first, id + t.col_begin + first,
                              dots_ptr + r * stride + first, t.cols - first});
      }
    });
  };
  at::Tensor cache;

  // Pass 1: sums and counts of the positive and negative pairs' squared distances.
  std::vector<double> pos_sum(n, 0), neg_sum(n, 0), pos_count(n, 0);
  for_each_tile(x, cache, [&](const Tile& t, const at::Tensor& dots) {
    for_each_row(t, dots, [&](int64_t i, int64_t, int64_t, const RowPairs<acc_t>& row) {
      row_sums(row, pos_sum[i], pos_count[i], neg_sum[i]);
    });
  });
  const int64_t num_pairs = n * (n - 1) / 2;
  const auto num_pos = static_cast<int64_t>(ordered_sum(pos_count));
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
  if (reduction == Reduction::kMean) {
    pos_scale = neg_scale = 1.0 / static_cast<double>(num_pairs);
  } else if (reduction == Reduction::kBalanced) {
    pos_scale = 1.0 / static_cast<double>(num_pos);
    neg_scale = 1.0 / static_cast<double>(num_neg);
  }

  // Pass 2: hinge terms and, when asked, the gradient.
  const acc_t pos_coef = static_cast<acc_t>(-2 * pos_scale), neg_coef = static_cast<acc_t>(2 * neg_scale);
  std::vector<double> pos_terms(n, 0), neg_terms(n, 0);
  const bool single_tile = is_single_tile(n);
  at::Tensor grad = !compute_grad ? at::empty({0, x.size(1)}, x.options())
                    : single_tile ? at::empty(x.sizes(), x.options())
                                  : at::zeros(x.sizes(), x.options());
  for_each_tile(x, cache, [&](const Tile& t, const at::Tensor& dots) {
    for_each_row(t, dots, [&](int64_t i, int64_t r, int64_t first, const RowPairs<acc_t>& row) {
      const acc_t mp_acc = static_cast<acc_t>(mp), mn_acc = static_cast<acc_t>(mn);
      if (compute_grad) {
        row_terms<true>(row, mp_acc, mn_acc, pos_coef, neg_coef, pos_terms[i], neg_terms[i]);
      } else {
        row_terms<false>(row, mp_acc, mn_acc, pos_coef, neg_coef, pos_terms[i], neg_terms[i]);
      }
      // A rectangular tile's entries left of the diagonal are not pairs: no coefficient.
      if (compute_grad && !single_tile) std::fill_n(row.dots - first, first, acc_t(0));
    });
    if (!compute_grad) return;
    at::Tensor coefficients = dots;
    if (single_tile) {
      symmetrize_with_diagonal<acc_t>(coefficients);
      at::mm_out(grad, coefficients, x);
      return;
    }
    const at::Tensor x_rows = x.narrow(0, t.row_begin, t.rows);
    const at::Tensor x_cols = x.narrow(0, t.col_begin, t.cols);
    at::Tensor grad_rows = grad.narrow(0, t.row_begin, t.rows);
    at::Tensor grad_cols = grad.narrow(0, t.col_begin, t.cols);
    grad_rows.addmm_(coefficients, x_cols).sub_(x_rows.mul(coefficients.sum(1, true)));
    grad_cols.addmm_(coefficients.t(), x_rows).sub_(x_cols.mul(coefficients.sum(0).unsqueeze(1)));
  });
  if (compute_grad) nan_columns_of_nonfinite_entries<acc_t>(x, norms, grad);
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
    c10::string_view reduction_name, bool compute_grad) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  TORCH_CHECK_VALUE(x_in.dim() == 2, "adaptive_margin_loss: x must be [N, D], got ", x_in.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == x_in.size(0),
                    "adaptive_margin_loss: labels must be [N] with N = ", x_in.size(0), ", got ",
                    labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "adaptive_margin_loss: labels must be int64");
  TORCH_CHECK_VALUE(mu > 0 && gamma > 0, "adaptive_margin_loss: mu and gamma must be > 0, got mu = ",
                    mu, ", gamma = ", gamma);
  const Reduction reduction = parse_reduction(reduction_name, "adaptive_margin_loss");
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
