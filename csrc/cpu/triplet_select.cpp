// CPU operators of triplet_select: the generalised batch-hard selection (PLA Eq. 3-4) and the
// gradient of the selected distances.
//
// Forward. The distance matrix is visited in tiles of at most kCpuTileElements distances
// (csrc/distance.h; whole rows of the reference set while they fit, so a batch against itself is
// usually one tile): one matrix multiply (at::mm_out, with all of ATen's threads) gives a tile's
// dot products; then at::parallel_for spreads the tile's anchor rows over the threads, each forming
// its row's distances in a contiguous buffer (a loop the compiler vectorises) and offering them to
// the anchor's selections: for k = p = 1 (batch-hard) a branch-free scan on vector lanes
// (BestSelections), otherwise running selections (csrc/triplet_select.h: the k largest positives,
// the p smallest negatives), which reject most candidates with one comparison once full. Small
// loops stay on the calling thread (csrc/cpu/lanes.h's grain). Memory beyond the inputs is one
// tile plus (k + p) candidates per anchor of a tile: the N x M distance matrix is not
// materialised, so memory banks of any size work. The op's autograd is registered in C++
// (csrc/autograd/triplet_select.cpp), with the fused loss op.
//
// Backward. For a selected pair (i, j) with distance d and incoming gradient g, the coefficient
// c = g / d (2 g when squared; 0 for the anchor's own pair, a clamped or NaN distance, or a missing
// pair) gives grad x_i += c (x_i - r_j) and grad r_j += c (r_j - x_i). Each row's terms are
// summed as (sum of its coefficients) * its own row - sum of c * partner row, the form of the
// reference's gradient (norm term minus matrix product), so that non-finite entries give the
// same values. The anchors' terms are written per anchor; the partners' terms are grouped by
// partner (a counting sort, stable in anchor order) and summed per partner row in parallel, so
// backward is deterministic without atomics. A memory bank's gradient is computed only when asked
// for (ref_grad): a frozen bank costs no [M, D] allocation, fill or pass beyond one read.
//
// NaN and inf (the package's NaN policy: NaN exactly where the reference, which differentiates
// a distance matrix built by matrix multiplies, has it). In the reference, grad x = G r (and
// grad r = G^T x) sums over every row of the other operand, so a non-finite entry of its column c
// makes entry c of each output row NaN through a zero coefficient, unless every such entry belongs
// to a row linked to the output row by a pair with a non-zero coefficient (then c * inf is +-inf).
// The backward checks x (and the bank) for non-finite entries in its passes; only when one is
// found does it apply that rule, in a pass over the affected columns. Under self_reference the
// reference has two products (x as the left and as the right operand), and both must be covered.
//
// Numerics. Half-precision inputs are converted to float32 once (a bank's rows are read in its
// own dtype by the backward); float64 stays float64. The anchor's own pair, under
// self_reference, is exactly 0. The selection does not depend on the tiling (the ranking rule is
// a total order). Sizes and indices are int64 throughout (a bank of any M).
#include "../distance.h"
#include "../triplet_select.h"
#include "lanes.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace reidfast::cpu {
namespace {

struct SelectInputs {
  at::Tensor x, ref, x_norm, ref_norm, labels, ref_labels;  // contiguous, x and ref in acc_t
  bool self_reference, squared;
  int k, p;  // the selections' capacities: min(k, M) and min(p, M)
};

// Row i's distances to reference rows [col_begin, col_begin + cols), from the tile's dot products.
template <typename acc_t>
void row_distances(const SelectInputs& in, const acc_t* row_dots, int64_t i, int64_t col_begin,
                   int64_t cols, acc_t* dist) {
  const acc_t norm_i = in.x_norm.const_data_ptr<acc_t>()[i];
  const acc_t* norm_j = in.ref_norm.const_data_ptr<acc_t>() + col_begin;
  for (int64_t c = 0; c < cols; ++c) {
    const acc_t square = clamp_square(norm_i + norm_j[c] - acc_t(2) * row_dots[c]);
    dist[c] = in.squared ? square : std::sqrt(square);
  }
  if (in.self_reference && i >= col_begin && i < col_begin + cols) dist[i - col_begin] = acc_t(0);
}

// The running selections of a tile's anchors, for any k and p: up to k positives and p negatives
// per anchor, best first, in flat buffers (csrc/triplet_select.h's insertion rule).
template <typename acc_t>
class RankedSelections {
 public:
  RankedSelections(const SelectInputs& in, int64_t rows)
      : RankedSelections(rows, in.k, in.p) {}

