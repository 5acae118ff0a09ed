// CPU operator of evaluate_rank: the ranks of each query's true matches in its valid gallery, in
// one pass over the query's distances whatever their distribution (reidfast/evaluation/rank.py
// holds the protocol and the plain-PyTorch reference of this op).
//
// Order. Gallery entry e of a query has the key (d_e, e): distance first, gallery index on ties,
// as a stable argsort orders the row. With the query's k matches sorted into keys K_1 < ... < K_k,
// the rank of the j-th match among the valid entries (all but the query's junk) is
//
//     r_j = #{valid e : key(e) <= K_j}.
//
// Counting. Each entry's place p(e) = #{i : K_i < key(e)} is counted in a histogram; entry e is
// at or before the matches p(e) + 1 .. k, so the histogram summed cumulatively gives
// #{e : key(e) <= K_j}, and the junk entries (listed by the caller, a few per query) are taken
// back out. The place comes from a coarse bucket of the distance, t(d) = trunc((d - low) * scale)
// clamped (about 32 buckets per match between the first and last match distance, computed a block
// of entries at a time in a loop the compiler vectorises): the matches in lower buckets are before
// the entry, those in higher buckets after it, so p(e) is the number of matches in lower buckets
// (a table) plus the few in its own bucket ordered before it (a comparison, rarely more). No row
// is sorted and there is no per-entry memory; the cost no longer depends on how early the matches
// rank, as a candidate filter's did.
//
// Numerics. Distances are compared in their own type (float32 or float64; the caller converts
// float16 and bfloat16 to float32, which is exact), so -0.0 equals 0.0, infinities order as
// values, and equal distances tie. A NaN anywhere in a row sets the row's flag in nan_rows and
// leaves its ranks unspecified: the caller raises (the package's NaN policy for evaluation).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace reidfast::cpu {
namespace {

// Buckets per match of a row: enough that few entries share a bucket with a match (each such
// entry costs a comparison that may mispredict), few enough that the table stays in the L1 cache.
constexpr int64_t kBucketsPerMatch = 32;
// Histogram copies, one per entry index modulo kLanes: consecutive entries with the same place
// (most of a row, for a strong model, lies after its last match) then increment different
// counters instead of waiting on each other's store.
constexpr int64_t kLanes = 4;
// Entries whose buckets are computed at once.
constexpr int64_t kBlock = 256;

// Ranks the matches of one row at a time; holds the row's workspace, reused from row to row.
template <typename scalar_t>
class RowRanker {
 public:
  // Writes the ranks of the row's k matches to ranks[0 .. k - 1] (1 to ranks[k .. max_matches - 1])
  // and returns whether the row holds a NaN.
  bool rank(const scalar_t* row, int64_t num_g, const int64_t* same_cols, const bool* same_is_match,
            int64_t same_count, int64_t max_matches, int64_t* ranks) {
    std::fill(ranks, ranks + max_matches, int64_t(1));
    if (!sort_matches(row, same_cols, same_is_match, same_count)) return true;
    if (count_ == 0) {
      int32_t nan_count = 0;
      for (int64_t e = 0; e < num_g; ++e) nan_count += row[e] != row[e];
      return nan_count > 0;
    }
    map_buckets();
    const int64_t stride = count_ + 1;  // places 0 .. k
    counts_.assign(kLanes * stride, 0);
    const int32_t nan_count = count_row(row, num_g);
    for (int64_t s = 0; s < same_count; ++s) {  // the junk is not in the valid gallery
      if (!same_is_match[s]) --counts_[place(row[same_cols[s]], same_cols[s])];
    }
    int64_t at_or_before = 0;  // valid entries with key <= K_j
    for (int64_t j = 0; j < count_; ++j) {
      for (int64_t lane = 0; lane < kLanes; ++lane) at_or_before += counts_[lane * stride + j];
      ranks[j] = at_or_before;
    }
    return nan_count > 0;
  }

 private:
  // The row's matches sorted by key into dist_ and col_ (count_ of them, then a sentinel key
  // (+inf, max) that no entry's key exceeds); false if a match distance is NaN.
  bool sort_matches(const scalar_t* row, const int64_t* same_cols, const bool* same_is_match,
                    int64_t same_count) {
    col_.clear();
    for (int64_t s = 0; s < same_count; ++s) {
      if (!same_is_match[s]) continue;
      if (row[same_cols[s]] != row[same_cols[s]]) return false;  // std::sort needs a strict weak order
      col_.push_back(same_cols[s]);
    }
    count_ = static_cast<int64_t>(col_.size());
    // same_cols ascends, so a stable sort by distance orders ties by gallery index.
    std::stable_sort(col_.begin(), col_.end(), [&](int64_t a, int64_t b) { return row[a] < row[b]; });
    col_.push_back(std::numeric_limits<int64_t>::max());
    dist_.resize(count_ + 1);
    for (int64_t j = 0; j < count_; ++j) dist_[j] = row[col_[j]];
    dist_[count_] = std::numeric_limits<scalar_t>::infinity();
    return true;
  }

