// Batch normalisation fused with what follows it in a conv block: y = relu(bn(x) + residual), the
// residual and the ReLU each optional; forward (training: batch statistics; eval: running ones) and
// backward, float32 and float64, contiguous (NC...) and channels_last tensors.
//
// Why: in training, torch runs BN, the residual add and the ReLU as separate passes over memory, and
// their backward likewise (threshold_backward, then BN's two passes); for a ShuffleNet g=8 step those
// memory-bound passes cost as much as all its convolutions. Fused, the forward reads x twice
// (statistics, then normalise) and writes y once; the backward reads grad and x twice and writes the
// input gradient once. The ReLU's mask is recomputed from x (and the residual) rather than stored:
// z = x * scale + shift (+ residual) is evaluated by the same expression in both directions, so the
// mask is the forward's exactly. Where the residual's gradient is asked for, the first pass writes it
// (the masked grad) and the second reads it in place of grad and the residual: 1.13-1.17x faster.
//
// Statistics: per channel, sums of (x - K) and (x - K)^2 with K one sample of the channel (shifting
// by a typical value keeps E[(x-K)^2] - E[x-K]^2 from cancelling when |mean| >> std), accumulated in
// the tensor's type over blocks of at most kBlock values (vectorised) and in double across blocks.
// Work is split with at::parallel_for (torch's thread count); per-thread partial sums are combined in
// a fixed order, so results do not depend on scheduling.

#include "batch_norm.h"
#include "layout.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kBlock = 1024;
constexpr int64_t kLanes = 16;

// contiguous: `batch` x `channels` planes of `pixels` values; channels_last: batch * pixels rows of
// `channels` values.
struct Shape {
  int64_t batch, channels, pixels;
  bool channels_last;
  int64_t per_channel() const { return batch * pixels; }
};

Shape shape_of(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "batch_norm: input needs a batch and a channel dimension, got shape ", x.sizes());
  const bool channels_last = is_channels_innermost(x);
  TORCH_CHECK(channels_last || x.is_contiguous(), "batch_norm: input must be contiguous or channels_last, strides ",
              x.strides());
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t pixels = batch * channels == 0 ? 0 : x.numel() / (batch * channels);
  return {batch, channels, pixels, channels_last};
}

// Whether a and b have the same sizes and lay out their values alike: the strides the kernels read. A dimension of
// size one is never stepped along, so its stride does not matter (a channels_last batch of one image has batch stride
// C*H*W or C, as it was made).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(same_layout(t, x) && t.scalar_type() == x.scalar_type(), "batch_norm: ",
              name, " must match the input's shape, strides and dtype: got ", t.sizes(), " ", t.strides(), " ",
              t.scalar_type(), " for input ", x.sizes(), " ", x.strides(), " ", x.scalar_type());
}

// Where the values of a tensor of the input's shape lie: value (n, c, pixel) at n * batch + c * channel + pixel *
// pixel, with the input layout's innermost dimension (the channels of a channels_last input, the pixels of a
// contiguous one) one apart, so that the kernels' inner loops read it as they read the input. The input and the
// tensors the kernels allocate are dense; the output gradient may be a view: a channel slice of a concatenation's
// gradient (ShuffleNet's downsampling units: read in place, where a copy cost 2.6 ms of a g=8 step at batch 32), or a
// global average pool's gradient, expanded over the pixels (pixel stride 0).
struct Addressing {
  int64_t batch, channel, pixel;
  // Whether rows (planes) lie at one stride from the first, images included (a dense tensor, a channel slice): then a
  // row's place takes no division, which costs 20% of a backward whose rows are short (24 channels).
  bool uniform;
  Addressing(const Shape& s, int64_t batch, int64_t channel, int64_t pixel)
      : batch(batch), channel(channel), pixel(pixel),
        uniform(s.channels_last ? batch == s.pixels * pixel : batch == s.channels * channel) {}
  // The first value of row r of a channels_last tensor (pixel r % pixels of image r / pixels), or of plane r of a
  // contiguous one (channel r % channels of image r / channels).
  int64_t row(const Shape& s, int64_t r) const {
    if (s.channels_last) return uniform ? r * pixel : r / s.pixels * batch + r % s.pixels * pixel;
    return uniform ? r * channel : r / s.channels * batch + r % s.channels * channel;
  }
  // Laid out as the input: a kernel then reads it at the input's indices, the code it had before views (a second
  // index per value cost 8% of a backward with 24 channels).
  bool dense(const Shape& s) const { return uniform && (s.channels_last ? pixel == s.channels : channel == s.pixels); }
};

