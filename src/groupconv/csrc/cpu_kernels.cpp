// groupconv's CPU kernels. Grouped convolution with narrow groups (NCHW) and depthwise convolution (NCHW and
// NHWC / channels_last), forward, backward-input and backward-weight, float32 and float64, with an
// optional channel shuffle fused into the reads: the conv reads input channel perm(k) where a
// materialised shuffle would have put it at position k, so the shuffle costs no pass over memory.
//
// perm(k) = (k % s) * (C / s) + k / s is ShuffleNet's shuffle with s groups: x.view(N, s, C/s, ...)
// .transpose(1, 2) puts input channel i * (C/s) + j at position j * s + i.
//
// Work is split with at::parallel_for, which honours torch.set_num_threads. Every output element is
// written by exactly one thread (the weight gradient: per-thread partial sums, then a fixed-order
// reduction), so results do not depend on scheduling. Inner loops run over contiguous memory (a
// row in NCHW, the channels of a pixel in NHWC), marked `omp simd` so that the compiler vectorises
// them (including the dot products of the weight gradient, which it would not reassociate on its own).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "batch_norm.h"
#include "inference_ops.h"
#include "layout.h"
#include "memory_tracking.h"
#include "narrow_nhwc.h"
#include "pointwise.h"
#include "settled_calls.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace {

struct Geometry {
  int64_t n, c, m;               // batch, input channels, output channels
  int64_t in_per_group, multiplier;  // input and output channels per group (depthwise: 1, multiplier)
  int64_t ih, iw, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t shuffle;

  // Iterations per parallel task such that each task does at least ~32K multiply-adds: smaller work
  // runs on the calling thread, since waking the thread pool costs more than the work itself.
  static int64_t grain(int64_t multiply_adds_per_iteration) {
    return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, multiply_adds_per_iteration));
  }

  int64_t perm(int64_t k) const { return shuffle == 1 ? k : (k % shuffle) * (c / shuffle) + k / shuffle; }
  // The output-column range [lo, hi) whose tap kx lands inside the input row: 0 <= ox*sw + kx*dw - pw < iw.
  void columns(int64_t kx, int64_t& lo, int64_t& hi) const {
    const int64_t offset = kx * dw - pw;
    lo = offset >= 0 ? 0 : (-offset + sw - 1) / sw;
    hi = iw - offset <= 0 ? 0 : std::min<int64_t>(ow, (iw - offset + sw - 1) / sw);
    if (hi < lo) hi = lo;
  }
};

Geometry geometry(at::IntArrayRef input_shape, at::IntArrayRef weight_shape, at::IntArrayRef output_shape,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t shuffle) {
  Geometry g;
  g.n = input_shape[0];
  g.c = input_shape[1];
  g.m = weight_shape[0];
  g.in_per_group = weight_shape[1];
  g.multiplier = g.m / (g.c / g.in_per_group);
  g.ih = input_shape[2];
  g.iw = input_shape[3];
  g.oh = output_shape[2];
  g.ow = output_shape[3];
  g.kh = weight_shape[2];
  g.kw = weight_shape[3];
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.shuffle = shuffle;
  return g;
}

bool is_nhwc(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor empty_like_layout(at::IntArrayRef shape, const at::Tensor& like, bool nhwc) {
  return at::empty(shape, like.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                             : at::MemoryFormat::Contiguous));
}

// ------------------------------------------------------------------------------------------ NCHW

// NCHW handles grouped convs with narrow groups too: an output plane sums the in_per_group input
// planes of its group (a depthwise conv has one), each a row-vectorised 2-D correlation.

template <typename T>
void accumulate_plane(const T* src, const T* filter, T* dst, const Geometry& g) {
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    T* row = dst + oy * g.ow;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = oy * g.sh + ky * g.dh - g.ph;
      if (iy < 0 || iy >= g.ih) continue;
      const T* in_row = src + iy * g.iw;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        int64_t lo, hi;
        g.columns(kx, lo, hi);
        const T weight = filter[ky * g.kw + kx];
        const T* in = in_row + kx * g.dw - g.pw;
        if (g.sw == 1) {
          #pragma omp simd
          for (int64_t ox = lo; ox < hi; ++ox) row[ox] += weight * in[ox];
        } else {
          #pragma omp simd
          for (int64_t ox = lo; ox < hi; ++ox) row[ox] += weight * in[ox * g.sw];
        }
      }
    }
  }
}