  // Empties every anchor's selections, for the next tile of anchor rows.
  void reset() {
    for (auto& selection : pos_) selection.size = 0;
    for (auto& selection : neg_) selection.size = 0;
  }

  void offer(const SelectInputs& in, int64_t r, int64_t i, const acc_t* dist, int64_t col_begin,
             int64_t cols) {
    const int64_t label = in.labels.const_data_ptr<int64_t>()[i];
    const int64_t* ref_labels = in.ref_labels.const_data_ptr<int64_t>() + col_begin;
    RunningSelection<true, acc_t>& pos = pos_[r];
    RunningSelection<false, acc_t>& neg = neg_[r];
    for (int64_t c = 0; c < cols; ++c) {
      if (ref_labels[c] == label) {
        pos.offer(dist[c], col_begin + c);
      } else {
        neg.offer(dist[c], col_begin + c);
      }
    }
  }

  void write(int64_t r, acc_t* pos_dist, int64_t* pos_index, acc_t* neg_dist,
             int64_t* neg_index) const {
    *pos_dist = pos_[r].selected_dist();
    *pos_index = pos_[r].selected_index();
    *neg_dist = neg_[r].selected_dist();
    *neg_index = neg_[r].selected_index();
  }

 private:
  RankedSelections(int64_t rows, int k, int p)
      : pos_dist_(rows * k), neg_dist_(rows * p), pos_index_(rows * k), neg_index_(rows * p) {
    pos_.reserve(rows);
    neg_.reserve(rows);
    for (int64_t r = 0; r < rows; ++r) {
      pos_.emplace_back(pos_dist_.data() + r * k, pos_index_.data() + r * k, k);
      neg_.emplace_back(neg_dist_.data() + r * p, neg_index_.data() + r * p, p);
    }
  }

  std::vector<acc_t> pos_dist_, neg_dist_;
  std::vector<int64_t> pos_index_, neg_index_;
  std::vector<RunningSelection<true, acc_t>> pos_;
  std::vector<RunningSelection<false, acc_t>> neg_;
};

// Identities in the lanes' id type (csrc/cpu/lanes.h): int32 for float distances, so that a
// comparison of ids is a mask of the distances' width. Empty when a label does not fit the type.
template <typename acc_t>
std::vector<typename Lanes<acc_t>::Id> lane_ids(const at::Tensor& labels) {
  using Id = typename Lanes<acc_t>::Id;
  const int64_t* label = labels.const_data_ptr<int64_t>();
  std::vector<Id> ids(labels.size(0));
  for (size_t i = 0; i < ids.size(); ++i) {
    if (label[i] < std::numeric_limits<Id>::min() || label[i] > std::numeric_limits<Id>::max()) {
      return {};
    }
    ids[i] = static_cast<Id>(label[i]);
  }
  return ids;
}

// k = p = 1 (batch-hard, the common case): each anchor's best positive and negative. A row is
// scanned on vector lanes, each keeping the best candidate of its columns with selects (no
// branches); the lanes' winners are then merged by the ranking rule. The lanes' comparisons are
// the rule for finite distances only: a row holding a NaN or inf distance, or labels that do not
// fit the lanes' ids, is scanned one candidate at a time under the full rule.
template <typename acc_t>
class BestSelections {
 public:
  BestSelections(const SelectInputs& in, int64_t rows)
      : ids_(lane_ids<acc_t>(in.labels)),
        ref_ids_(in.self_reference || ids_.empty() ? ids_ : lane_ids<acc_t>(in.ref_labels)),
        pos_dist_(rows), neg_dist_(rows), pos_index_(rows, -1), neg_index_(rows, -1) {
    if (ref_ids_.empty()) ids_.clear();
  }