  // Buckets: t(d) = clamp(trunc((d - low) * scale), -1, n) + 1 in the distances' type, with low the
  // first match distance and (last - low) * scale about n - 1 (a single distinct match distance
  // spans |low| instead). Each step is monotone and gives equal distances equal buckets, so a match
  // in a lower bucket than an entry's is before it and one in a higher bucket after it. Where the
  // match distances give no finite scale (infinities, overflow), low is NaN: every distance falls
  // in bucket 0 and each entry is compared with every match (exact, O(k) per entry).
  void map_buckets() {
    const scalar_t low = dist_[0], high = dist_[count_ - 1];
    const scalar_t span = high > low ? high - low : std::abs(low) > 0 ? std::abs(low) : scalar_t(1);
    const int64_t num_buckets = kBucketsPerMatch * count_ + 2;
    top_ = static_cast<scalar_t>(num_buckets - 2);
    scale_ = (top_ - 1) / span;
    const bool usable = std::isfinite(low) && std::isfinite(high) && std::isfinite(scale_) && scale_ > 0;
    low_ = usable ? low : std::numeric_limits<scalar_t>::quiet_NaN();
    // first_place_[t]: the matches in buckets below t (buckets ascend with the match keys).
    first_place_.resize(num_buckets);
    int32_t j = 0;
    for (int64_t t = 0; t < num_buckets; ++t) {
      while (j < count_ && bucket(dist_[j]) < t) ++j;
      first_place_[t] = j;
    }
  }

  int32_t bucket(scalar_t value) const {
    scalar_t x = (value - low_) * scale_;
    x = x > scalar_t(-1) ? x : scalar_t(-1);  // NaN takes -1
    x = x < top_ ? x : top_;
    return static_cast<int32_t>(x) + 1;
  }

  // #{j : K_j < (value, index)}, from the bucket's first place.
  int64_t place(scalar_t value, int64_t index) const { return place_from(first_place_[bucket(value)], value, index); }

  // Steps over the matches of the entry's own bucket that are ordered before it (none for most
  // entries; the sentinel stops the walk). The key comparison is written without short-circuits:
  // one well-predicted loop branch, where && and || would branch on the distances themselves.
  int64_t place_from(int64_t place, scalar_t value, int64_t index) const {
    const scalar_t* dist = dist_.data();
    const int64_t* col = col_.data();
    while ((dist[place] < value) | ((dist[place] == value) & (col[place] < index))) ++place;
    return place;
  }

  // Counts every entry of the row in counts_; returns the number of NaN distances.
  int32_t count_row(const scalar_t* row, int64_t num_g) {
    const int64_t stride = count_ + 1;
    const int32_t* first_place = first_place_.data();
    int32_t* counts = counts_.data();
    int32_t nan_count = 0;
    int32_t buckets[kBlock];
    for (int64_t first = 0; first < num_g; first += kBlock) {
      const int64_t size = std::min(kBlock, num_g - first);
      const scalar_t* values = row + first;
      for (int64_t i = 0; i < size; ++i) {  // vectorised
        buckets[i] = bucket(values[i]);
        nan_count += values[i] != values[i];
      }
      for (int64_t i = 0; i < size; ++i) {
        ++counts[(i & (kLanes - 1)) * stride + place_from(first_place[buckets[i]], values[i], first + i)];
      }
    }
    return nan_count;
  }