// The 3x3, stride-1 case (ShuffleNet's and MobileNet's depthwise convs, ResNeXt's grouped ones): the plane is copied
// into a zero-padded per-thread buffer, so that a row of output pixels is one vectorised loop with its nine taps
// unrolled and the sum in a register: no boundary tests, no pass per tap (rows of 7 to 56 pixels are too short
// for a loop per tap to pay for its bounds).
bool is_3x3_stride_1(const Geometry& g) { return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1; }
bool is_3x3(const Geometry& g) { return g.kh == 3 && g.kw == 3; }

// A rows x columns plane copied into a zeroed buffer `width` wide, `top` rows and `left` columns in.
template <typename T>
void copy_padded(const T* src, int64_t rows, int64_t columns, int64_t top, int64_t left, int64_t width,
                 int64_t height, T* buffer) {
  std::fill(buffer, buffer + width * height, T(0));
  for (int64_t y = 0; y < rows; ++y) std::copy(src + y * columns, src + (y + 1) * columns,
                                               buffer + (y + top) * width + left);
}

// The input plane padded by the conv's padding: output pixel (oy, ox) reads rows oy .. oy + 2 dh of it.
inline int64_t padded_input_width(const Geometry& g) { return g.iw + 2 * g.pw; }
inline int64_t padded_input_height(const Geometry& g) { return g.ih + 2 * g.ph; }

template <typename T>
void accumulate_plane_3x3(const T* src, const T* f, T* dst, T* padded, const Geometry& g) {
  const int64_t width = padded_input_width(g);
  copy_padded(src, g.ih, g.iw, g.ph, g.pw, width, padded_input_height(g), padded);
  const int64_t dy = g.dh * width, dx = g.dw;
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const T* r = padded + oy * g.sh * width;
    T* row = dst + oy * g.ow;
    #pragma omp simd
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      const T* p = r + ox * g.sw;
      row[ox] += f[0] * p[0] + f[1] * p[dx] + f[2] * p[2 * dx] + f[3] * p[dy] + f[4] * p[dy + dx] +
                 f[5] * p[dy + 2 * dx] + f[6] * p[2 * dy] + f[7] * p[2 * dy + dx] + f[8] * p[2 * dy + 2 * dx];
    }
  }
}

template <typename T>
void forward_nchw(const T* x, const T* w, const T* bias, T* out, const Geometry& g) {
  const int64_t taps = g.kh * g.kw;
  const int64_t grain = Geometry::grain(g.in_per_group * g.oh * g.ow * taps);
  const bool fast_3x3 = is_3x3(g);
  at::parallel_for(0, g.n * g.m, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> padded(fast_3x3 ? padded_input_width(g) * padded_input_height(g) : 0);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.m, k = plane % g.m, first = (k / g.multiplier) * g.in_per_group;
      T* dst = out + plane * g.oh * g.ow;
      std::fill(dst, dst + g.oh * g.ow, bias ? bias[k] : T(0));
      for (int64_t c = 0; c < g.in_per_group; ++c) {
        const T* src = x + (n * g.c + g.perm(first + c)) * g.ih * g.iw;
        if (fast_3x3)
          accumulate_plane_3x3(src, w + (k * g.in_per_group + c) * taps, dst, padded.data(), g);
        else
          accumulate_plane(src, w + (k * g.in_per_group + c) * taps, dst, g);
      }
    }
  });
}

// The input gradient of a 3x3 stride-1 conv gathers, for each input pixel, the output gradient under the flipped
// filter: grad_in[iy][ix] += w[ky][kx] * grad_out[iy + ph - ky dh][ix + pw - kx dw]. The gradient plane is padded
// by two dilated taps on every side, so every read is inside, and the row is one vectorised loop as in the forward.
template <typename T>
void gather_plane_3x3(const T* grad, const T* f, T* dst, T* padded, const Geometry& g) {
  const int64_t width = g.ow + 4 * g.dw;
  copy_padded(grad, g.oh, g.ow, 2 * g.dh, 2 * g.dw, width, g.oh + 4 * g.dh, padded);
  const int64_t dy = g.dh * width, dx = g.dw;
  for (int64_t iy = 0; iy < g.ih; ++iy) {
    const T* r = padded + (iy + g.ph) * width + g.pw;
    T* row = dst + iy * g.iw;
    #pragma omp simd
    for (int64_t ix = 0; ix < g.iw; ++ix) {
      const T* p = r + ix;
      row[ix] += f[0] * p[2 * dy + 2 * dx] + f[1] * p[2 * dy + dx] + f[2] * p[2 * dy] + f[3] * p[dy + 2 * dx] +
                 f[4] * p[dy + dx] + f[5] * p[dy] + f[6] * p[2 * dx] + f[7] * p[dx] + f[8] * p[0];
    }
  }
}