  // Empties every anchor's best (the identities are kept), for the next tile of anchor rows.
  void reset() {
    std::fill(pos_index_.begin(), pos_index_.end(), -1);
    std::fill(neg_index_.begin(), neg_index_.end(), -1);
  }

  void offer(const SelectInputs& in, int64_t r, int64_t i, const acc_t* dist, int64_t col_begin,
             int64_t cols) {
    if (ids_.empty() || !offer_finite(r, dist, ids_[i], ref_ids_.data() + col_begin, col_begin, cols)) {
      offer_exact(r, dist, in.labels.const_data_ptr<int64_t>()[i],
                  in.ref_labels.const_data_ptr<int64_t>() + col_begin, col_begin, cols);
    }
  }

  void write(int64_t r, acc_t* pos_dist, int64_t* pos_index, acc_t* neg_dist,
             int64_t* neg_index) const {
    *pos_dist = pos_index_[r] < 0 ? -kInf : pos_dist_[r];
    *pos_index = pos_index_[r];
    *neg_dist = neg_index_[r] < 0 ? kInf : neg_dist_[r];
    *neg_index = neg_index_[r];
  }

 private:
  using L = Lanes<acc_t>;
  using Id = typename L::Id;
  static constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();

  // The lanes' scan; false (nothing recorded) when the row has a non-finite distance.
  bool offer_finite(int64_t r, const acc_t* dist, Id id, const Id* ref_ids, int64_t col_begin,
                    int64_t cols) {
    using Value = typename L::Value;
    using Mask = typename L::Mask;
    constexpr int64_t width = kWidth<acc_t>;
    const Value inf = Value{} + kInf;
    // Per lane, the best positive (largest) and negative (smallest) distance and its column; a
    // later column replaces a lane's best only when strictly better, as the rule's tie break.
    Value pos_d = -inf, neg_d = inf, probe{};
    Mask pos_c = Mask{} - 1, neg_c = Mask{} - 1, column;
    for (int64_t lane = 0; lane < width; ++lane) column[lane] = lane;
    const int64_t full = cols - cols % width;
    for (int64_t c = 0; c < full; c += width, column += width) {
      Value d;
      Mask ids;
      std::memcpy(&d, dist + c, sizeof(d));
      std::memcpy(&ids, ref_ids + c, sizeof(ids));
      probe += d * acc_t(0);  // NaN once a NaN or inf distance is seen
      const Mask same = ids == id;
      const Value as_pos = select(same, d, -inf), as_neg = select(same, inf, d);
      const Mask pos_better = as_pos > pos_d, neg_better = as_neg < neg_d;
      pos_d = select(pos_better, as_pos, pos_d);
      pos_c = select(pos_better, column, pos_c);
      neg_d = select(neg_better, as_neg, neg_d);
      neg_c = select(neg_better, column, neg_c);
    }
    acc_t finite = 0;
    for (int64_t lane = 0; lane < width; ++lane) finite += probe[lane];
    for (int64_t c = full; c < cols; ++c) finite += dist[c] * acc_t(0);
    if (finite != finite) return false;
    for (int64_t lane = 0; lane < width; ++lane) {
      merge<true>(pos_d[lane], pos_c[lane], col_begin, pos_dist_[r], pos_index_[r]);
      merge<false>(neg_d[lane], neg_c[lane], col_begin, neg_dist_[r], neg_index_[r]);
    }
    for (int64_t c = full; c < cols; ++c) {
      if (ref_ids[c] == id) {
        merge<true>(dist[c], c, col_begin, pos_dist_[r], pos_index_[r]);
      } else {
        merge<false>(dist[c], c, col_begin, neg_dist_[r], neg_index_[r]);
      }
    }
    return true;
  }

  void offer_exact(int64_t r, const acc_t* dist, int64_t label, const int64_t* ref_labels,
                   int64_t col_begin, int64_t cols) {
    for (int64_t c = 0; c < cols; ++c) {
      if (ref_labels[c] == label) {
        merge<true>(dist[c], c, col_begin, pos_dist_[r], pos_index_[r]);
      } else {
        merge<false>(dist[c], c, col_begin, neg_dist_[r], neg_index_[r]);
      }
    }
  }

