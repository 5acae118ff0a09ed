// The CPU kernels of pyramid_pool, compiled once per instruction set.
//
// This file is included by csrc/cpu/pyramid_pool.cpp with REIDFAST_CPU_ISA = generic (the
// baseline of the target) and, on x86-64, by csrc/cpu/pyramid_pool_avx2.cpp with
// REIDFAST_CPU_ISA = avx2 under a target("avx2,fma") pragma; the operator picks one at run time
// from the CPU it runs on, or as the environment variable REIDFAST_CPU_ISA says ("generic" runs
// this file's generic compilation on any CPU: csrc/cpu/cpu_isa.h). All of it has internal linkage
// except the two entry points, so the two compilations never mix. Every header it needs is
// included by the including file, before the pragma, so library code keeps the baseline
// instruction set.
//
// Positions h * W + w are int32 (the argmax's dtype): the operator checks H * W <= INT32_MAX
// before calling a kernel (csrc/pyramid_pool.h).
//
// Design. Work is split into tasks of (batch b, a block of kChannelBlock channels); at::parallel_for
// spreads them over the OpenMP threads. Each task
//   1. reduces every stripe of its channels to (max, first argmax, sum), reading x exactly once,
//      into per-task arrays [num_parts][kChannelBlock] that stay in L1/L2;
//   2. combines those stripe statistics into the windows and writes out[b, :, block] (contiguous).
// Step 1 has one loop order per layout: rows inner when W is contiguous (NCHW and its slices),
// channels inner when C is contiguous (channels_last). Backward mirrors it: per (stripe, channel)
// it folds the windows' gradients into one value for the whole stripe plus one extra value at the
// stripe's argmax, then writes every element of grad_x exactly once (no atomics: deterministic).

namespace reidfast::cpu::REIDFAST_CPU_ISA {
namespace {

constexpr int64_t kChannelBlock = 64;
// Independent accumulators for a contiguous run, so that the compiler can vectorise the
// reduction without reassociating floating-point adds.
constexpr int64_t kLanes = 8;

template <typename acc_t>
using opmath_t = at::opmath_type<acc_t>;

// `value` beats the current maximum `best`: larger, or NaN where best is not (NaN propagates).
// Equal values never beat, so the first occurrence in scan order wins.
template <typename acc_t>
inline bool beats(acc_t value, acc_t best) {
  return value > best || (value != value && best == best);
}

// Max, first argmax and sum of one stripe of one (b, c) plane.
template <typename acc_t>
struct StripeStats {
  acc_t max;
  int32_t argmax;
  acc_t sum;
};

// Max and sum of `length` contiguous elements, in kLanes independent lanes that the compiler turns
// into SIMD max/add. `v > m ? v : m` drops NaNs; a NaN still reaches the sum, where the caller
// detects it.
template <typename scalar_t, typename acc_t>
inline void max_and_sum(const scalar_t* src, int64_t length, acc_t& max, acc_t& sum) {
  int64_t i = 0;
#if REIDFAST_CPU_ISA_IS_AVX2
  // 8-wide max and sum, folded with shuffles: the generic lanes' scalar fold costs more
  // than the 32-element stripes of a ResNet map take to load.
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (length >= 8) {
      __m256 vmax = _mm256_loadu_ps(src), vsum = vmax;
      for (i = 8; i + 8 <= length; i += 8) {
        const __m256 v = _mm256_loadu_ps(src + i);
        vmax = _mm256_max_ps(v, vmax);
        vsum = _mm256_add_ps(vsum, v);
      }
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
      __m128 t = _mm_add_ps(_mm256_castps256_ps128(vsum), _mm256_extractf128_ps(vsum, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      t = _mm_add_ps(t, _mm_movehl_ps(t, t));
      m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
      t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
      const float block_max = _mm_cvtss_f32(m);
      max = block_max > max ? block_max : max;
      sum += _mm_cvtss_f32(t);
    }
  } else
#endif
  if (length >= kLanes) {
    acc_t lane_max[kLanes], lane_sum[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) lane_max[j] = lane_sum[j] = static_cast<acc_t>(src[j]);
    for (i = kLanes; i + kLanes <= length; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        const acc_t v = static_cast<acc_t>(src[i + j]);
        lane_max[j] = v > lane_max[j] ? v : lane_max[j];
        lane_sum[j] += v;
      }
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      max = lane_max[j] > max ? lane_max[j] : max;
      sum += lane_sum[j];
    }
  }
  for (; i < length; ++i) {
    const acc_t v = static_cast<acc_t>(src[i]);
    max = v > max ? v : max;
    sum += v;
  }
}

// Index of the first of src[0, length) equal to `value`, or `length`.
template <typename scalar_t, typename acc_t>
inline int64_t find_first_equal(const scalar_t* src, int64_t length, acc_t value) {
  int64_t i = 0;
#if REIDFAST_CPU_ISA_IS_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m256 target = _mm256_set1_ps(value);
    const auto equal_mask = [&](int64_t at) {
      return static_cast<uint32_t>(
          _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(src + at), target, _CMP_EQ_OQ)));
    };
    // 32 elements per test: a ResNet stripe (4 rows of 8) is one branch, taken, instead of a
    // loop exit at a random position that the branch predictor misses.
    for (; i + 32 <= length; i += 32) {
      const uint32_t mask = equal_mask(i) | equal_mask(i + 8) << 8 | equal_mask(i + 16) << 16 |
                            equal_mask(i + 24) << 24;
      if (mask != 0) return i + __builtin_ctz(mask);
    }
    for (; i + 8 <= length; i += 8) {
      const __m256 equal = _mm256_cmp_ps(_mm256_loadu_ps(src + i), target, _CMP_EQ_OQ);
      const int mask = _mm256_movemask_ps(equal);
      if (mask != 0) return i + __builtin_ctz(mask);
    }
  }