template <typename T>
void backward_input_nchw(const T* grad_out, const T* w, T* grad_in, const Geometry& g) {
  // One thread owns each input plane: it gathers the contributions of the group's output channels.
  const int64_t grain = Geometry::grain(g.multiplier * g.oh * g.ow * g.kh * g.kw);
  const bool fast_3x3 = is_3x3_stride_1(g);
  at::parallel_for(0, g.n * g.c, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> padded(fast_3x3 ? (g.ow + 4 * g.dw) * (g.oh + 4 * g.dh) : 0);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.c, shuffled = plane % g.c;  // position of this plane after the shuffle
      const int64_t group = shuffled / g.in_per_group, c = shuffled % g.in_per_group;
      T* dst = grad_in + (n * g.c + g.perm(shuffled)) * g.ih * g.iw;
      std::fill(dst, dst + g.ih * g.iw, T(0));
      for (int64_t j = 0; j < g.multiplier; ++j) {
        const int64_t k = group * g.multiplier + j;
        const T* src = grad_out + (n * g.m + k) * g.oh * g.ow;
        const T* filter = w + (k * g.in_per_group + c) * g.kh * g.kw;
        if (fast_3x3) {
          gather_plane_3x3(src, filter, dst, padded.data(), g);
          continue;
        }
        for (int64_t oy = 0; oy < g.oh; ++oy) {
          const T* row = src + oy * g.ow;
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            const int64_t iy = oy * g.sh + ky * g.dh - g.ph;
            if (iy < 0 || iy >= g.ih) continue;
            T* in_row = dst + iy * g.iw;
            for (int64_t kx = 0; kx < g.kw; ++kx) {
              int64_t lo, hi;
              g.columns(kx, lo, hi);
              const T weight = filter[ky * g.kw + kx];
              T* in = in_row + kx * g.dw - g.pw;
              if (g.sw == 1) {
                #pragma omp simd
                for (int64_t ox = lo; ox < hi; ++ox) in[ox] += weight * row[ox];
              } else {
                #pragma omp simd
                for (int64_t ox = lo; ox < hi; ++ox) in[ox * g.sw] += weight * row[ox];
              }
            }
          }
        }
      }
    }
  });
}

