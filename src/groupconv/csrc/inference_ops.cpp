// Small inference-time ops for CPU (see inference_ops.h).
//
// Pooling: torch's channels_last max_pool2d computes the indices too and vectorises poorly over few channels:
// ShuffleNet's first pool (24 channels, 112x112 -> 56x56) took about 150 us at batch 1, where reading its 1.2 MB
// takes 40. Here each output pixel's channels are summed or compared a vector at a time in registers, the rows split
// between the threads; average pooling the same way.
//
// A network's first conv reads an image of 3 channels: oneDNN takes 300-400 us for ShuffleNet's (3 -> 24, 3x3,
// stride 2, 224x224) at batch 1, 16 M multiply-adds, after the image's conversion to channels_last (100 us). Here
// each output pixel's channels are vector accumulators, and the input's few values per tap are read in its own
// layout and broadcast.
//
// A classifier's linear layer at batch 1 is a matrix-vector product over weights that come from memory at each
// forward (ShuffleNet 1x g=1: 576 x 1000, 2.3 MB): torch's runs it on one thread, at about 10 GB/s (240 us). Here the
// weight rows are split between the threads, each row's dot products with the batch's inputs in vector registers.

#include "inference_ops.h"

#include "layout.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

int64_t pooled_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode) {
  // torch's pooling_output_shape, dilation 1
  const int64_t span = size + 2 * padding - (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + padding) --out;  // the last window must start inside the input
  return out;
}

template <typename T>
using V = typename Vector<T>::type;

template <typename T>
inline V<T> load(const T* source) {
  V<T> v;
  std::memcpy(&v, source, sizeof(v));
  return v;
}

// The maximum (MAX) or the sum times `scale` over a window of one vector (or half vector) of channels at `offset`,
// held in a register.
template <bool MAX, typename W, typename T>
inline void pool_vector(const T* x, T* out, int64_t offset, int64_t c, int64_t n, int64_t ih, int64_t iw, int64_t y0,
                        int64_t y1, int64_t x0, int64_t x1, T scale) {
  W m = MAX ? W{} - std::numeric_limits<T>::infinity() : W{};
  for (int64_t iy = y0; iy < y1; ++iy)
    for (int64_t ix = x0; ix < x1; ++ix) {
      W v;
      std::memcpy(&v, x + ((n * ih + iy) * iw + ix) * c + offset, sizeof(v));
      if constexpr (MAX)
        m = (v > m) | (v != v) ? v : m;  // (a NaN, once taken, stays: nothing compares above it)
      else
        m += v;
    }
  if constexpr (!MAX) m *= scale;
  std::memcpy(out + offset, &m, sizeof(m));
}

// Rows begin .. end of a max (MAX) or average pooling: each output pixel's channels a vector (then a half vector,
// then one at a time). `count_include_pad`: the average divides by the window's size within the padded input, else by
// its size within the input.
template <bool MAX, typename T>
void pool_rows(const T* x, T* y, int64_t c, int64_t ih, int64_t iw, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool count_include_pad, int64_t begin, int64_t end) {
  constexpr int64_t L = Vector<T>::size;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / oh, oy = row % oh;
    const int64_t top = oy * sh - ph, padded_bottom = std::min(top + kh, ih + ph);
    const int64_t y0 = std::max<int64_t>(0, top), y1 = std::min(ih, top + kh);
    for (int64_t ox = 0; ox < ow; ++ox) {
      const int64_t left = ox * sw - pw, padded_right = std::min(left + kw, iw + pw);
      const int64_t x0 = std::max<int64_t>(0, left), x1 = std::min(iw, left + kw);
      const int64_t count = count_include_pad ? (padded_bottom - top) * (padded_right - left) : (y1 - y0) * (x1 - x0);
      const T scale = T(1) / T(count);
      T* out = y + ((n * oh + oy) * ow + ox) * c;
      int64_t k = 0;
      for (; k + L <= c; k += L) pool_vector<MAX, V<T>>(x, out, k, c, n, ih, iw, y0, y1, x0, x1, scale);
      for (; k + L / 2 <= c; k += L / 2) pool_vector<MAX, typename Half<T>::type>(x, out, k, c, n, ih, iw, y0, y1, x0, x1, scale);
      for (; k < c; ++k) {
        T m = MAX ? -std::numeric_limits<T>::infinity() : T(0);
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) {
            const T v = x[((n * ih + iy) * iw + ix) * c + k];
            if constexpr (MAX)
              m = (v > m || v != v) ? v : m;
            else
              m += v;
          }
        out[k] = MAX ? m : m * scale;
      }
    }
  }
}