Addressing dense_addressing(const Shape& s) {
  return s.channels_last ? Addressing(s, s.channels * s.pixels, 1, s.channels)
                         : Addressing(s, s.channels * s.pixels, s.pixels, 1);
}

// t's addressing where its strides have that form (same sizes as the input), else none.
c10::optional<Addressing> addressing_of(const at::Tensor& t, const Shape& s) {
  if (t.dim() < 2) return c10::nullopt;
  const int64_t batch = t.size(0) > 1 ? t.stride(0) : 0;
  int64_t channel = t.size(1) > 1 ? t.stride(1) : 0, pixel = 0;
  // The pixels (dimensions 2...) must collapse into one stride: each dimension's stride is the pixel stride times the
  // sizes of the dimensions inside it (dimensions of size 1 have no say).
  bool innermost = true;
  int64_t span = 1;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) == 1) continue;
    if (innermost) pixel = t.stride(d);
    else if (t.stride(d) != pixel * span) return c10::nullopt;
    innermost = false;
    span *= t.size(d);
  }
  if (s.channels_last ? (channel != 1 && s.channels > 1) : (pixel != 1 && s.pixels > 1)) return c10::nullopt;
  if (s.channels_last) channel = 1;
  else pixel = 1;
  return Addressing(s, batch, channel, pixel);
}

// t itself where the kernels can address it, else a dense copy in the input's layout.
std::pair<at::Tensor, Addressing> addressable(const at::Tensor& t, const at::Tensor& input, const Shape& s,
                                              const char* name) {
  TORCH_CHECK(t.sizes() == input.sizes() && t.scalar_type() == input.scalar_type(), "batch_norm: ", name,
              " must match the input's shape and dtype: got ", t.sizes(), " ", t.scalar_type(), " for input ",
              input.sizes(), " ", input.scalar_type());
  if (auto a = addressing_of(t, s)) return {t, *a};
  return {t.contiguous(input.suggest_memory_format()), dense_addressing(s)};
}

// Per channel c, the sums over all its values of a and b, where terms(i, j, c, a, b) sets a and b for the value at
// index i of a dense tensor (the input's layout) and j of the tensor that `other` addresses.
template <typename T, typename Terms>
void sum_per_channel(const Shape& s, const Addressing& other, const Terms& terms, std::vector<double>& sum_a,
                     std::vector<double>& sum_b) {
  const int64_t C = s.channels;
  sum_a.assign(C, 0.0);
  sum_b.assign(C, 0.0);
  if (!s.channels_last) {
    // One partial sum per plane, threads taking consecutive planes (a sequential read of memory),
    // then each channel's planes added in batch order.
    std::vector<double> plane_a(s.batch * C), plane_b(s.batch * C);
    at::parallel_for(0, s.batch * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.pixels)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C, first = plane * s.pixels, other_first = other.row(s, plane);
        double total_a = 0, total_b = 0;
        for (int64_t start = first; start < first + s.pixels; start += kBlock) {
          const int64_t stop = std::min(start + kBlock, first + s.pixels);
          // kLanes independent partial sums (what one vector register holds): the compiler vectorises
          // this shape of loop reliably, unlike an `omp simd reduction`, which measured 5x slower.
          T a[kLanes] = {}, b[kLanes] = {};
          int64_t i = start;
          for (; i + kLanes <= stop; i += kLanes)
            for (int64_t lane = 0; lane < kLanes; ++lane) {
              T ta, tb;
              terms(i + lane, other_first + (i + lane - first), c, ta, tb);
              a[lane] += ta;
              b[lane] += tb;
            }
          for (; i < stop; ++i) {
            T ta, tb;
            terms(i, other_first + (i - first), c, ta, tb);
            total_a += ta;
            total_b += tb;
          }
          for (int64_t lane = 0; lane < kLanes; ++lane) {
            total_a += a[lane];
            total_b += b[lane];
          }
        }
        plane_a[plane] = total_a;
        plane_b[plane] = total_b;
      }
    });
    for (int64_t n = 0; n < s.batch; ++n)
      for (int64_t c = 0; c < C; ++c) {
        sum_a[c] += plane_a[n * C + c];
        sum_b[c] += plane_b[n * C + c];
      }
    return;
  }
  const int64_t rows = s.per_channel();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<double> partial(parts * 2 * C, 0.0);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a(C), b(C);
    for (int64_t part = begin; part < end; ++part) {
      double* part_a = partial.data() + part * 2 * C;
      double* part_b = part_a + C;
      const int64_t first_row = rows * part / parts, last_row = rows * (part + 1) / parts;
      for (int64_t start = first_row; start < last_row; start += kBlock) {
        std::fill(a.begin(), a.end(), T(0));
        std::fill(b.begin(), b.end(), T(0));
        for (int64_t r = start; r < std::min(start + kBlock, last_row); ++r) {
          const int64_t row = r * C, other_row = other.row(s, r);
          T* pa = a.data();
          T* pb = b.data();
          #pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            T ta, tb;
            terms(row + c, other_row + c, c, ta, tb);
            pa[c] += ta;
            pb[c] += tb;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          part_a[c] += a[c];
          part_b[c] += b[c];
        }
      }
    }
  });
  for (int64_t part = 0; part < parts; ++part)
    for (int64_t c = 0; c < C; ++c) {
      sum_a[c] += partial[part * 2 * C + c];
      sum_b[c] += partial[part * 2 * C + C + c];
    }
}