template <typename T>
void backward_weight_nchw(const T* grad_out, const T* x, T* grad_w, const Geometry& g) {
  // One thread owns each filter (an output channel and one input channel of its group) and sums over the batch
  // in order.
  const int64_t grain = Geometry::grain(g.n * g.oh * g.ow * g.kh * g.kw);
  const bool fast_3x3 = is_3x3(g);
  at::parallel_for(0, g.m * g.in_per_group, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> padded(fast_3x3 ? padded_input_width(g) * padded_input_height(g) : 0);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t k = index / g.in_per_group, c = index % g.in_per_group;
      const int64_t channel = g.perm((k / g.multiplier) * g.in_per_group + c);
      T* filter = grad_w + index * g.kh * g.kw;
      if (fast_3x3) {
        // Nine dot products of each gradient row with the rows of the padded input plane under it, in one pass.
        const int64_t width = padded_input_width(g), dy = g.dh * width, dx = g.dw;
        T totals[9] = {};
        for (int64_t n = 0; n < g.n; ++n) {
          copy_padded(x + (n * g.c + channel) * g.ih * g.iw, g.ih, g.iw, g.ph, g.pw, width, padded_input_height(g),
                      padded.data());
          const T* grad = grad_out + (n * g.m + k) * g.oh * g.ow;
          for (int64_t oy = 0; oy < g.oh; ++oy) {
            const T* row = grad + oy * g.ow;
            const T* r = padded.data() + oy * g.sh * width;
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
            #pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              const T d = row[ox];
              const T* p = r + ox * g.sw;
              s0 += d * p[0]; s1 += d * p[dx]; s2 += d * p[2 * dx];
              s3 += d * p[dy]; s4 += d * p[dy + dx]; s5 += d * p[dy + 2 * dx];
              s6 += d * p[2 * dy]; s7 += d * p[2 * dy + dx]; s8 += d * p[2 * dy + 2 * dx];
            }
            totals[0] += s0; totals[1] += s1; totals[2] += s2; totals[3] += s3; totals[4] += s4;
            totals[5] += s5; totals[6] += s6; totals[7] += s7; totals[8] += s8;
          }
        }
        std::copy(totals, totals + 9, filter);
        continue;
      }
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          int64_t lo, hi;
          g.columns(kx, lo, hi);
          T total = 0;
          for (int64_t n = 0; n < g.n; ++n) {
            const T* src = x + (n * g.c + channel) * g.ih * g.iw;
            const T* grad = grad_out + (n * g.m + k) * g.oh * g.ow;
            for (int64_t oy = 0; oy < g.oh; ++oy) {
              const int64_t iy = oy * g.sh + ky * g.dh - g.ph;
              if (iy < 0 || iy >= g.ih) continue;
              const T* in = src + iy * g.iw + kx * g.dw - g.pw;
              const T* row = grad + oy * g.ow;
              T sum = 0;
              if (g.sw == 1) {
                #pragma omp simd reduction(+ : sum)
                for (int64_t ox = lo; ox < hi; ++ox) sum += row[ox] * in[ox];
              } else {
                #pragma omp simd reduction(+ : sum)
                for (int64_t ox = lo; ox < hi; ++ox) sum += row[ox] * in[ox * g.sw];
              }
              total += sum;
            }
          }
          filter[ky * g.kw + kx] = total;
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------ NHWC
// Depthwise only: one output channel per input channel (multiplier 1). Channels are the contiguous inner loop; the
// weight is repacked as [tap][channel] so that a tap's weights are contiguous too.
//
// With a fused shuffle, output channel k reads input channel perm(k): reading through the permutation at every tap
// is a gather the compiler cannot vectorise (three times slower). So the taps run in input-channel order q, with the
// weights permuted once (the filter of the output channel that reads q), into a per-thread buffer; the
// permutation is applied once per pixel when the buffer is written out (or, for the weight gradient, read in).

// Entry [t][k] holds output channel k's tap t; in read order, entry [t][perm(k)] does (the shuffled forward).
template <typename T>
std::vector<T> taps_by_channel(const T* w, const Geometry& g, bool in_read_order = false) {
  std::vector<T> packed(g.kh * g.kw * g.c);
  for (int64_t k = 0; k < g.c; ++k) {
    const int64_t column = in_read_order ? g.perm(k) : k;
    for (int64_t t = 0; t < g.kh * g.kw; ++t) packed[t * g.c + column] = w[k * g.kh * g.kw + t];
  }
  return packed;
}

// The input channel each output channel reads (identity without a shuffle).
std::vector<int64_t> read_channels(const Geometry& g) {
  std::vector<int64_t> channels(g.c);
  for (int64_t k = 0; k < g.c; ++k) channels[k] = g.perm(k);
  return channels;
}

// f(tap, pixel) for every kernel tap of output pixel (n, oy, ox) that lands inside the input: tap = ky * kw + kx,
// pixel = the offset of the input pixel it reads in an NHWC tensor (its g.c channels follow).
template <typename F>
inline void for_each_tap_nhwc(const Geometry& g, int64_t n, int64_t oy, int64_t ox, const F& f) {
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = oy * g.sh + ky * g.dh - g.ph;
    if (iy < 0 || iy >= g.ih) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ix = ox * g.sw + kx * g.dw - g.pw;
      if (ix < 0 || ix >= g.iw) continue;
      f(ky * g.kw + kx, ((n * g.ih + iy) * g.iw + ix) * g.c);
    }
  }
}