template <typename T>
inline T sum_lanes(const V<T>& v) {
  T sum = 0;
  for (int64_t i = 0; i < Vector<T>::size; ++i) sum += v[i];
  return sum;
}

// y[m, j] for the weight rows j in [begin, end): four rows at a time, so that each input vector loaded serves four
// independent sums.
template <typename T>
void linear_rows(const T* x, const T* w, const T* bias, T* y, int64_t m_count, int64_t k_count, int64_t n_count,
                 int64_t begin, int64_t end) {
  constexpr int64_t L = Vector<T>::size, ROWS = 4;
  const int64_t k_vectors = k_count / L * L;
  for (int64_t m = 0; m < m_count; ++m) {
    const T* xm = x + m * k_count;
    int64_t j = begin;
    for (; j + ROWS <= end; j += ROWS) {
      V<T> acc[ROWS] = {};
      for (int64_t k = 0; k < k_vectors; k += L) {
        const V<T> xv = load(xm + k);
#pragma GCC unroll 4
        for (int64_t r = 0; r < ROWS; ++r) acc[r] += load(w + (j + r) * k_count + k) * xv;
      }
      for (int64_t r = 0; r < ROWS; ++r) {
        T sum = sum_lanes<T>(acc[r]);
        for (int64_t k = k_vectors; k < k_count; ++k) sum += w[(j + r) * k_count + k] * xm[k];
        y[m * n_count + j + r] = sum + (bias ? bias[j + r] : T(0));
      }
    }
    for (; j < end; ++j) {
      V<T> acc = {};
      for (int64_t k = 0; k < k_vectors; k += L) acc += load(w + j * k_count + k) * load(xm + k);
      T sum = sum_lanes<T>(acc);
      for (int64_t k = k_vectors; k < k_count; ++k) sum += w[j * k_count + k] * xm[k];
      y[m * n_count + j] = sum + (bias ? bias[j] : T(0));
    }
  }
}

// Output pixels ox0 .. ox0 + P - 1 of row oy of image n (`row`: that output row), VB vectors of output channels
// each, in registers. `xs`: the input's strides; `packed`: the filters [ky][kx][ci][VB vectors], `bias` padded alike.
template <typename T, int64_t P, int64_t VB, bool CHECKED>
inline void few_channels_pixels(const T* x, const int64_t* xs, const T* packed, const T* bias, T* row, int64_t c,
                                int64_t co, int64_t ih, int64_t iw, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                int64_t ph, int64_t pw, int64_t n, int64_t oy, int64_t ox0, bool relu) {
  constexpr int64_t L = Vector<T>::size;
  V<T> acc[P][VB];
  for (int64_t v = 0; v < VB; ++v) {
    const V<T> b = bias ? load(bias + v * L) : V<T>{};
    for (int64_t p = 0; p < P; ++p) acc[p][v] = b;
  }
  // Each tap's filter vectors are loaded once for the P pixels, whose input values are broadcast against them.
  // (CHECKED: some column of the block falls in the padding; else no test in the loops, which then unroll whole and
  // keep the accumulators in registers.)
  for (int64_t ky = 0; ky < kh; ++ky) {
    const int64_t iy = oy * sh - ph + ky;
    if (iy < 0 || iy >= ih) continue;
    const T* input_row = x + n * xs[0] + iy * xs[2];
    for (int64_t kx = 0; kx < kw; ++kx) {
      for (int64_t ci = 0; ci < c; ++ci) {
        V<T> w[VB];
#pragma GCC unroll 4
        for (int64_t v = 0; v < VB; ++v) w[v] = load(packed + (((ky * kw + kx) * c + ci) * VB + v) * L);
        const T* channel = input_row + ci * xs[1];
#pragma GCC unroll 8
        for (int64_t p = 0; p < P; ++p) {
          const int64_t ix = (ox0 + p) * sw - pw + kx;
          if (CHECKED && (ix < 0 || ix >= iw)) continue;
          const T value = channel[ix * xs[3]];
#pragma GCC unroll 4
          for (int64_t v = 0; v < VB; ++v) acc[p][v] += value * w[v];
        }
      }
    }
  }
  T lanes[VB * L];
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t v = 0; v < VB; ++v) {
      V<T> value = acc[p][v];
      if (relu) value = value > V<T>{} ? value : V<T>{};
      std::memcpy(lanes + v * L, &value, sizeof(value));
    }
    std::memcpy(row + (ox0 + p) * co, lanes, co * sizeof(T));  // the real channels only
  }
}

}  // namespace