#endif
  for (; i < length; ++i) {
    if (static_cast<acc_t>(src[i]) == value) return i;
  }
  return length;
}

// Max, first argmax and sum of rows [row_begin, row_end) of a plane whose rows are `width`
// contiguous elements `row_stride` apart; positions are h * width + w. The max and sum come from
// SIMD lanes; the argmax is the first element equal to the max, found by a second scan of the
// (cache-resident) stripe only when asked for. A NaN anywhere makes the sum NaN: then one exact
// scalar scan applies the NaN rule (rare, so it costs nothing in the common case).
template <typename scalar_t, typename acc_t>
StripeStats<acc_t> reduce_stripe_rows(const scalar_t* plane, int64_t row_stride, int64_t row_begin,
                                      int64_t row_end, int64_t width, bool want_argmax) {
  const bool one_run = row_stride == width;  // rows back to back: the stripe is one run
  const int64_t run_length = one_run ? (row_end - row_begin) * width : width;
  const int64_t num_runs = one_run ? 1 : row_end - row_begin;
  const scalar_t* first = plane + row_begin * row_stride;
  StripeStats<acc_t> stats{static_cast<acc_t>(first[0]), static_cast<int32_t>(row_begin * width),
                           acc_t(0)};
  for (int64_t run = 0; run < num_runs; ++run) {
    max_and_sum(first + run * row_stride, run_length, stats.max, stats.sum);
  }
  const bool has_nan = stats.sum != stats.sum;
  if (!want_argmax && !has_nan) return stats;
  if (has_nan) {
    stats.max = static_cast<acc_t>(first[0]);
    for (int64_t run = 0; run < num_runs; ++run) {
      const scalar_t* src = first + run * row_stride;
      for (int64_t i = 0; i < run_length; ++i) {
        const acc_t v = static_cast<acc_t>(src[i]);
        if (beats(v, stats.max)) {
          stats.max = v;
          stats.argmax = static_cast<int32_t>((row_begin + run) * width + i);
        }
      }
    }
    return stats;
  }
  for (int64_t run = 0; run < num_runs; ++run) {
    const int64_t i = find_first_equal(first + run * row_stride, run_length, stats.max);
    if (i < run_length) {
      stats.argmax = static_cast<int32_t>((row_begin + run) * width + i);
      break;
    }
  }
  return stats;
}

// Per-task stripe statistics of a block of channels, laid out [stripe][channel in block].
template <typename acc_t>
struct StripeBlock {
  std::vector<acc_t> max, sum;
  std::vector<int32_t> argmax;
  explicit StripeBlock(int64_t num_parts)
      : max(num_parts * kChannelBlock), sum(num_parts * kChannelBlock),
        argmax(num_parts * kChannelBlock) {}
};

struct Geometry {
  int64_t batch, channels, height, width, num_parts;
  std::vector<int64_t> stripe_rows;  // stripe_rows[s] = first row of stripe s; [n] = H
};

Geometry make_geometry(int64_t batch, int64_t channels, int64_t height, int64_t width,
                       int64_t num_parts) {
  Geometry g{batch, channels, height, width, num_parts, std::vector<int64_t>(num_parts + 1)};
  for (int64_t s = 0; s <= num_parts; ++s) g.stripe_rows[s] = stripe_begin(s, height, num_parts);
  return g;
}