// acc[q] += sum over the taps of weight[t][q] * x[pixel under tap t][q], for one output pixel; channels contiguous.
template <typename T>
inline void accumulate_taps_nhwc(const T* x, const T* taps, T* acc, int64_t n, int64_t oy, int64_t ox,
                                 const Geometry& g) {
  for_each_tap_nhwc(g, n, oy, ox, [&](int64_t tap, int64_t offset) {
    const T* pixel = x + offset;
    const T* weight = taps + tap * g.c;
    #pragma omp simd
    for (int64_t k = 0; k < g.c; ++k) acc[k] += weight[k] * pixel[k];
  });
}

template <typename T>
void forward_nhwc(const T* x, const T* w, const T* bias, T* out, const Geometry& g) {
  const bool shuffled = g.shuffle != 1;
  const std::vector<T> taps = taps_by_channel(w, g, shuffled);
  const std::vector<int64_t> reads = read_channels(g);
  const int64_t* channel = reads.data();
  const int64_t grain = Geometry::grain(g.ow * g.kh * g.kw * g.c);
  at::parallel_for(0, g.n * g.oh, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(shuffled ? g.c : 0);
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t n = row_index / g.oh, oy = row_index % g.oh;
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        T* dst = out + ((n * g.oh + oy) * g.ow + ox) * g.c;
        if (shuffled) {
          std::fill(buffer.begin(), buffer.end(), T(0));
          accumulate_taps_nhwc(x, taps.data(), buffer.data(), n, oy, ox, g);
          #pragma omp simd
          for (int64_t k = 0; k < g.c; ++k) dst[k] = (bias ? bias[k] : T(0)) + buffer[channel[k]];
        } else {
          #pragma omp simd
          for (int64_t k = 0; k < g.c; ++k) dst[k] = bias ? bias[k] : T(0);
          accumulate_taps_nhwc(x, taps.data(), dst, n, oy, ox, g);
        }
      }
    }
  });
}

template <typename T>
void backward_input_nhwc(const T* grad_out, const T* w, T* grad_in, const Geometry& g) {
  // Gather form: each input pixel sums the output pixels whose window covers it, so one thread owns it.
  const std::vector<T> taps = taps_by_channel(w, g);
  const std::vector<int64_t> reads = read_channels(g);
  const int64_t* channel = reads.data();
  const bool shuffled = g.shuffle != 1;
  const int64_t grain = Geometry::grain(g.iw * g.kh * g.kw * g.c);
  at::parallel_for(0, g.n * g.ih, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(g.c);
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t n = row_index / g.ih, iy = row_index % g.ih;
      for (int64_t ix = 0; ix < g.iw; ++ix) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t y = iy + g.ph - ky * g.dh;
          if (y < 0 || y % g.sh) continue;
          const int64_t oy = y / g.sh;
          if (oy >= g.oh) continue;
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t xx = ix + g.pw - kx * g.dw;
            if (xx < 0 || xx % g.sw) continue;
            const int64_t ox = xx / g.sw;
            if (ox >= g.ow) continue;
            const T* grad = grad_out + ((n * g.oh + oy) * g.ow + ox) * g.c;
            const T* weight = taps.data() + (ky * g.kw + kx) * g.c;
            #pragma omp simd
            for (int64_t k = 0; k < g.c; ++k) acc[k] += weight[k] * grad[k];
          }
        }
        T* dst = grad_in + ((n * g.ih + iy) * g.iw + ix) * g.c;
        if (shuffled) {
          #pragma omp simd
          for (int64_t k = 0; k < g.c; ++k) dst[channel[k]] = acc[k];
        } else {
          std::copy(acc.begin(), acc.end(), dst);
        }
      }
    }
  });
}