namespace {

template <bool MAX>
at::Tensor pool2d_nhwc(const char* name, const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, bool ceil_mode, bool count_include_pad) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              ": input must be a channels_last 4-D tensor, got sizes ", input.sizes(), " strides ", input.strides());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2, name,
              ": kernel_size, stride and padding need 2 values each");
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0 && stride[0] > 0 && stride[1] > 0, name, ": kernel_size ",
              kernel_size, " and stride ", stride, " must be positive");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && 2 * padding[0] <= kernel_size[0] &&
                  2 * padding[1] <= kernel_size[1],
              name, ": padding ", padding, " must be between 0 and half the kernel size ", kernel_size);
  const int64_t n = input.size(0), c = input.size(1), ih = input.size(2), iw = input.size(3);
  const int64_t oh = pooled_size(ih, kernel_size[0], stride[0], padding[0], ceil_mode),
                ow = pooled_size(iw, kernel_size[1], stride[1], padding[1], ceil_mode);
  TORCH_CHECK(oh > 0 && ow > 0, name, ": the output of input ", input.sizes(), " would be empty");
  at::Tensor output = at::empty({n, c, oh, ow}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_pool2d_nhwc", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* y = output.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, ow * c * kernel_size[0] * kernel_size[1]));
    at::parallel_for(0, n * oh, grain, [&](int64_t begin, int64_t end) {
      pool_rows<MAX>(x, y, c, ih, iw, oh, ow, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                     padding[1], count_include_pad, begin, end);
    });
  });
  return output;
}

}  // namespace

at::Tensor max_pool2d_nhwc(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode) {
  return pool2d_nhwc<true>("max_pool2d_nhwc", input, kernel_size, stride, padding, ceil_mode, false);
}

at::Tensor avg_pool2d_nhwc(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad) {
  return pool2d_nhwc<false>("avg_pool2d_nhwc", input, kernel_size, stride, padding, ceil_mode, count_include_pad);
}

at::Tensor linear_small_batch(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 2 && weight.dim() == 2 && input.size(1) == weight.size(1),
              "linear_small_batch: input (M, K) and weight (N, K) expected, got ", input.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "linear_small_batch: input and weight dtypes differ");
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  TORCH_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == w.size(0)), "linear_small_batch: bias must have ",
              w.size(0), " values");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  at::Tensor output = at::empty({m, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "groupconv_linear_small_batch", [&] {
    const scalar_t* bias_values = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    // (blocks of rows in multiples of 4, about 64 KB of weights each: enough to stream, and every thread gets some)
    const int64_t rows_per_block = std::max<int64_t>(4, (16384 / std::max<int64_t>(1, k)) / 4 * 4);
    const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      linear_rows(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias_values, output.data_ptr<scalar_t>(), m, k,
                  n, begin * rows_per_block, std::min(n, end * rows_per_block));
    });
  });
  return output;
}