  int64_t count_ = 0;
  scalar_t low_ = 0, scale_ = 0, top_ = 0;
  std::vector<int64_t> col_;
  std::vector<scalar_t> dist_;
  std::vector<int32_t> first_place_, counts_;
};

std::tuple<at::Tensor, at::Tensor> evaluate_rank_match_ranks_cpu(const at::Tensor& dist_in,
                                                                 const at::Tensor& same_offsets_in,
                                                                 const at::Tensor& same_cols_in,
                                                                 const at::Tensor& same_is_match_in,
                                                                 int64_t max_matches) {
  TORCH_CHECK_VALUE(dist_in.dim() == 2, "evaluate_rank_match_ranks: dist must be 2-D [B, G], got ",
                    dist_in.dim(), "-D");
  TORCH_CHECK_TYPE(dist_in.scalar_type() == at::kFloat || dist_in.scalar_type() == at::kDouble,
                   "evaluate_rank_match_ranks: dist must be float32 or float64 on the CPU, got ",
                   dist_in.scalar_type());
  const int64_t num_rows = dist_in.size(0), num_g = dist_in.size(1);
  TORCH_CHECK_TYPE(same_offsets_in.scalar_type() == at::kLong && same_cols_in.scalar_type() == at::kLong &&
                       same_is_match_in.scalar_type() == at::kBool,
                   "evaluate_rank_match_ranks: same_offsets and same_cols must be int64 and same_is_match "
                   "bool, got ", same_offsets_in.scalar_type(), ", ", same_cols_in.scalar_type(), ", ",
                   same_is_match_in.scalar_type());
  TORCH_CHECK_VALUE(same_offsets_in.dim() == 1 && same_offsets_in.size(0) == num_rows + 1,
                    "evaluate_rank_match_ranks: same_offsets must have shape [B + 1] = [", num_rows + 1,
                    "], got ", same_offsets_in.sizes());
  TORCH_CHECK_VALUE(same_cols_in.dim() == 1 && same_is_match_in.dim() == 1 &&
                        same_is_match_in.size(0) == same_cols_in.size(0),
                    "evaluate_rank_match_ranks: same_cols and same_is_match must be 1-D of one length, got ",
                    same_cols_in.sizes(), " and ", same_is_match_in.sizes());
  TORCH_CHECK_VALUE(max_matches >= 0, "evaluate_rank_match_ranks: max_matches must be >= 0, got ", max_matches);
  const at::Tensor dist = dist_in.contiguous();
  const at::Tensor same_offsets = same_offsets_in.contiguous();
  const at::Tensor same_cols = same_cols_in.contiguous();
  const at::Tensor same_is_match = same_is_match_in.contiguous();
  const int64_t* offsets = same_offsets.const_data_ptr<int64_t>();
  const int64_t* cols = same_cols.const_data_ptr<int64_t>();
  const bool* is_match = same_is_match.const_data_ptr<bool>();

  // The lists' structure, checked before any work (O(B + the rows' entries)).
  const int64_t num_entries = same_cols.size(0);
  for (int64_t b = 0; b < num_rows; ++b) {
    TORCH_CHECK_VALUE(0 <= offsets[b] && offsets[b] <= offsets[b + 1] && offsets[b + 1] <= num_entries,
                      "evaluate_rank_match_ranks: same_offsets must not decrease and must lie in [0, ",
                      num_entries, "], got ", offsets[b], " then ", offsets[b + 1], " at row ", b);
    int64_t matches = 0;
    for (int64_t s = offsets[b]; s < offsets[b + 1]; ++s) {
      TORCH_CHECK_VALUE(cols[s] >= 0 && cols[s] < num_g, "evaluate_rank_match_ranks: same_cols must be in [0, ",
                        num_g, "), got ", cols[s]);
      TORCH_CHECK_VALUE(s == offsets[b] || cols[s - 1] < cols[s], "evaluate_rank_match_ranks: same_cols must ",
                        "ascend within a row, got ", cols[s - 1], " then ", cols[s], " in row ", b);
      matches += is_match[s];
    }
    TORCH_CHECK_VALUE(matches <= max_matches, "evaluate_rank_match_ranks: row ", b, " has ", matches,
                      " matches, more than max_matches = ", max_matches);
  }

  at::Tensor ranks = at::empty({num_rows, max_matches}, dist.options().dtype(at::kLong));
  at::Tensor nan_rows = at::zeros({num_rows}, dist.options().dtype(at::kBool));
  if (num_rows == 0) return {ranks, nan_rows};
  int64_t* ranks_ptr = ranks.mutable_data_ptr<int64_t>();
  bool* nan_ptr = nan_rows.mutable_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "evaluate_rank_match_ranks", [&] {
    const scalar_t* dist_ptr = dist.const_data_ptr<scalar_t>();
    // Rows are handed out one at a time from a shared counter rather than in equal blocks: on a
    // busy machine a thread that starts late ranks fewer rows instead of the call waiting for it.
    std::atomic<int64_t> next_row{0};
    at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), num_rows), 1, [&](int64_t, int64_t) {
      RowRanker<scalar_t> ranker;
      for (int64_t b = next_row++; b < num_rows; b = next_row++) {
        nan_ptr[b] = ranker.rank(dist_ptr + b * num_g, num_g, cols + offsets[b], is_match + offsets[b],
                                 offsets[b + 1] - offsets[b], max_matches, ranks_ptr + b * max_matches);
      }
    });
  });
  return {ranks, nan_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("evaluate_rank_match_ranks", &evaluate_rank_match_ranks_cpu);
}

}  // namespace reidfast::cpu