template <typename T>
void backward_weight_nhwc(const T* grad_out, const T* x, T* grad_w, const Geometry& g) {
  // Per-chunk partial sums over output rows (chunks fixed by the row count, not the thread count),
  // then a reduction in chunk order: the result is the same for any number of threads. With a shuffle the
  // sums run in input-channel order (each pixel's gradient gathered into that order once), and the
  // reduction reads them back through the permutation.
  const std::vector<int64_t> reads = read_channels(g);
  const int64_t* channel = reads.data();
  const bool shuffled = g.shuffle != 1;
  const int64_t rows = g.n * g.oh, taps = g.kh * g.kw;
  const int64_t chunk = std::max<int64_t>(1, (rows + 63) / 64), chunks = (rows + chunk - 1) / chunk;
  std::vector<T> partial(chunks * taps * g.c, T(0));
  const int64_t grain = Geometry::grain(chunk * g.ow * g.kh * g.kw * g.c);
  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> gathered(shuffled ? g.c : 0);
    for (int64_t part = begin; part < end; ++part) {
      T* sums = partial.data() + part * taps * g.c;
      for (int64_t row_index = part * chunk; row_index < std::min(rows, (part + 1) * chunk); ++row_index) {
        const int64_t n = row_index / g.oh, oy = row_index % g.oh;
        for (int64_t ox = 0; ox < g.ow; ++ox) {
          const T* grad = grad_out + ((n * g.oh + oy) * g.ow + ox) * g.c;
          if (shuffled) {
            for (int64_t k = 0; k < g.c; ++k) gathered[channel[k]] = grad[k];
            grad = gathered.data();
          }
          for_each_tap_nhwc(g, n, oy, ox, [&](int64_t tap, int64_t offset) {
            const T* pixel = x + offset;
            T* sum = sums + tap * g.c;
            #pragma omp simd
            for (int64_t k = 0; k < g.c; ++k) sum[k] += grad[k] * pixel[k];
          });
        }
      }
    }
  });
  for (int64_t k = 0; k < g.c; ++k) {
    const int64_t q = shuffled ? channel[k] : k;
    for (int64_t t = 0; t < taps; ++t) {
      T total = 0;
      for (int64_t part = 0; part < chunks; ++part) total += partial[(part * taps + t) * g.c + q];
      grad_w[k * taps + t] = total;
    }
  }
}

// ---------------------------------------------------------------------------------------- entry

std::vector<int64_t> output_shape(at::IntArrayRef input_shape, at::IntArrayRef weight_shape, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  std::vector<int64_t> shape{input_shape[0], weight_shape[0]};
  for (int d = 0; d < 2; ++d)
    shape.push_back((input_shape[2 + d] + 2 * padding[d] - dilation[d] * (weight_shape[2 + d] - 1) - 1) / stride[d] +
                    1);
  return shape;
}

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t shuffle) {
  const bool nhwc = is_nhwc(input);
  const at::Tensor x = nhwc ? input : input.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto shape = output_shape(x.sizes(), w.sizes(), stride, padding, dilation);
  at::Tensor out = empty_like_layout(shape, x, nhwc);
  const Geometry g = geometry(x.sizes(), w.sizes(), shape, stride, padding, dilation, shuffle);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "groupconv_conv_forward", [&] {
    const scalar_t* bias_ptr = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (nhwc)
      forward_nhwc(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias_ptr, out.data_ptr<scalar_t>(), g);
    else
      forward_nchw(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias_ptr, out.data_ptr<scalar_t>(), g);
  });
  return out;
}

at::Tensor backward_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_shape,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t shuffle) {
  const bool nhwc = is_nhwc(grad_output);
  const at::Tensor grad = nhwc ? grad_output : grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor grad_in = empty_like_layout(input_shape, grad, nhwc);
  const Geometry g = geometry(input_shape, w.sizes(), grad.sizes(), stride, padding, dilation, shuffle);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "groupconv_conv_backward_input", [&] {
    if (nhwc)
      backward_input_nhwc(grad.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), g);
    else
      backward_input_nchw(grad.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), g);
  });
  return grad_in;
}

at::Tensor backward_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_shape,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t shuffle) {
  // Both tensors in one layout: the input's (a mismatched gradient is converted, one pass).
  const bool nhwc = is_nhwc(input);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(format);
  const at::Tensor grad = grad_output.contiguous(format);
  at::Tensor grad_w = at::empty(weight_shape, grad.options());
  const Geometry g = geometry(x.sizes(), weight_shape, grad.sizes(), stride, padding, dilation, shuffle);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "groupconv_conv_backward_weight", [&] {
    if (nhwc)
      backward_weight_nhwc(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>(), g);
    else
      backward_weight_nchw(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>(), g);
  });
  return grad_w;
}

// ----------------------------------------------------------------------------------- channel shuffle
// Output channel k is input channel perm(k): in NCHW / NCDHW a copy of whole planes, channels-last a
// gather within each pixel. One pass over memory, as a copy.