  // Merges candidate (d, column c of the tile at col_begin; none if c < 0) into an anchor's best
  // by the ranking rule.
  template <bool kLargest>
  static void merge(acc_t d, int64_t c, int64_t col_begin, acc_t& best, int64_t& best_index) {
    if (c < 0) return;
    const int64_t j = col_begin + c;
    if (best_index < 0 || ranks_before<kLargest>(d, j, best, best_index)) best = d, best_index = j;
  }

  std::vector<Id> ids_, ref_ids_;
  std::vector<acc_t> pos_dist_, neg_dist_;
  std::vector<int64_t> pos_index_, neg_index_;
};

template <typename acc_t, template <typename> class Selections>
void select_all(const SelectInputs& in, acc_t* pos_out, acc_t* neg_out, int64_t* pos_index_out,
                int64_t* neg_index_out) {
  const int64_t n = in.x.size(0), m = in.ref.size(0);
  // Tile shape: whole reference rows for as many anchors as fit, else column blocks.
  const int64_t tile_rows = std::clamp<int64_t>(kCpuTileElements / std::max<int64_t>(m, 1), 1, n);
  const int64_t tile_cols = std::min(m, std::max<int64_t>(kCpuTileElements / tile_rows, 1));
  at::Tensor dots = at::empty({tile_rows, tile_cols}, in.x.options());
  // Built once (lane identities, buffers), reset for each tile of anchor rows.
  Selections<acc_t> selections(in, tile_rows);
  for (int64_t row_begin = 0; row_begin < n; row_begin += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - row_begin);
    selections.reset();
    const at::Tensor x_rows = in.x.narrow(0, row_begin, rows);
    for (int64_t col_begin = 0; col_begin < m; col_begin += tile_cols) {
      const int64_t cols = std::min(tile_cols, m - col_begin);
      at::Tensor tile = dots.narrow(0, 0, rows).narrow(1, 0, cols);
      at::mm_out(tile, x_rows, in.ref.narrow(0, col_begin, cols).t());
      const acc_t* tile_ptr = tile.const_data_ptr<acc_t>();
      const int64_t tile_stride = tile.stride(0);
      at::parallel_for(0, rows, rows_per_task(cols), [&](int64_t r_begin, int64_t r_end) {
        std::vector<acc_t> dist(cols);
        for (int64_t r = r_begin; r < r_end; ++r) {
          const int64_t i = row_begin + r;
          row_distances(in, tile_ptr + r * tile_stride, i, col_begin, cols, dist.data());
          selections.offer(in, r, i, dist.data(), col_begin, cols);
        }
      });
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row_begin + r;
      selections.write(r, pos_out + i, pos_index_out + i, neg_out + i, neg_index_out + i);
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

// A selection never holds more candidates than the reference set has rows.
int selection_capacity(int64_t rank, int64_t m, const char* name) {
  const int64_t capacity = std::max<int64_t>(std::min(rank, m), 1);
  TORCH_CHECK_VALUE(capacity <= std::numeric_limits<int>::max(), "triplet_select: ", name,
                    " = ", rank, " with M = ", m, " exceeds ", std::numeric_limits<int>::max(),
                    " candidates per anchor");
  return static_cast<int>(capacity);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_select_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& labels_in, const at::Tensor& ref_in,
    const at::Tensor& ref_labels_in, bool self_reference, int64_t k, int64_t p, bool squared) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  check_select_inputs(x_in, labels_in, ref_in, ref_labels_in, self_reference, k, p);
  const int64_t n = x_in.size(0), m = ref_in.size(0);
  SelectInputs in;
  in.k = selection_capacity(k, m, "k");
  in.p = selection_capacity(p, m, "p");
  const auto acc_type = accumulation_type(x_in);
  at::Tensor pos_dist = at::empty({n}, x_in.options().dtype(acc_type));
  at::Tensor neg_dist = at::empty({n}, x_in.options().dtype(acc_type));
  at::Tensor pos_index = at::empty({n}, labels_in.options());
  at::Tensor neg_index = at::empty({n}, labels_in.options());
  if (n > 0) {
    // Detached: the op's autograd is registered around it, and at::mm_out refuses inputs that
    // require grad.
    in.x = x_in.detach().to(acc_type).contiguous();
    in.ref = self_reference ? in.x : ref_in.detach().to(acc_type).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "triplet_select_norms", [&] {
      in.x_norm = squared_norms<scalar_t>(in.x);
      in.ref_norm = self_reference ? in.x_norm : squared_norms<scalar_t>(in.ref);
    });
    in.labels = labels_in.contiguous();
    in.ref_labels = ref_labels_in.contiguous();
    in.self_reference = self_reference;
    in.squared = squared;
    AT_DISPATCH_FLOATING_TYPES(acc_type, "triplet_select_forward_cpu", [&] {
      const auto select = in.k == 1 && in.p == 1 ? &select_all<scalar_t, BestSelections>
                                                 : &select_all<scalar_t, RankedSelections>;
      select(in, pos_dist.mutable_data_ptr<scalar_t>(), neg_dist.mutable_data_ptr<scalar_t>(),
             pos_index.mutable_data_ptr<int64_t>(), neg_index.mutable_data_ptr<int64_t>());
    });
  }
  return {pos_dist.to(x_in.scalar_type()), neg_dist.to(x_in.scalar_type()), pos_index, neg_index};
}

// Whether `count` values hold no NaN or inf: v * 0 is 0 for a finite v and NaN otherwise, summed
// on vector lanes in kChains independent sums (a read of the data, nothing more).
template <typename acc_t, typename scalar_t>
bool all_finite(const scalar_t* data, int64_t count) {
  acc_t total = 0;
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    using Value = typename Lanes<acc_t>::Value;
    constexpr int64_t kChains = 4, kStep = kChains * kWidth<acc_t>;
    Value lanes[kChains] = {};
    for (; i + kStep <= count; i += kStep) {
      for (int64_t chain = 0; chain < kChains; ++chain) {
        Value v;
        std::memcpy(&v, data + i + chain * kWidth<acc_t>, sizeof(v));
        lanes[chain] += v * acc_t(0);
      }
    }
    for (const Value& chain : lanes) {
      for (int64_t lane = 0; lane < kWidth<acc_t>; ++lane) total += chain[lane];
    }
  }
  for (; i < count; ++i) total += static_cast<acc_t>(data[i]) * acc_t(0);
  return total == total;
}