// op(i, j, c) for every value (of channel c), at index i of a dense tensor and j of the tensor that `other`
// addresses, each value by one thread.
template <typename Op>
void for_each_value(const Shape& s, const Addressing& other, const Op& op) {
  const int64_t C = s.channels;
  if (!s.channels_last) {
    at::parallel_for(0, s.batch * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.pixels)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t plane = begin; plane < end; ++plane) {
                         const int64_t c = plane % C, first = plane * s.pixels;
                         const int64_t shift = other.row(s, plane) - first;
                         #pragma omp simd
                         for (int64_t i = first; i < first + s.pixels; ++i) op(i, i + shift, c);
                       }
                     });
    return;
  }
  at::parallel_for(0, s.per_channel(), std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       const int64_t row = r * C, other_row = other.row(s, r);
                       #pragma omp simd
                       for (int64_t c = 0; c < C; ++c) op(row + c, other_row + c, c);
                     }
                   });
}

// The per-channel scale and shift of the normalisation, from the (saved) mean and invstd: computed by
// this one function in both directions, so that the backward's recomputed ReLU mask is the forward's.
template <typename T>
void affine_coefficients(const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                         const at::Tensor& bias, std::vector<T>& scale, std::vector<T>& shift) {
  const int64_t C = mean.numel();
  const T* m = mean.data_ptr<T>();
  const T* s = invstd.data_ptr<T>();
  const T* w = weight.defined() ? weight.data_ptr<T>() : nullptr;
  const T* b = bias.defined() ? bias.data_ptr<T>() : nullptr;
  scale.resize(C);
  shift.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = (w ? w[c] : T(1)) * s[c];
    shift[c] = (b ? b[c] : T(0)) - m[c] * scale[c];
  }
}

// bn(x) (+ residual) at value i of channel c: the one expression both directions evaluate.
template <typename T, bool Residual>
inline T pre_activation(const T* x, const T* r, const T* scale, const T* shift, int64_t i, int64_t c) {
  const T z = x[i] * scale[c] + shift[c];
  if constexpr (Residual) return z + r[i];
  return z;
}

// f(relu, residual) with each flag a compile-time constant (std::bool_constant), so that the inner loops
// carry no branches and vectorise.
template <typename F>
void with_flags(bool relu, bool residual, const F& f) {
  if (relu && residual) f(std::true_type{}, std::true_type{});
  else if (relu) f(std::true_type{}, std::false_type{});
  else if (residual) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

}  // namespace