// Step 1, W contiguous: each channel's stripes from its rows.
template <typename scalar_t, typename acc_t>
void stripe_stats_rows_inner(const scalar_t* x, const int64_t* strides, const Geometry& g,
                             int64_t b, int64_t c0, int64_t block, bool want_argmax,
                             StripeBlock<acc_t>& out) {
  for (int64_t k = 0; k < block; ++k) {
    const scalar_t* plane = x + b * strides[0] + (c0 + k) * strides[1];
    for (int64_t s = 0; s < g.num_parts; ++s) {
      const auto st = reduce_stripe_rows<scalar_t, acc_t>(plane, strides[2], g.stripe_rows[s],
                                                          g.stripe_rows[s + 1], g.width, want_argmax);
      out.max[s * kChannelBlock + k] = st.max;
      out.argmax[s * kChannelBlock + k] = st.argmax;
      out.sum[s * kChannelBlock + k] = st.sum;
    }
  }
}

// Step 1, C contiguous: walk the stripe's positions in row-major order, channels inner.
template <typename scalar_t, typename acc_t>
void stripe_stats_channels_inner(const scalar_t* x, const int64_t* strides, const Geometry& g,
                                 int64_t b, int64_t c0, int64_t block, StripeBlock<acc_t>& out) {
  const scalar_t* base = x + b * strides[0] + c0;
  for (int64_t s = 0; s < g.num_parts; ++s) {
    acc_t* mx = out.max.data() + s * kChannelBlock;
    acc_t* sm = out.sum.data() + s * kChannelBlock;
    int32_t* am = out.argmax.data() + s * kChannelBlock;
    const int64_t r0 = g.stripe_rows[s];
    const scalar_t* first = base + r0 * strides[2];
    for (int64_t k = 0; k < block; ++k) {
      mx[k] = static_cast<acc_t>(first[k]);
      am[k] = static_cast<int32_t>(r0 * g.width);
      sm[k] = acc_t(0);
    }
    for (int64_t h = r0; h < g.stripe_rows[s + 1]; ++h) {
      for (int64_t w = 0; w < g.width; ++w) {
        const scalar_t* src = base + h * strides[2] + w * strides[3];
        const int32_t pos = static_cast<int32_t>(h * g.width + w);
        for (int64_t k = 0; k < block; ++k) {
          const acc_t v = static_cast<acc_t>(src[k]);
          const bool take = beats(v, mx[k]);
          mx[k] = take ? v : mx[k];
          am[k] = take ? pos : am[k];
          sm[k] += v;
        }
      }
    }
  }
}

// Step 2: windows from stripe statistics, out[b, i, c0 : c0 + block] and argmax likewise.
template <typename scalar_t, typename acc_t>
void combine_windows(const StripeBlock<acc_t>& st, const Geometry& g, at::IntArrayRef starts,
                     at::IntArrayRef lengths, PoolMode mode, int64_t b, int64_t c0, int64_t block,
                     scalar_t* out, int32_t* argmax) {
  const int64_t num_windows = static_cast<int64_t>(starts.size());
  acc_t best[kChannelBlock], total[kChannelBlock];
  int32_t best_pos[kChannelBlock];
  for (int64_t i = 0; i < num_windows; ++i) {
    const int64_t first = starts[i], last = starts[i] + lengths[i];
    const int64_t row = (b * num_windows + i) * g.channels + c0;
    for (int64_t k = 0; k < block; ++k) {
      best[k] = st.max[first * kChannelBlock + k];
      best_pos[k] = st.argmax[first * kChannelBlock + k];
      total[k] = st.sum[first * kChannelBlock + k];
    }
    for (int64_t s = first + 1; s < last; ++s) {
      for (int64_t k = 0; k < block; ++k) {
        const acc_t m = st.max[s * kChannelBlock + k];
        const bool take = beats(m, best[k]);
        best[k] = take ? m : best[k];
        best_pos[k] = take ? st.argmax[s * kChannelBlock + k] : best_pos[k];
        total[k] += st.sum[s * kChannelBlock + k];
      }
    }
    const acc_t inv_count =
        acc_t(1) / static_cast<acc_t>((g.stripe_rows[last] - g.stripe_rows[first]) * g.width);
    for (int64_t k = 0; k < block; ++k) {
      const acc_t value = (mode.max ? best[k] : acc_t(0)) + (mode.avg ? total[k] * inv_count : acc_t(0));
      out[row + k] = static_cast<scalar_t>(value);
    }
    if (argmax != nullptr) {
      for (int64_t k = 0; k < block; ++k) argmax[row + k] = best_pos[k];
    }
  }
}