at::Tensor channel_shuffle(const at::Tensor& input, int64_t groups) {
  // Channels innermost (channels_last or channels_last_3d): gather within each pixel; else whole planes.
  const bool nhwc = is_channels_innermost(input);
  const at::Tensor x = nhwc ? input : input.contiguous();
  at::Tensor out = at::empty_like(x);  // keeps x's layout
  const int64_t n = x.size(0), c = x.size(1), pixels = x.numel() / std::max<int64_t>(1, n * c);
  Geometry g{};
  g.c = c;
  g.shuffle = groups;
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "groupconv_channel_shuffle", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (nhwc) {
      const std::vector<int64_t> reads = read_channels(g);
      at::parallel_for(0, n * pixels, Geometry::grain(c), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p)
          for (int64_t k = 0; k < c; ++k) dst[p * c + k] = src[p * c + reads[k]];
      });
    } else {
      at::parallel_for(0, n * c, Geometry::grain(pixels), [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t sample = plane / c, k = plane % c;
          std::copy_n(src + (sample * c + g.perm(k)) * pixels, pixels, dst + plane * pixels);
        }
      });
    }
  });
  return out;
}

// ----------------------------------------------------------------------------------------- layout change
// A 4-D tensor copied into the other memory format (NCHW <-> NHWC): per sample, a rows x columns matrix transposed
// (C x HW into HW x C, or back). torch's permuted copy runs at a third of the copy bandwidth or less on ResNeXt's
// activations (6 ms for 32x128x32x32 into channels_last, against 1 ms for a plain copy). Here square tiles of one
// vector register's width (16 floats) are loaded a row per register, transposed in registers, and stored a row per
// register: every read and write is a whole vector.

// One stage of the transpose: exchanges bit `B` of the row index with bit `B` of the lane index, i.e. swaps the
// off-diagonal B x B blocks of every 2B x 2B block. All log2(size) stages make the transpose (they commute).
template <typename T, int64_t B, size_t... LANE>
inline void transpose_stage(typename Vector<T>::type* rows, std::index_sequence<LANE...>) {
  using M = typename Vector<T>::Mask;
  using Index = typename Vector<T>::Index;
  constexpr int64_t L = Vector<T>::size;
  const M low = {static_cast<Index>((LANE & B) ? L + LANE - B : LANE)...};
  const M high = {static_cast<Index>((LANE & B) ? L + LANE : LANE + B)...};
#pragma GCC unroll 16
  for (int64_t i = 0; i < L; ++i) {
    if (i & B) continue;
    const auto r0 = rows[i], r1 = rows[i | B];
    rows[i] = __builtin_shuffle(r0, r1, low);
    rows[i | B] = __builtin_shuffle(r0, r1, high);
  }
}

template <typename T, size_t... STAGE>
inline void transpose_tile(const T* src, int64_t src_stride, T* dst, int64_t dst_stride,
                           std::index_sequence<STAGE...>) {
  constexpr int64_t L = Vector<T>::size;
  typename Vector<T>::type rows[L];
#pragma GCC unroll 16
  for (int64_t i = 0; i < L; ++i) std::memcpy(&rows[i], src + i * src_stride, sizeof(rows[i]));
  (transpose_stage<T, (int64_t{1} << STAGE)>(rows, std::make_index_sequence<L>{}), ...);
#pragma GCC unroll 16
  for (int64_t i = 0; i < L; ++i) std::memcpy(dst + i * dst_stride, &rows[i], sizeof(rows[i]));
}

template <typename T>
void transpose_matrices(const T* src, T* dst, int64_t count, int64_t rows, int64_t columns) {
  constexpr int64_t L = Vector<T>::size;
  constexpr int64_t STAGES = L == 16 ? 4 : 3;
  // Tasks: a band of L rows of one matrix (all its columns), so that a task streams L source rows front to back.
  const int64_t bands = (rows + L - 1) / L;
  at::parallel_for(0, count * bands, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, L * columns)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t matrix = task / bands, r0 = task % bands * L, r1 = std::min(rows, r0 + L);
      const T* a = src + matrix * rows * columns;
      T* b = dst + matrix * rows * columns;
      int64_t c0 = 0;
      if (r1 - r0 == L)
        for (; c0 + L <= columns; c0 += L)
          transpose_tile<T>(a + r0 * columns + c0, columns, b + c0 * rows + r0, rows,
                            std::make_index_sequence<STAGES>{});
      for (int64_t c = c0; c < columns; ++c)  // the last columns, or a band of fewer than L rows
        for (int64_t r = r0; r < r1; ++r) b[c * rows + r] = a[r * columns + c];
    }
  });
}