std::vector<at::Tensor> batch_norm_forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight_opt,
                                           const c10::optional<at::Tensor>& bias_opt,
                                           const c10::optional<at::Tensor>& residual_opt,
                                           const c10::optional<at::Tensor>& running_mean_opt,
                                           const c10::optional<at::Tensor>& running_var_opt, bool training,
                                           double eps, bool relu, const c10::optional<at::Tensor>& concat_opt) {
  const Shape s = shape_of(input);
  const at::Tensor weight = contiguous_or_undefined(weight_opt), bias = contiguous_or_undefined(bias_opt);
  const at::Tensor residual = residual_opt.has_value() ? *residual_opt : at::Tensor();
  if (residual.defined()) check_like(residual, input, "residual");
  const int64_t C = s.channels;
  const auto options = input.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({C}, options), invstd = at::empty({C}, options), var = at::empty({C}, options);
  // With `concat`, the output is cat((result, concat), 1): the result is written into its channels directly.
  const at::Tensor concat = concat_opt.has_value() ? *concat_opt : at::Tensor();
  at::Tensor output = at::empty_like(input);  // the input's layout
  if (concat.defined()) {
    TORCH_CHECK(concat.dim() == input.dim() && concat.size(0) == input.size(0) &&
                    concat.sizes().slice(2) == input.sizes().slice(2) && concat.scalar_type() == input.scalar_type(),
                "batch_norm: concat must have the input's batch, spatial size and dtype: got ", concat.sizes(), " ",
                concat.scalar_type(), " for input ", input.sizes(), " ", input.scalar_type());
    std::vector<int64_t> sizes = input.sizes().vec();
    sizes[1] += concat.size(1);
    const auto layout = !s.channels_last ? at::MemoryFormat::Contiguous
                        : input.dim() == 5   ? at::MemoryFormat::ChannelsLast3d
                                             : at::MemoryFormat::ChannelsLast;
    output = at::empty(sizes, input.options().memory_format(layout));
    output.narrow(1, C, concat.size(1)).copy_(concat);
  }
  const at::Tensor result = concat.defined() ? output.narrow(1, 0, C) : output;
  const Addressing y_addressing = concat.defined() ? *addressing_of(result, s) : dense_addressing(s);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_batch_norm_forward", [&] {
    using T = scalar_t;
    const T* x = input.data_ptr<T>();
    if (training) {
      const int64_t count = s.per_channel();
      TORCH_CHECK(count > 1, "batch_norm: training needs more than one value per channel, got input shape ",
                  input.sizes());
      // K[c]: the channel's first value, the shift that keeps the one-pass variance accurate.
      std::vector<T> first(C);
      for (int64_t c = 0; c < C; ++c) first[c] = s.channels_last ? x[c] : x[c * s.pixels];
      const T* K = first.data();
      std::vector<double> sum, sum_squares;
      sum_per_channel<T>(s, dense_addressing(s), [=](int64_t i, int64_t, int64_t c, T& a, T& b) {
        const T d = x[i] - K[c];
        a = d;
        b = d * d;
      }, sum, sum_squares);
      T* m = mean.data_ptr<T>();
      T* v = var.data_ptr<T>();
      T* is = invstd.data_ptr<T>();
      for (int64_t c = 0; c < C; ++c) {
        const double shifted_mean = sum[c] / count;
        const double variance = std::max(0.0, sum_squares[c] / count - shifted_mean * shifted_mean);
        m[c] = static_cast<T>(K[c] + shifted_mean);
        v[c] = static_cast<T>(variance);
        is[c] = static_cast<T>(1.0 / std::sqrt(variance + eps));
      }
    } else {
      TORCH_CHECK(running_mean_opt.has_value() && running_var_opt.has_value(),
                  "batch_norm: eval mode needs running_mean and running_var");
      mean.copy_(*running_mean_opt);
      var.copy_(*running_var_opt);
      invstd.copy_(at::rsqrt(running_var_opt->to(at::kDouble) + eps));
    }
    std::vector<T> scale_values, shift_values;
    affine_coefficients<T>(mean, invstd, weight, bias, scale_values, shift_values);
    const T* scale = scale_values.data();
    const T* shift = shift_values.data();
    const T* r = residual.defined() ? residual.data_ptr<T>() : nullptr;
    T* y = result.data_ptr<T>();
    with_flags(relu, r != nullptr, [&](auto relu_flag, auto residual_flag) {
      constexpr bool Relu = decltype(relu_flag)::value, Residual = decltype(residual_flag)::value;
      for_each_value(s, y_addressing, [=](int64_t i, int64_t j, int64_t c) {
        const T z = pre_activation<T, Residual>(x, r, scale, shift, i, c);
        y[j] = Relu ? std::max(z, T(0)) : z;
      });
    });
  });
  return {output, mean, invstd, var};
}