// The coefficient c of one selected pair (see the file header); NaN for a NaN incoming gradient on
// a pair that has a gradient, as the reference's.
template <typename acc_t>
acc_t pair_coefficient(acc_t grad, acc_t dist, int64_t index, bool squared) {
  if (index < 0) return acc_t(0);
  const acc_t square = squared ? dist : dist * dist;
  if (!(square > static_cast<acc_t>(kDistanceEps))) return acc_t(0);  // clamped (or NaN)
  return squared ? acc_t(2) * grad : grad / dist;
}

// The backward's pairs: two per anchor, entry 2i its positive and 2i + 1 its negative; a pair is
// live when its coefficient is not 0 (NaN is live). Pairs are grouped by partner (counting sort,
// stable in anchor order) when the partners' terms are needed.
template <typename acc_t>
struct Pairs {
  std::vector<acc_t> coefficient;
  std::vector<int64_t> partner;
  std::vector<int64_t> start, order;  // partner j's live pairs: order[start[j] .. start[j + 1])

  bool live(int64_t e) const { return coefficient[e] != acc_t(0); }

  void group_by_partner(int64_t m) {
    start.assign(m + 1, 0);
    for (size_t e = 0; e < coefficient.size(); ++e) {
      if (live(e)) ++start[partner[e] + 1];
    }
    for (int64_t j = 0; j < m; ++j) start[j + 1] += start[j];
    order.resize(start[m]);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (size_t e = 0; e < coefficient.size(); ++e) {
      if (live(e)) order[fill[partner[e]]++] = static_cast<int64_t>(e);
    }
  }
};

