// Small inference-time ops for CPU (see inference_ops.h).
//
// Max pooling: torch's channels_last max_pool2d computes the indices too and vectorises poorly over few channels:
// ShuffleNet's first pool (24 channels, 112x112 -> 56x56) took about 250 us at batch 1, where reading its 1.2 MB
// takes 40. Here each output pixel's channels are a short loop the compiler vectorises, the rows split between the
// threads.
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

// The maximum over a window of one vector (or half vector) of channels at `offset`, held in a register.
template <typename W, typename T>
inline void max_pool_vector(const T* x, T* out, int64_t offset, int64_t c, int64_t n, int64_t ih, int64_t iw,
                            int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  W m = W{} - std::numeric_limits<T>::infinity();
  for (int64_t iy = y0; iy < y1; ++iy)
    for (int64_t ix = x0; ix < x1; ++ix) {
      W v;
      std::memcpy(&v, x + ((n * ih + iy) * iw + ix) * c + offset, sizeof(v));
      m = (v > m) | (v != v) ? v : m;  // (a NaN, once taken, stays: nothing compares above it)
    }
  std::memcpy(out + offset, &m, sizeof(m));
}

template <typename T>
void max_pool_rows(const T* x, T* y, int64_t c, int64_t ih, int64_t iw, int64_t oh, int64_t ow, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t begin, int64_t end) {
  constexpr int64_t L = Vector<T>::size;
  typedef T Half __attribute__((vector_size(Vector<T>::bytes / 2)));
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / oh, oy = row % oh;
    const int64_t y0 = std::max<int64_t>(0, oy * sh - ph), y1 = std::min(ih, oy * sh - ph + kh);
    for (int64_t ox = 0; ox < ow; ++ox) {
      const int64_t x0 = std::max<int64_t>(0, ox * sw - pw), x1 = std::min(iw, ox * sw - pw + kw);
      T* out = y + ((n * oh + oy) * ow + ox) * c;
      int64_t k = 0;
      for (; k + L <= c; k += L) max_pool_vector<V<T>>(x, out, k, c, n, ih, iw, y0, y1, x0, x1);
      for (; k + L / 2 <= c; k += L / 2) max_pool_vector<Half>(x, out, k, c, n, ih, iw, y0, y1, x0, x1);
      for (; k < c; ++k) {
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) {
            const T v = x[((n * ih + iy) * iw + ix) * c + k];
            m = (v > m || v != v) ? v : m;
          }
        out[k] = m;
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

}  // namespace

at::Tensor max_pool2d_nhwc(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast),
              "max_pool2d_nhwc: input must be a channels_last 4-D tensor, got sizes ", input.sizes(), " strides ",
              input.strides());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "max_pool2d_nhwc: kernel_size, stride and padding need 2 values each");
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0 && stride[0] > 0 && stride[1] > 0,
              "max_pool2d_nhwc: kernel_size ", kernel_size, " and stride ", stride, " must be positive");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && 2 * padding[0] <= kernel_size[0] &&
                  2 * padding[1] <= kernel_size[1],
              "max_pool2d_nhwc: padding ", padding, " must be between 0 and half the kernel size ", kernel_size);
  const int64_t n = input.size(0), c = input.size(1), ih = input.size(2), iw = input.size(3);
  const int64_t oh = pooled_size(ih, kernel_size[0], stride[0], padding[0], ceil_mode),
                ow = pooled_size(iw, kernel_size[1], stride[1], padding[1], ceil_mode);
  TORCH_CHECK(oh > 0 && ow > 0, "max_pool2d_nhwc: the output of input ", input.sizes(), " would be empty");
  at::Tensor output = at::empty({n, c, oh, ow}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_max_pool2d_nhwc", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* y = output.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, ow * c * kernel_size[0] * kernel_size[1]));
    at::parallel_for(0, n * oh, grain, [&](int64_t begin, int64_t end) {
      max_pool_rows(x, y, c, ih, iw, oh, ow, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                    padding[1], begin, end);
    });
  });
  return output;
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