at::Tensor to_memory_format(const at::Tensor& input, bool channels_last) {
  TORCH_CHECK(input.dim() == 4, "to_memory_format: a 4-D tensor is needed, got ", input.dim(), " dimensions");
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (input.is_contiguous(format)) return input;
  const at::Tensor x = input.contiguous(channels_last ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  const int64_t n = x.size(0), c = x.size(1), pixels = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "groupconv_to_memory_format", [&] {
    if (channels_last)
      transpose_matrices(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, c, pixels);
    else
      transpose_matrices(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, pixels, c);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "groupconv's native CPU kernels: narrow-group and depthwise convolution with a fused channel shuffle; "
            "channel shuffle; batch normalisation fused with a residual add and ReLU; pointwise and narrow-group "
            "convolution in channels_last; pooling, a first-layer conv and a small-batch linear layer for inference; settled conv "
            "calls";
  m.def("conv_forward", &forward);
  m.def("conv_backward_input", &backward_input);
  m.def("conv_backward_weight", &backward_weight);
  m.def("channel_shuffle", &channel_shuffle);
  m.def("to_memory_format", &to_memory_format);
  m.def("batch_norm_forward", &batch_norm_forward);
  m.def("batch_norm_backward", &batch_norm_backward);
  m.def("pointwise_forward_nhwc", &pointwise_forward_nhwc, py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("groups"), py::arg("residual") = py::none(), py::arg("relu") = false, py::arg("shuffle_groups") = 1);
  py::class_<PointwiseKernel>(m, "PointwiseKernel")
      .def(py::init<const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, bool, int64_t>(), py::arg("weight"),
           py::arg("bias"), py::arg("groups"), py::arg("relu") = false, py::arg("shuffle_groups") = 1)
      .def("__call__", &PointwiseKernel::operator(), py::arg("input"), py::arg("residual") = py::none());
  m.def("pointwise_backward_input_nhwc", &pointwise_backward_input_nhwc, py::arg("grad_output"), py::arg("weight"),
        py::arg("groups"), py::arg("accumulate") = py::none());
  m.def("pointwise_backward_weight_nhwc", &pointwise_backward_weight_nhwc);
  m.def("pointwise_backward_nhwc", &pointwise_backward_nhwc, py::arg("grad_output"), py::arg("input"),
        py::arg("weight"), py::arg("groups"), py::arg("accumulate") = py::none());
  m.def("narrow_forward_nhwc", &narrow_forward_nhwc);
  py::class_<NarrowKernel>(m, "NarrowKernel")
      .def(py::init<const at::Tensor&, const c10::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef, bool>(),
           py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("relu") = false)
      .def("__call__", &NarrowKernel::operator(), py::arg("input"));
  m.def("narrow_backward_input_nhwc", &narrow_backward_input_nhwc);
  m.def("narrow_backward_weight_nhwc", &narrow_backward_weight_nhwc);
  m.def("start_memory_tracking", &start_memory_tracking);
  m.def("stop_memory_tracking", &stop_memory_tracking);
  m.def("max_pool2d_nhwc", &max_pool2d_nhwc);
  m.def("avg_pool2d_nhwc", &avg_pool2d_nhwc);
  m.def("linear_small_batch", &linear_small_batch);
  m.def("few_channels_conv_nhwc", &few_channels_conv_nhwc);
  m.def("run_settled_conv", &run_settled_conv);
  m.def("settle_conv_on_torch", &settle_conv_on_torch);
  m.def("settle_conv_on_runner", &settle_conv_on_runner);
  m.def("settled_conv_path", &settled_conv_path);
  m.def("forget_settled_convs", &forget_settled_convs);
  m.def("settled_conv_count", &settled_conv_count);
  m.def("set_settled_conv_capacity", &set_settled_conv_capacity);
  m.def("settled_conv_capacity", &settled_conv_capacity);
}