// out[t, c] = NaN where the reference's product sums a non-finite entry of `other` column c with
// a zero coefficient: `other` has more non-finite entries in column c than the rows linked to
// output row t by live pairs hold. links(t, visit) calls visit(row of other) for each link.
template <typename acc_t, typename other_t, typename out_t, typename Links>
void nan_where_uncovered(const other_t* other, int64_t other_rows, int64_t d, int64_t out_rows,
                         const Links& links, out_t* out) {
  std::vector<int64_t> count(d, 0);
  for (int64_t o = 0; o < other_rows; ++o) {
    if (all_finite<acc_t>(other + o * d, d)) continue;
    for (int64_t c = 0; c < d; ++c) count[c] += !std::isfinite(static_cast<acc_t>(other[o * d + c]));
  }
  std::vector<int64_t> columns;
  for (int64_t c = 0; c < d; ++c) {
    if (count[c] > 0) columns.push_back(c);
  }
  if (columns.empty()) return;
  const out_t nan = static_cast<out_t>(std::numeric_limits<acc_t>::quiet_NaN());
  at::parallel_for(0, out_rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (const int64_t c : columns) {
        int64_t covered = 0;
        links(t, [&](int64_t o) { covered += !std::isfinite(static_cast<acc_t>(other[o * d + c])); });
        if (covered < count[c]) out[t * d + c] = nan;
      }
    }
  });
}

// One row's gradient, written to out [D]: (sum of c) own - sum of c other over the row's live
// pairs, which for_each_pair(visit) passes to visit(c, other) (the form of the reference's
// gradient, see the file header). Each block of kBlock columns is summed in registers over the
// row's pairs and stored once, in out's dtype.
template <typename acc_t, typename own_t, typename out_t, typename ForEachPair>
void row_gradient(const own_t* own, int64_t d, const ForEachPair& for_each_pair, out_t* out) {
  constexpr int64_t kBlock = 16;
  acc_t total = 0;
  for_each_pair([&](acc_t c, const auto*) { total += c; });
  // size: kBlock as a compile-time constant (the loops unroll into registers), or the tail.
  const auto gradient_block = [&](int64_t begin, auto size) {
    acc_t block[kBlock];
    for (int64_t t = 0; t < size; ++t) block[t] = total * static_cast<acc_t>(own[begin + t]);
    for_each_pair([&](acc_t c, const auto* other) {
      for (int64_t t = 0; t < size; ++t) block[t] -= c * static_cast<acc_t>(other[begin + t]);
    });
    for (int64_t t = 0; t < size; ++t) out[begin + t] = static_cast<out_t>(block[t]);
  };
  int64_t begin = 0;
  for (; begin + kBlock <= d; begin += kBlock) {
    gradient_block(begin, std::integral_constant<int64_t, kBlock>{});
  }
  if (begin < d) gradient_block(begin, d - begin);
}

struct BackwardShape {
  int64_t n, m, d;
  bool self_reference, squared, ref_grad;
};