// Backward step 1: the windows' gradients folded per (stripe, channel): `spread` reaches every
// element of the stripe, `peak` only the element at `peak_pos`.
template <typename acc_t>
struct StripeGrad {
  std::vector<acc_t> spread, peak;
  std::vector<int32_t> peak_pos;
  explicit StripeGrad(int64_t num_parts)
      : spread(num_parts * kChannelBlock), peak(num_parts * kChannelBlock),
        peak_pos(num_parts * kChannelBlock) {}
};

template <typename scalar_t, typename acc_t>
void fold_window_grads(const scalar_t* grad_out, const int32_t* argmax, const Geometry& g,
                       const std::vector<int32_t>& stripe_of_pos, at::IntArrayRef starts,
                       at::IntArrayRef lengths, PoolMode mode, int64_t b, int64_t c0,
                       int64_t block, StripeGrad<acc_t>& sg) {
  std::fill(sg.spread.begin(), sg.spread.end(), acc_t(0));
  std::fill(sg.peak.begin(), sg.peak.end(), acc_t(0));
  std::fill(sg.peak_pos.begin(), sg.peak_pos.end(), -1);
  const int64_t num_windows = static_cast<int64_t>(starts.size());
  for (int64_t i = 0; i < num_windows; ++i) {
    const int64_t first = starts[i], last = starts[i] + lengths[i];
    const int64_t row = (b * num_windows + i) * g.channels + c0;
    if (mode.avg) {
      const acc_t inv_count =
          acc_t(1) / static_cast<acc_t>((g.stripe_rows[last] - g.stripe_rows[first]) * g.width);
      for (int64_t s = first; s < last; ++s) {
        for (int64_t k = 0; k < block; ++k) {
          sg.spread[s * kChannelBlock + k] += static_cast<acc_t>(grad_out[row + k]) * inv_count;
        }
      }
    }
    if (mode.max) {
      // The argmax comes from the caller: a position outside the window would index out of
      // bounds, so it is refused (after the loop, which stays branch-predictable).
      const int64_t lowest = g.stripe_rows[first] * g.width, end = g.stripe_rows[last] * g.width;
      bool outside = false;
      for (int64_t k = 0; k < block; ++k) {
        const int32_t pos = argmax[row + k];
        if (pos < lowest || pos >= end) {
          outside = true;
          continue;
        }
        const int64_t slot = stripe_of_pos[pos] * kChannelBlock + k;
        sg.peak[slot] += static_cast<acc_t>(grad_out[row + k]);
        sg.peak_pos[slot] = pos;
      }
      TORCH_CHECK_VALUE(!outside, "pyramid_pool_backward: argmax holds a position outside window ",
                        i, " (rows [", g.stripe_rows[first], ", ", g.stripe_rows[last],
                        ")); pass the argmax that pyramid_pool_forward returned");
    }
  }
}

// Backward step 2, W contiguous: each channel's plane row by row.
template <typename scalar_t, typename acc_t>
void write_grad_rows_inner(const StripeGrad<acc_t>& sg, const Geometry& g, const int64_t* strides,
                           int64_t block, scalar_t* base) {
  for (int64_t k = 0; k < block; ++k) {
    for (int64_t s = 0; s < g.num_parts; ++s) {
      const acc_t spread = sg.spread[s * kChannelBlock + k];
      const acc_t peak = sg.peak[s * kChannelBlock + k];
      const int32_t peak_pos = sg.peak_pos[s * kChannelBlock + k];
      for (int64_t h = g.stripe_rows[s]; h < g.stripe_rows[s + 1]; ++h) {
        scalar_t* dst = base + k * strides[1] + h * strides[2];
        const int32_t row_pos = static_cast<int32_t>(h * g.width);
        for (int64_t w = 0; w < g.width; ++w) {
          dst[w] = static_cast<scalar_t>(spread + (row_pos + w == peak_pos ? peak : acc_t(0)));
        }
      }
    }
  }
}