at::Tensor few_channels_conv_nhwc(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, bool relu) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4 && weight.size(1) == input.size(1),
              "few_channels_conv_nhwc: input (N, C, H, W) and weight (M, C, kh, kw) expected, got ", input.sizes(),
              " and ", weight.sizes());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "few_channels_conv_nhwc: input and weight dtypes differ");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && stride[0] > 0 && stride[1] > 0 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "few_channels_conv_nhwc: stride ", stride, " and padding ", padding, " must be 2 positive and 2 "
              "non-negative values");
  const int64_t n = input.size(0), c = input.size(1), ih = input.size(2), iw = input.size(3);
  const int64_t co = weight.size(0), kh = weight.size(2), kw = weight.size(3);
  const int64_t oh = (ih + 2 * padding[0] - kh) / stride[0] + 1, ow = (iw + 2 * padding[1] - kw) / stride[1] + 1;
  TORCH_CHECK(ih + 2 * padding[0] >= kh && iw + 2 * padding[1] >= kw, "few_channels_conv_nhwc: the kernel ",
              weight.sizes().slice(2), " is larger than the padded input");
  at::Tensor output = at::empty({n, co, oh, ow}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_few_channels_conv_nhwc", [&] {
    using T = scalar_t;
    constexpr int64_t L = Vector<T>::size;
    const int64_t vb = (co + L - 1) / L;
    TORCH_CHECK(vb <= 4, "few_channels_conv_nhwc: at most ", 4 * L, " output channels, got ", co);
    // Filters [ky][kx][ci][vb * L], the output channels padded with zeros to whole vectors; the bias alike.
    const at::Tensor w = weight.contiguous();
    const T* wv = w.data_ptr<T>();
    std::vector<T> packed(kh * kw * c * vb * L, T(0)), padded_bias(vb * L, T(0));
    for (int64_t o = 0; o < co; ++o)
      for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t ky = 0; ky < kh; ++ky)
          for (int64_t kx = 0; kx < kw; ++kx)
            packed[((ky * kw + kx) * c + ci) * vb * L + o] = wv[((o * c + ci) * kh + ky) * kw + kx];
    const T* bias_values = nullptr;
    if (bias.has_value()) {
      const at::Tensor b = bias->contiguous();
      TORCH_CHECK(b.numel() == co, "few_channels_conv_nhwc: bias must have ", co, " values");
      std::copy(b.data_ptr<T>(), b.data_ptr<T>() + co, padded_bias.begin());
      bias_values = padded_bias.data();
    }
    const T* x = input.data_ptr<T>();
    const int64_t xs[4] = {input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
    T* y = output.data_ptr<T>();
    auto rows = [&](auto vb_constant) {
      constexpr int64_t VB = decltype(vb_constant)::value;
      at::parallel_for(0, n * oh, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t image = r / oh, oy = r % oh;
          T* row = y + r * ow * co;
          int64_t ox = 0;
          for (; ox + 8 <= ow; ox += 8) {
            if (ox * stride[1] - padding[1] >= 0 && (ox + 7) * stride[1] - padding[1] + kw <= iw)
              few_channels_pixels<T, 8, VB, false>(x, xs, packed.data(), bias_values, row, c, co, ih, iw, kh, kw,
                                                   stride[0], stride[1], padding[0], padding[1], image, oy, ox, relu);
            else
              few_channels_pixels<T, 8, VB, true>(x, xs, packed.data(), bias_values, row, c, co, ih, iw, kh, kw,
                                                  stride[0], stride[1], padding[0], padding[1], image, oy, ox, relu);
          }
          for (; ox < ow; ++ox)
            few_channels_pixels<T, 1, VB, true>(x, xs, packed.data(), bias_values, row, c, co, ih, iw, kh, kw,
                                                stride[0], stride[1], padding[0], padding[1], image, oy, ox, relu);
        }
      });
    };
    switch (vb) {
      case 1: rows(std::integral_constant<int64_t, 1>{}); break;
      case 2: rows(std::integral_constant<int64_t, 2>{}); break;
      case 3: rows(std::integral_constant<int64_t, 3>{}); break;
      default: rows(std::integral_constant<int64_t, 4>{}); break;
    }
  });
  return output;
}
