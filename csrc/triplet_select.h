// The ranking rule of triplet_select and a running selection under it, shared by the CPU and
// CUDA kernels (host and device code), so that every backend picks the same pair.
//
// A candidate is a (distance, index) pair of one anchor's row. Positives rank by distance
// descending, negatives by distance ascending; NaN counts as the largest distance (as torch.sort
// does); equal distances (and two NaNs) rank by index ascending. The rule is a strict total order
// on distinct indices, so the selection does not depend on the order candidates arrive in: tiles
// of a row may be scanned, or partial selections merged, in any order.
#pragma once

#include "distance.h"

#include <cstdint>
#include <limits>

namespace reidfast {

// a > b with NaN the largest value (two NaNs are equal).
template <typename T>
REIDFAST_HOST_DEVICE bool nan_last_greater(T a, T b) {
  return a > b || (a != a && b == b);
}

// Whether candidate (a, ia) ranks strictly before (b, ib): the selection's order.
template <bool kLargest, typename T>
REIDFAST_HOST_DEVICE bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool a_better = kLargest ? nan_last_greater(a, b) : nan_last_greater(b, a);
  const bool b_better = kLargest ? nan_last_greater(b, a) : nan_last_greater(a, b);
  return a_better || (!b_better && ia < ib);
}

// The `capacity` best candidates seen so far, best first, in caller-provided arrays.
// kLargest: the k largest (positives); otherwise the p smallest (negatives).
template <bool kLargest, typename T>
struct RunningSelection {
  T* dist;
  int64_t* index;
  int capacity;
  int size;

  REIDFAST_HOST_DEVICE RunningSelection(T* dist_, int64_t* index_, int capacity_)
      : dist(dist_), index(index_), capacity(capacity_), size(0) {}

  // Insertion into a sorted array: O(1) for a candidate that does not enter, which is the common
  // case once the selection is full.
  REIDFAST_HOST_DEVICE void offer(T d, int64_t j) {
    if (size == capacity && !ranks_before<kLargest>(d, j, dist[size - 1], index[size - 1])) return;
    int slot = size < capacity ? size : capacity - 1;
    while (slot > 0 && ranks_before<kLargest>(d, j, dist[slot - 1], index[slot - 1])) {
      dist[slot] = dist[slot - 1];
      index[slot] = index[slot - 1];
      --slot;
    }
    dist[slot] = d;
    index[slot] = j;
    if (size < capacity) ++size;
  }

  // The rank-th best (rank = min(capacity, candidates seen)), or (-inf / +inf, -1) when no
  // candidate was offered: the anchor has no positive / negative.
  REIDFAST_HOST_DEVICE T selected_dist() const {
    if (size == 0) {
      return kLargest ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
    }
    return dist[size - 1];
  }
  REIDFAST_HOST_DEVICE int64_t selected_index() const { return size == 0 ? -1 : index[size - 1]; }
};

}  // namespace reidfast