// grad_x [N, D] (acc_t) and, when ref_grad and not self_reference, grad_ref [M, D] (the bank's
// dtype, ref_t). Under self_reference, ref is x.
template <typename acc_t, typename ref_t>
void backward_all(const BackwardShape& s, const acc_t* grad_pos, const acc_t* grad_neg,
                  const acc_t* x, const ref_t* ref, const acc_t* pos_dist, const acc_t* neg_dist,
                  const int64_t* pos_index, const int64_t* neg_index, acc_t* grad_x,
                  ref_t* grad_ref) {
  const int64_t n = s.n, m = s.m, d = s.d;
  Pairs<acc_t> pairs;
  pairs.coefficient.resize(2 * n);
  pairs.partner.resize(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    for (const int64_t index : {pos_index[i], neg_index[i]}) {
      TORCH_CHECK_VALUE(index >= -1 && index < m, "triplet_select_backward: index ", index,
                        " of anchor ", i, " is outside [-1, M = ", m, ")");
    }
    pairs.coefficient[2 * i] = pair_coefficient(grad_pos[i], pos_dist[i], pos_index[i], s.squared);
    pairs.coefficient[2 * i + 1] =
        pair_coefficient(grad_neg[i], neg_dist[i], neg_index[i], s.squared);
    pairs.partner[2 * i] = pos_index[i];
    pairs.partner[2 * i + 1] = neg_index[i];
  }

  // Pairs of anchor i: its live pairs, with the partner's row of ref.
  const auto anchor_pairs = [&](int64_t i, const auto& visit) {
    for (int64_t e = 2 * i; e < 2 * i + 2; ++e) {
      if (pairs.live(e)) visit(pairs.coefficient[e], ref + pairs.partner[e] * d);
    }
  };
  // Pairs of reference row j: the live pairs that chose it, with the anchor's row of x.
  const auto partner_pairs = [&](int64_t j, const auto& visit) {
    for (int64_t q = pairs.start[j]; q < pairs.start[j + 1]; ++q) {
      visit(pairs.coefficient[pairs.order[q]], x + (pairs.order[q] / 2) * d);
    }
  };

  // Against itself, row t of x is an anchor and a partner: its gradient sums both kinds of pairs.
  // Against a bank, the partners' terms are grad_ref (computed only when asked for).
  if (s.self_reference || s.ref_grad) pairs.group_by_partner(m);
  const auto x_row_pairs = [&](int64_t t, const auto& visit) {
    anchor_pairs(t, visit);
    if (s.self_reference) partner_pairs(t, visit);
  };
  // grad_x, and whether x is finite (read while its rows are in the cache).
  // A row's work: its pairs' passes over D (two pairs per anchor, about as many as partner).
  const int64_t row_work = 4 * d;
  const bool x_finite = at::parallel_reduce(
      0, n, rows_per_task(row_work), true,
      [&](int64_t begin, int64_t end, bool finite) {
        for (int64_t i = begin; i < end; ++i) {
          finite = all_finite<acc_t>(x + i * d, d) && finite;
          row_gradient<acc_t>(x + i * d, d, [&](const auto& visit) { x_row_pairs(i, visit); }, grad_x + i * d);
        }
        return finite;
      },
      std::logical_and<bool>());
  if (s.ref_grad) {
    at::parallel_for(0, m, rows_per_task(row_work), [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        ref_t* out = grad_ref + j * d;
        if (pairs.start[j] == pairs.start[j + 1]) {
          std::fill(out, out + d, ref_t(0));
        } else {
          row_gradient<acc_t>(ref + j * d, d, [&](const auto& visit) { partner_pairs(j, visit); }, out);
        }
      }
    });
  }

  // The reference's NaN pattern where x or the bank has a NaN or inf (see the file header).
  const bool ref_finite =
      s.self_reference ||
      at::parallel_reduce(
          0, m, rows_per_task(d), true,
          [&](int64_t begin, int64_t end, bool finite) {
            return all_finite<acc_t>(ref + begin * d, (end - begin) * d) && finite;
          },
          std::logical_and<bool>());
  if (x_finite && ref_finite) return;
  // Rows of ref that anchor i reaches by a live pair, and anchors that reach ref row j.
  const auto partners_of = [&](int64_t i, const auto& visit) {
    for (int64_t e = 2 * i; e < 2 * i + 2; ++e) {
      if (pairs.live(e)) visit(pairs.partner[e]);
    }
  };
  const auto anchors_of = [&](int64_t j, const auto& visit) {
    for (int64_t q = pairs.start[j]; q < pairs.start[j + 1]; ++q) visit(pairs.order[q] / 2);
  };
  if (s.self_reference) {
    nan_where_uncovered<acc_t>(x, n, d, n, partners_of, grad_x);
    nan_where_uncovered<acc_t>(x, n, d, n, anchors_of, grad_x);
    return;
  }
  nan_where_uncovered<acc_t>(ref, m, d, n, partners_of, grad_x);
  if (!s.ref_grad) return;
  nan_where_uncovered<acc_t>(x, n, d, m, anchors_of, grad_ref);
  // A bank row without live pairs has grad 0 * r_j in the reference: NaN at its non-finite entries.
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (pairs.start[j] != pairs.start[j + 1] || all_finite<acc_t>(ref + j * d, d)) continue;
      for (int64_t t = 0; t < d; ++t) {
        if (!std::isfinite(static_cast<acc_t>(ref[j * d + t]))) {
          grad_ref[j * d + t] = static_cast<ref_t>(std::numeric_limits<acc_t>::quiet_NaN());
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> triplet_select_backward_cpu(
    const at::Tensor& grad_pos_in, const at::Tensor& grad_neg_in, const at::Tensor& x_in,
    const at::Tensor& ref_in, const at::Tensor& pos_dist_in, const at::Tensor& neg_dist_in,
    const at::Tensor& pos_index_in, const at::Tensor& neg_index_in, bool self_reference,
    bool squared, bool ref_grad) {
  TORCH_INTERNAL_ASSERT(x_in.device().is_cpu());
  TORCH_CHECK_VALUE(x_in.dim() == 2 && ref_in.dim() == 2 && x_in.size(1) == ref_in.size(1),
                    "triplet_select_backward: x [N, D] and ref [M, D] must share D, got ",
                    x_in.sizes(), " and ", ref_in.sizes());
  TORCH_CHECK_TYPE(x_in.scalar_type() == ref_in.scalar_type(),
                   "triplet_select_backward: ref must have x's dtype ", x_in.scalar_type(),
                   ", got ", ref_in.scalar_type());
  const BackwardShape shape{x_in.size(0), ref_in.size(0), x_in.size(1), self_reference, squared,
                            ref_grad && !self_reference};
  TORCH_CHECK_VALUE(!self_reference || shape.m == shape.n,
                    "triplet_select_backward: self_reference needs ref to be x");
  for (const at::Tensor* t :
       {&grad_pos_in, &grad_neg_in, &pos_dist_in, &neg_dist_in, &pos_index_in, &neg_index_in}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == shape.n,
                      "triplet_select_backward: per-anchor tensors must be [N] with N = ", shape.n,
                      ", got ", t->sizes());
  }
  TORCH_CHECK_TYPE(pos_index_in.scalar_type() == at::kLong && neg_index_in.scalar_type() == at::kLong,
                   "triplet_select_backward: pos_index and neg_index must be int64");
  const auto acc_type = accumulation_type(x_in);
  const auto as_acc = [&](const at::Tensor& t) { return t.detach().to(acc_type).contiguous(); };
  const at::Tensor x = as_acc(x_in);
  // The bank stays in its dtype: the backward reads its rows, it does not convert it.
  const at::Tensor ref = self_reference ? x : ref_in.detach().contiguous();
  const at::Tensor grad_pos = as_acc(grad_pos_in), grad_neg = as_acc(grad_neg_in);
  const at::Tensor pos_dist = as_acc(pos_dist_in), neg_dist = as_acc(neg_dist_in);
  const at::Tensor pos_index = pos_index_in.contiguous(), neg_index = neg_index_in.contiguous();
  at::Tensor grad_x = at::empty({shape.n, shape.d}, x.options());
  at::Tensor grad_ref = at::empty({shape.ref_grad ? shape.m : 0, shape.d}, ref_in.options());
  if (shape.n > 0 && shape.d > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "triplet_select_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_all<acc_t, scalar_t>(
          shape, grad_pos.const_data_ptr<acc_t>(), grad_neg.const_data_ptr<acc_t>(),
          x.const_data_ptr<acc_t>(), ref.const_data_ptr<scalar_t>(),
          pos_dist.const_data_ptr<acc_t>(), neg_dist.const_data_ptr<acc_t>(),
          pos_index.const_data_ptr<int64_t>(), neg_index.const_data_ptr<int64_t>(),
          grad_x.mutable_data_ptr<acc_t>(),
          shape.ref_grad ? grad_ref.mutable_data_ptr<scalar_t>() : nullptr);
    });
  } else if (shape.ref_grad) {
    grad_ref.zero_();
  }
  return {grad_x.to(x_in.scalar_type()), grad_ref};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("triplet_select_forward", &triplet_select_forward_cpu);
  m.impl("triplet_select_backward", &triplet_select_backward_cpu);
}

}  // namespace reidfast::cpu