// Backward step 2, C contiguous: positions in row-major order, channels inner.
template <typename scalar_t, typename acc_t>
void write_grad_channels_inner(const StripeGrad<acc_t>& sg, const Geometry& g,
                               const int64_t* strides, int64_t block, scalar_t* base) {
  for (int64_t s = 0; s < g.num_parts; ++s) {
    const acc_t* spread = sg.spread.data() + s * kChannelBlock;
    const acc_t* peak = sg.peak.data() + s * kChannelBlock;
    const int32_t* peak_pos = sg.peak_pos.data() + s * kChannelBlock;
    for (int64_t h = g.stripe_rows[s]; h < g.stripe_rows[s + 1]; ++h) {
      for (int64_t w = 0; w < g.width; ++w) {
        const int32_t pos = static_cast<int32_t>(h * g.width + w);
        scalar_t* dst = base + h * strides[2] + w * strides[3];
        for (int64_t k = 0; k < block; ++k) {
          dst[k] = static_cast<scalar_t>(spread[k] + (pos == peak_pos[k] ? peak[k] : acc_t(0)));
        }
      }
    }
  }
}

}  // namespace

// out [B, NW, C] and, when it is not empty, argmax [B, NW, C] from x [B, C, H, W] whose W
// (channels_inner = false) or C (channels_inner = true) is contiguous.
void forward_kernel(const at::Tensor& x, int64_t num_parts, at::IntArrayRef starts,
                    at::IntArrayRef lengths, PoolMode mode, bool channels_inner, at::Tensor& out,
                    at::Tensor& argmax) {
  const Geometry g = make_geometry(x.size(0), x.size(1), x.size(2), x.size(3), num_parts);
  const bool want_argmax = argmax.numel() > 0;
  const int64_t channel_blocks = (g.channels + kChannelBlock - 1) / kChannelBlock;
  const int64_t strides[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pyramid_pool_forward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    int32_t* argmax_ptr = want_argmax ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    at::parallel_for(0, g.batch * channel_blocks, 1, [&](int64_t task_begin, int64_t task_end) {
      StripeBlock<acc_t> stats(num_parts);
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t b = task / channel_blocks;
        const int64_t c0 = (task % channel_blocks) * kChannelBlock;
        const int64_t block = std::min(kChannelBlock, g.channels - c0);
        if (channels_inner) {
          stripe_stats_channels_inner<scalar_t, acc_t>(x_ptr, strides, g, b, c0, block, stats);
        } else {
          stripe_stats_rows_inner<scalar_t, acc_t>(x_ptr, strides, g, b, c0, block, want_argmax, stats);
        }
        combine_windows<scalar_t, acc_t>(stats, g, starts, lengths, mode, b, c0, block, out_ptr,
                                         argmax_ptr);
      }
    });
  });
}

// grad_x [B, C, H, W] (contiguous or channels_last) from contiguous grad_out and argmax.
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& argmax, int64_t num_parts,
                     at::IntArrayRef starts, at::IntArrayRef lengths, PoolMode mode,
                     bool channels_last, at::Tensor& grad_x) {
  const int64_t height = grad_x.size(2), width = grad_x.size(3);
  const Geometry g = make_geometry(grad_out.size(0), grad_out.size(2), height, width, num_parts);
  std::vector<int32_t> stripe_of_pos(height * width);
  for (int64_t p = 0; p < height * width; ++p) {
    stripe_of_pos[p] = static_cast<int32_t>(stripe_of_row(p / width, height, num_parts));
  }
  const int64_t channel_blocks = (g.channels + kChannelBlock - 1) / kChannelBlock;
  const int64_t strides[4] = {grad_x.stride(0), grad_x.stride(1), grad_x.stride(2), grad_x.stride(3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "pyramid_pool_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* g_ptr = grad_out.const_data_ptr<scalar_t>();
    const int32_t* argmax_ptr = mode.max ? argmax.const_data_ptr<int32_t>() : nullptr;
    scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * channel_blocks, 1, [&](int64_t task_begin, int64_t task_end) {
      StripeGrad<acc_t> sg(num_parts);
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t b = task / channel_blocks;
        const int64_t c0 = (task % channel_blocks) * kChannelBlock;
        const int64_t block = std::min(kChannelBlock, g.channels - c0);
        fold_window_grads<scalar_t, acc_t>(g_ptr, argmax_ptr, g, stripe_of_pos, starts, lengths,
                                           mode, b, c0, block, sg);
        scalar_t* base = dx + b * strides[0] + c0 * strides[1];
        if (channels_last) {
          write_grad_channels_inner(sg, g, strides, block, base);
        } else {
          write_grad_rows_inner(sg, g, strides, block, base);
        }
      }
    });
  });
}

}  // namespace reidfast::cpu::REIDFAST_CPU_ISA