std::vector<at::Tensor> batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const c10::optional<at::Tensor>& weight_opt,
                                            const c10::optional<at::Tensor>& bias_opt,
                                            const c10::optional<at::Tensor>& residual_opt, const at::Tensor& mean,
                                            const at::Tensor& invstd, bool training, bool relu,
                                            bool residual_grad) {
  const Shape s = shape_of(input);
  const std::pair<at::Tensor, Addressing> addressed = addressable(grad_output, input, s, "grad_output");
  const at::Tensor& grad = addressed.first;  // (the output gradient, at the indices its addressing gives)
  const Addressing dy_addressing = addressed.second;
  const at::Tensor weight = contiguous_or_undefined(weight_opt), bias = contiguous_or_undefined(bias_opt);
  const at::Tensor residual = residual_opt.has_value() ? *residual_opt : at::Tensor();
  if (residual.defined()) check_like(residual, input, "residual");
  const int64_t C = s.channels;
  at::Tensor grad_input = at::empty_like(input);
  // The residual's gradient is the masked output gradient: written when asked for (with a ReLU; without one
  // it is grad_output itself, which the caller has).
  TORCH_CHECK(!residual_grad || (relu && residual.defined()), "batch_norm: residual_grad needs a residual and relu");
  at::Tensor grad_residual = residual_grad ? at::empty_like(input) : at::empty({0}, input.options());
  const auto options = input.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_weight = at::empty({C}, options), grad_bias = at::empty({C}, options);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_batch_norm_backward", [&] {
    using T = scalar_t;
    const T* x = input.data_ptr<T>();
    const T* dy = grad.data_ptr<T>();
    const T* r = residual.defined() ? residual.data_ptr<T>() : nullptr;
    const T* m = mean.data_ptr<T>();
    const T* is = invstd.data_ptr<T>();
    std::vector<T> scale_values, shift_values;
    affine_coefficients<T>(mean, invstd, weight, bias, scale_values, shift_values);
    const T* scale = scale_values.data();
    const T* shift = shift_values.data();
    const double count = static_cast<double>(s.per_channel());
    T* dx = grad_input.data_ptr<T>();
    T* dr = residual_grad ? grad_residual.data_ptr<T>() : nullptr;
    T* dw = grad_weight.data_ptr<T>();
    T* db = grad_bias.data_ptr<T>();
    auto body = [&](auto relu_flag, auto residual_flag, auto strided_flag) {
      constexpr bool Relu = decltype(relu_flag)::value, Residual = decltype(residual_flag)::value;
      constexpr bool Strided = decltype(strided_flag)::value;
      // g: the gradient reaching bn(x) (+ residual): the output gradient where the ReLU passed it (dy at j, the index
      // its addressing gives, where it is a view).
      auto masked = [=](int64_t i, int64_t j, int64_t c) -> T {
        const T gradient = dy[Strided ? j : i];  // read unconditionally: a conditional load would not vectorise
        if constexpr (!Relu) return gradient;
        return pre_activation<T, Residual>(x, r, scale, shift, i, c) > T(0) ? gradient : T(0);
      };
      std::vector<double> sum_g, sum_g_centered;
      // The residual's gradient is g itself: written in this pass, it is what the next pass reads in place of the
      // output gradient and the residual (5 passes over memory instead of 6, and no second ReLU mask).
      auto sums = [&](auto writes_residual_grad) {
        sum_per_channel<T>(s, dy_addressing, [=](int64_t i, int64_t j, int64_t c, T& a, T& b) {
          const T g = masked(i, j, c);
          if constexpr (decltype(writes_residual_grad)::value) dr[i] = g;
          a = g;
          b = g * (x[i] - m[c]);
        }, sum_g, sum_g_centered);
      };
      if (dr) sums(std::true_type{});
      else sums(std::false_type{});
      // dx = scale * (g - mean(g) - xhat * mean(g * xhat)) in training; scale * g with running statistics.
      std::vector<T> centered_coefficient(C, T(0)), offset(C, T(0));
      for (int64_t c = 0; c < C; ++c) {
        db[c] = static_cast<T>(sum_g[c]);
        dw[c] = static_cast<T>(sum_g_centered[c] * is[c]);
        if (training) {
          centered_coefficient[c] = static_cast<T>(scale[c] * double(is[c]) * is[c] * sum_g_centered[c] / count);
          offset[c] = static_cast<T>(scale[c] * sum_g[c] / count);
        }
      }
      const T* k = centered_coefficient.data();
      const T* o = offset.data();
      if (dr)
        for_each_value(s, dense_addressing(s),
                       [=](int64_t i, int64_t, int64_t c) { dx[i] = scale[c] * dr[i] - k[c] * (x[i] - m[c]) - o[c]; });
      else
        for_each_value(s, dy_addressing, [=](int64_t i, int64_t j, int64_t c) {
          dx[i] = scale[c] * masked(i, j, c) - k[c] * (x[i] - m[c]) - o[c];
        });
    };
    const bool strided = !dy_addressing.dense(s);
    with_flags(relu, r != nullptr, [&](auto relu_flag, auto residual_flag) {
      if (strided) body(relu_flag, residual_flag, std::true_type{});
      else body(relu_flag, residual_flag, std::false_type{});
    });
  });
  return {grad_input, grad_weight, grad_bias, grad_residual};
}
