// Grouped convolution with narrow groups on channels_last (NHWC) tensors: CPG = 1 (depthwise) to 16 input channels
// per group and as many outputs (ResNeXt's 3x3 convs: 32 groups of 4, 8 or 16; MobileNet's depthwise ones), kernel
// width 3, row stride 1 or 2, dilation 1. Forward, input gradient (stride 1, or 2 both ways) and weight gradient;
// float32, float64. (native.py runs a depthwise conv that reads through a shuffle here too, paying the shuffle on
// the output.)
//
// Why: oneDNN runs ResNeXt-29's grouped 3x3 convs at about a fifth of the machine's multiply-add rate in
// channels_last (a group of 4 channels is too narrow for its blocked kernels), forward and backward; with CPG = 1 (no
// rotations) the same register blocking runs MobileNet's depthwise layers 1.3-1.6x faster than oneDNN.
//
// How: a vector register holds the channels of one pixel, L of them (64 bytes: 16 floats), i.e. L/CPG whole groups.
// Output channel o of the group starting at channel b reads input channels b .. b+CPG-1. Write rot_r(x) for the
// vector x with each group's lanes rotated by r (lane o takes lane b + (o - b + r) % CPG: one in-register shuffle).
// Then
//     y[o] = sum over taps t, r < CPG of  rot_r(x_t)[o] * w[o, (o - b + r) % CPG, t]
// so every multiply-add is a full-width vector FMA against a packed weight vector, and the CPG - 1 shuffles of an
// input pixel serve all the taps that read it (each input column feeds up to three output columns of a row). The
// weight gradient is the same sum with the output gradient in place of the weights:
//     dW'[t, r][o] = sum over pixels p of  rot_r(x_{p+t})[o] * dy_p[o],   then unpacked to w's layout.
//
// Work split: the forward and the input gradient (at stride 1 a forward of the output gradient with the adjoint
// filters, at stride 2 a gather through them) over the rows they write, each element written by one thread; the
// weight gradient over fixed chunks of rows, summed in chunk order. Results do not depend on the thread count. The
// kernels work on one block of L channels at a time and bring each row into cache with a sequential pass first
// (layout.h's touch): without it they ran at half the speed on a 32x128x32x32 input than on one that fits in cache.

#include "narrow_nhwc.h"

#include "layout.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <variant>
#include <vector>

namespace {

constexpr int64_t KW = 3;  // the kernel width the column reuse is written for

template <typename T>
using V = typename Vector<T>::type;

template <typename T>
inline V<T> load(const T* source) {
  V<T> v;
  std::memcpy(&v, source, sizeof(v));  // an unaligned vector load
  return v;
}

template <typename T>
inline void store(T* destination, const V<T>& v) {
  std::memcpy(destination, &v, sizeof(v));
}

// Each group of CPG lanes rotated by R: lane o takes lane (o & -CPG) | ((o + R) % CPG). A constant mask: one shuffle.
template <typename T, int64_t CPG, int64_t R, size_t... LANE>
inline V<T> rotated(const V<T>& x, std::index_sequence<LANE...>) {
  using Index = typename Vector<T>::Index;
  const typename Vector<T>::Mask mask = {static_cast<Index>((LANE & ~(CPG - 1)) | ((LANE + R) & (CPG - 1)))...};
  return __builtin_shuffle(x, mask);
}

// out[j] = rot_{R0 + j}(x) for the RB rotations of one pass.
template <typename T, int64_t CPG, int64_t R0, size_t... J>
inline void rotations(const V<T>& x, V<T>* out, std::index_sequence<J...>) {
  ((out[J] = rotated<T, CPG, R0 + J>(x, std::make_index_sequence<Vector<T>::size>{})), ...);
}

struct Shape {
  int64_t n, c, ih, iw, oh, ow, kh, sh, ph, pw;  // the row stride (sw) is a template parameter
};

// Rotations per pass: the forward holds RB of them, their KW x RB filter vectors and 8 accumulators in registers, the
// weight gradient a window of KW x RB rotations and KW x RB accumulators (AVX-512 has 32 vector registers).
template <int64_t CPG>
constexpr int64_t ROTATIONS_PER_PASS = CPG < 4 ? CPG : 4;

// Packed filters, [channel block][ky][kx][r][lane]: lane o of block cb holds w[o, (o - b + r) % CPG, ky, kx] for
// channel o = cb * L + lane; the adjoint (for the input gradient) holds w[b + (o - b + r) % CPG, o - b, flipped tap].
template <typename T>
std::vector<T> pack(const T* w, int64_t c, int64_t cpg, int64_t kh, bool adjoint) {
  constexpr int64_t L = Vector<T>::size;
  const int64_t blocks = (c + L - 1) / L;  // (a depthwise conv's last block padded with zero filters)
  TORCH_CHECK(cpg >= 1 && cpg <= L && (cpg & (cpg - 1)) == 0 && c % cpg == 0,
              "narrow NHWC kernel: channels per group must be a power of two up to ", L, ", got ", cpg, " (of ", c,
              " channels)");
  std::vector<T> packed(blocks * L * kh * KW * cpg, T(0));
  T* out = packed.data();
  for (int64_t cb = 0; cb < blocks; ++cb)
    for (int64_t ky = 0; ky < kh; ++ky)
      for (int64_t kx = 0; kx < KW; ++kx)
        for (int64_t r = 0; r < cpg; ++r)
          for (int64_t lane = 0; lane < L; ++lane, ++out) {
            // (cpg is a power of two: masks, not divisions, which made packing cost as much as a small conv)
            const int64_t o = cb * L + lane, local = o & (cpg - 1), base = o - local, other = (local + r) & (cpg - 1);
            if (o >= c) continue;
            *out = adjoint ? w[((base + other) * cpg + local) * kh * KW + (kh - 1 - ky) * KW + (KW - 1 - kx)]
                           : w[(o * cpg + other) * kh * KW + ky * KW + kx];
          }
  return packed;
}

// ---------------------------------------------------------------------------------------------------- forward
// The channels a forward reads and writes in one block: all L of a whole block, or, for a depthwise conv's last block
// where C is not a multiple of L (ShuffleNet g=1's 36 and 72 channels, g=3's 60 and 120), the first `count`, with
// masked loads and stores (no read or write past them; the packed filters are zero past them).
template <typename T, bool PARTIAL>
inline V<T> load_block(const T* source, int64_t count) {
  if constexpr (PARTIAL) return load_first<V<T>>(source, count);
  return load(source);
}

// One pass (rotations R0 .. R0 + RB - 1) of output columns ox0 .. ox0 + P - 1 of a row over the input row `row`
// (channel block already applied): input column j of the span feeds output column p through tap kx = j - p * SW.
template <typename T, int64_t CPG, int64_t SW, int64_t P, int64_t R0, bool PARTIAL>
inline void forward_pass(V<T> (&acc)[P], const T* row, const T* filters, int64_t ix0, const Shape& s, int64_t count) {
  constexpr int64_t L = Vector<T>::size, RB = ROTATIONS_PER_PASS<CPG>, SPAN = (P - 1) * SW + KW;
  V<T> w[KW][RB];
#pragma GCC unroll 4
  for (int64_t kx = 0; kx < KW; ++kx)
#pragma GCC unroll 16
    for (int64_t r = 0; r < RB; ++r) w[kx][r] = load(filters + (kx * CPG + R0 + r) * L);
#pragma GCC unroll 64
  for (int64_t j = 0; j < SPAN; ++j) {
    const int64_t ix = ix0 + j;
    if (ix < 0 || ix >= s.iw) continue;  // zero padding
    V<T> rot[RB];
    rotations<T, CPG, R0>(load_block<T, PARTIAL>(row + ix * s.c, count), rot, std::make_index_sequence<RB>{});
#pragma GCC unroll 4
    for (int64_t kx = 0; kx < KW; ++kx) {
      if (j < kx || (j - kx) % SW != 0 || (j - kx) / SW >= P) continue;
#pragma GCC unroll 16
      for (int64_t r = 0; r < RB; ++r) acc[(j - kx) / SW] += rot[r] * w[kx][r];
    }
  }
}

// Output columns ox0 .. ox0 + P - 1 of row oy, channel block cb (its first `count` channels where PARTIAL), with the
// ReLU applied as they are stored where `relu`.
template <typename T, int64_t CPG, int64_t SW, int64_t P, bool PARTIAL, size_t... PASS>
inline void forward_columns(const T* x, const T* packed, const T* bias, T* y, const Shape& s, int64_t n, int64_t oy,
                            int64_t cb, int64_t ox0, int64_t count, bool relu, std::index_sequence<PASS...>) {
  constexpr int64_t L = Vector<T>::size, RB = ROTATIONS_PER_PASS<CPG>;
  V<T> acc[P];
  const V<T> init = bias ? load_block<T, PARTIAL>(bias + cb * L, count) : V<T>{};
#pragma GCC unroll 16
  for (int64_t p = 0; p < P; ++p) acc[p] = init;
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    const int64_t iy = oy * s.sh - s.ph + ky;
    if (iy < 0 || iy >= s.ih) continue;
    const T* row = x + (n * s.ih + iy) * s.iw * s.c + cb * L;
    const T* filters = packed + (cb * s.kh + ky) * KW * CPG * L;
    (forward_pass<T, CPG, SW, P, PASS * RB, PARTIAL>(acc, row, filters, ox0 * SW - s.pw, s, count), ...);
  }
  if (relu) {
#pragma GCC unroll 16
    for (int64_t p = 0; p < P; ++p) acc[p] = acc[p] > V<T>{} ? acc[p] : V<T>{};
  }
  T* out = y + ((n * s.oh + oy) * s.ow + ox0) * s.c + cb * L;
#pragma GCC unroll 16
  for (int64_t p = 0; p < P; ++p) {
    if constexpr (PARTIAL) store_first(out + p * s.c, acc[p], count);
    else store(out + p * s.c, acc[p]);
  }
}

// One output row's columns of channel block cb, 8, then 4, then 1 at a time.
template <typename T, int64_t CPG, int64_t SW, bool PARTIAL, typename Passes>
inline void forward_row_block(const T* x, const T* packed, const T* bias, T* y, const Shape& s, int64_t n, int64_t oy,
                              int64_t cb, int64_t count, bool relu, Passes passes) {
  int64_t ox = 0;
  for (; ox + 8 <= s.ow; ox += 8)
    forward_columns<T, CPG, SW, 8, PARTIAL>(x, packed, bias, y, s, n, oy, cb, ox, count, relu, passes);
  for (; ox + 4 <= s.ow; ox += 4)
    forward_columns<T, CPG, SW, 4, PARTIAL>(x, packed, bias, y, s, n, oy, cb, ox, count, relu, passes);
  for (; ox < s.ow; ++ox)
    forward_columns<T, CPG, SW, 1, PARTIAL>(x, packed, bias, y, s, n, oy, cb, ox, count, relu, passes);
}

// `packed`: pack()'s filters (a depthwise conv's last block padded with zero filters); `relu`: the ReLU applied as
// the output is written.
template <typename T, int64_t CPG, int64_t SW>
void forward(const T* x, const T* packed, const T* bias, T* y, const Shape& s, bool relu) {
  constexpr int64_t L = Vector<T>::size;
  const auto passes = std::make_index_sequence<CPG / ROTATIONS_PER_PASS<CPG>>{};
  const int64_t whole_blocks = s.c / L, left = s.c - whole_blocks * L;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, s.ow * s.c * CPG * s.kh * KW));
  at::parallel_for(0, s.n * s.oh, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / s.oh, oy = row % s.oh;
      // The block loop below reads every row a block of channels at a time: bring the rows in sequentially first.
      for (int64_t iy = std::max<int64_t>(0, oy * s.sh - s.ph); iy < std::min(s.ih, oy * s.sh - s.ph + s.kh); ++iy)
        touch(x + (n * s.ih + iy) * s.iw * s.c, s.iw * s.c);
      touch(static_cast<const T*>(y + row * s.ow * s.c), s.ow * s.c);
      for (int64_t cb = 0; cb < whole_blocks; ++cb)
        forward_row_block<T, CPG, SW, false>(x, packed, bias, y, s, n, oy, cb, L, relu, passes);
      if constexpr (CPG == 1) {  // (only a depthwise conv may leave a partial block: check_whole_blocks)
        if (left) forward_row_block<T, CPG, SW, true>(x, packed, bias, y, s, n, oy, whole_blocks, left, relu, passes);
      }
    }
  });
}

// ---------------------------------------------------------------------------------- input gradient, stride 2
// At stride 1 the input gradient is a forward conv (the entry below). At stride 2 it gathers, for input column ix,
// the output columns ox with ix = 2 ox - pw + kx: blocks of P input columns start where ix0 + pw is even, so that
// output column ox0 + j (ox0 = (ix0 + pw) / 2 - 1) feeds block column p = 2 j + kx - 2 through tap kx, a fixed
// pattern the compiler unrolls; each output-gradient pixel is rotated once for the taps that read it. `filters` are
// the adjoint ones of tap row ky (flipped: tap kx at KW - 1 - kx).
template <typename T, int64_t CPG, int64_t P, int64_t R0>
inline void stride_2_input_pass(V<T> (&acc)[P], const T* grad_row, const T* filters, int64_t ox0, const Shape& s) {
  constexpr int64_t L = Vector<T>::size, RB = ROTATIONS_PER_PASS<CPG>, SPAN = P / 2 + 1;
  V<T> w[KW][RB];
#pragma GCC unroll 4
  for (int64_t kx = 0; kx < KW; ++kx)
#pragma GCC unroll 16
    for (int64_t r = 0; r < RB; ++r) w[kx][r] = load(filters + ((KW - 1 - kx) * CPG + R0 + r) * L);
#pragma GCC unroll 16
  for (int64_t j = 0; j < SPAN; ++j) {
    const int64_t ox = ox0 + j;
    if (ox < 0 || ox >= s.ow) continue;
    V<T> rot[RB];
    rotations<T, CPG, R0>(load(grad_row + ox * s.c), rot, std::make_index_sequence<RB>{});
#pragma GCC unroll 4
    for (int64_t kx = 0; kx < KW; ++kx) {
      if (2 * j + kx - 2 < 0 || 2 * j + kx - 2 >= P) continue;
#pragma GCC unroll 16
      for (int64_t r = 0; r < RB; ++r) acc[2 * j + kx - 2] += rot[r] * w[kx][r];
    }
  }
}

// s: the conv's geometry (input = the gradient computed here, output = grad); packed: the adjoint filters.
template <typename T, int64_t CPG, size_t... PASS>
void stride_2_input_gradient(const T* grad, const T* packed, T* grad_in, const Shape& s,
                             std::index_sequence<PASS...>) {
  constexpr int64_t L = Vector<T>::size, RB = ROTATIONS_PER_PASS<CPG>, P = 8;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, s.iw * s.c * CPG * s.kh * KW / 4));
  at::parallel_for(0, s.n * s.ih, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / s.ih, iy = row % s.ih;
      for (int64_t ky = 0; ky < s.kh; ++ky) {  // the output rows this row reads: bring them in sequentially
        const int64_t t = iy + s.ph - ky;
        if (t >= 0 && t % 2 == 0 && t / 2 < s.oh) touch(grad + (n * s.oh + t / 2) * s.ow * s.c, s.ow * s.c);
      }
      T* out_row = grad_in + row * s.iw * s.c;
      touch(static_cast<const T*>(out_row), s.iw * s.c);
      for (int64_t cb = 0; cb < s.c / L; ++cb)
        for (int64_t ix0 = -(s.pw % 2); ix0 < s.iw; ix0 += P) {
          V<T> acc[P];
#pragma GCC unroll 16
          for (int64_t p = 0; p < P; ++p) acc[p] = V<T>{};
          for (int64_t ky = 0; ky < s.kh; ++ky) {
            const int64_t t = iy + s.ph - ky;
            if (t < 0 || t % 2 != 0 || t / 2 >= s.oh) continue;
            const T* grad_row = grad + (n * s.oh + t / 2) * s.ow * s.c + cb * L;
            const T* filters = packed + (cb * s.kh + s.kh - 1 - ky) * KW * CPG * L;
            (stride_2_input_pass<T, CPG, P, PASS * RB>(acc, grad_row, filters, (ix0 + s.pw) / 2 - 1, s), ...);
          }
          for (int64_t p = std::max<int64_t>(0, -ix0); p < std::min(P, s.iw - ix0); ++p)
            store(out_row + (ix0 + p) * s.c + cb * L, acc[p]);
        }
    }
  });
}

// -------------------------------------------------------------------------------------------- weight gradient
// One pass (rotations R0 .. R0 + RB - 1) over output row (n, oy) and the input row under tap row ky: a window holds
// the rotations of the three input columns under output column ox (input columns ox * SW - pw + kx), so that each is
// shuffled once however many taps read it.
template <typename T, int64_t CPG, int64_t SW, int64_t R0>
inline void gradient_pass(T* sums, const T* row, const T* grad_row, const Shape& s) {
  constexpr int64_t L = Vector<T>::size, RB = ROTATIONS_PER_PASS<CPG>;
  V<T> acc[KW][RB], window[KW][RB];
#pragma GCC unroll 4
  for (int64_t kx = 0; kx < KW; ++kx)
#pragma GCC unroll 16
    for (int64_t r = 0; r < RB; ++r) acc[kx][r] = load(sums + (kx * CPG + R0 + r) * L);
  auto rotate_column = [&](int64_t ix, V<T>* out) {
    if (ix < 0 || ix >= s.iw) {  // zero padding
#pragma GCC unroll 16
      for (int64_t r = 0; r < RB; ++r) out[r] = V<T>{};
    } else {
      rotations<T, CPG, R0>(load(row + ix * s.c), out, std::make_index_sequence<RB>{});
    }
  };
  // Before output column 0 the window's last KW - SW columns hold input columns -pw .. -pw + KW - SW - 1.
#pragma GCC unroll 4
  for (int64_t kx = SW; kx < KW; ++kx) rotate_column(kx - SW - s.pw, window[kx]);
  for (int64_t ox = 0; ox < s.ow; ++ox) {
#pragma GCC unroll 4
    for (int64_t kx = 0; kx < KW - SW; ++kx)
#pragma GCC unroll 16
      for (int64_t r = 0; r < RB; ++r) window[kx][r] = window[kx + SW][r];
#pragma GCC unroll 4
    for (int64_t kx = KW - SW; kx < KW; ++kx) rotate_column(ox * SW - s.pw + kx, window[kx]);
    const V<T> dy = load(grad_row + ox * s.c);
#pragma GCC unroll 4
    for (int64_t kx = 0; kx < KW; ++kx)
#pragma GCC unroll 16
      for (int64_t r = 0; r < RB; ++r) acc[kx][r] += window[kx][r] * dy;
  }
#pragma GCC unroll 4
  for (int64_t kx = 0; kx < KW; ++kx)
#pragma GCC unroll 16
    for (int64_t r = 0; r < RB; ++r) store(sums + (kx * CPG + R0 + r) * L, acc[kx][r]);
}

// Output rows are summed in chunks, each into its own partial gradient, and the partials added in chunk order: the
// chunks depend on the shape alone (at most 16, of at least 8 rows), so results do not depend on the thread count.
constexpr int64_t MAX_GRADIENT_CHUNKS = 16, MIN_GRADIENT_CHUNK_ROWS = 8;

template <typename T, int64_t CPG, int64_t SW, size_t... PASS>
void weight_gradient(const T* grad, const T* x, T* grad_w, const Shape& s, std::index_sequence<PASS...>) {
  constexpr int64_t L = Vector<T>::size, RB = ROTATIONS_PER_PASS<CPG>;
  const int64_t rows = s.n * s.oh, tap_size = KW * CPG * L, block_size = s.kh * tap_size, size = s.c / L * block_size;
  const int64_t chunk_rows = std::max((rows + MAX_GRADIENT_CHUNKS - 1) / MAX_GRADIENT_CHUNKS, MIN_GRADIENT_CHUNK_ROWS);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<T> partials(chunks * size, T(0));  // [chunk][block][ky][kx][r][lane]
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      T* sums = partials.data() + chunk * size;
      for (int64_t row = chunk * chunk_rows; row < std::min(rows, (chunk + 1) * chunk_rows); ++row) {
        const int64_t n = row / s.oh, oy = row % s.oh;
        const T* grad_row = grad + row * s.ow * s.c;
        touch(grad_row, s.ow * s.c);
        for (int64_t ky = 0; ky < s.kh; ++ky) {
          const int64_t iy = oy * s.sh - s.ph + ky;
          if (iy < 0 || iy >= s.ih) continue;
          const T* x_row = x + (n * s.ih + iy) * s.iw * s.c;
          touch(x_row, s.iw * s.c);
          for (int64_t cb = 0; cb < s.c / L; ++cb)
            (gradient_pass<T, CPG, SW, PASS * RB>(sums + cb * block_size + ky * tap_size, x_row + cb * L,
                                                  grad_row + cb * L, s), ...);
        }
      }
    }
  });
  // Sum the partials and unpack: entry [block][ky][kx][r][lane] is the gradient of w[o, (o - b + r) % CPG, ky, kx],
  // o = block * L + lane.
  at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[chunk * size + i];
      const int64_t lane = i % L, r = i / L % CPG, tap = i / (CPG * L) % (s.kh * KW), o = i / block_size * L + lane;
      grad_w[(o * CPG + (o % CPG + r) % CPG) * s.kh * KW + tap] = sum;
    }
  });
}

// ------------------------------------------------------------------------------------------------------ entry
// Calls f.template operator()<CPG, SW>() for the run-time group width and row stride (checked by native.py).
template <typename T, typename F>
void with_shape(int64_t cpg, int64_t sw, const F& f) {
  TORCH_CHECK(sw == 1 || sw == 2, "narrow NHWC kernel: row stride must be 1 or 2, got ", sw);
  TORCH_CHECK(cpg >= 1 && cpg <= Vector<T>::size && (cpg & (cpg - 1)) == 0,
              "narrow NHWC kernel: channels per group must be a power of two up to ", Vector<T>::size, ", got ", cpg);
  auto by_stride = [&](auto cpg_constant) {
    constexpr int64_t CPG = decltype(cpg_constant)::value;
    if (sw == 1)
      f.template operator()<CPG, 1>();
    else
      f.template operator()<CPG, 2>();
  };
  switch (cpg) {
    case 1: by_stride(std::integral_constant<int64_t, 1>{}); break;
    case 2: by_stride(std::integral_constant<int64_t, 2>{}); break;
    case 4: by_stride(std::integral_constant<int64_t, 4>{}); break;
    case 8: by_stride(std::integral_constant<int64_t, 8>{}); break;
    default:
      if constexpr (Vector<T>::size >= 16) by_stride(std::integral_constant<int64_t, 16>{});
  }
}

void check_operands(const at::Tensor& x, const at::Tensor& weight, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "narrow NHWC kernel: ", name, " must be a channels_last 4-D tensor, got strides ", x.strides());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(3) == KW,
              "narrow NHWC kernel: weight must be (C, C/groups, kh, 3) with C = ", x.size(1), ", got ", weight.sizes());
}

Shape shape_of(at::IntArrayRef input, at::IntArrayRef output, int64_t kh, int64_t sh, at::IntArrayRef padding) {
  return Shape{input[0], input[1], input[2], input[3], output[2], output[3], kh, sh, padding[0], padding[1]};
}

// Channels in whole blocks of a vector's lanes, which every kernel here reads: but for a depthwise forward, whose
// last, partial block is read and written masked.
template <typename T>
void check_whole_blocks(int64_t channels, bool depthwise_forward) {
  TORCH_CHECK(depthwise_forward || channels % Vector<T>::size == 0, "narrow NHWC kernel: ", channels,
              " channels are not a multiple of ", Vector<T>::size, " (a depthwise forward only may have a remainder)");
}

template <typename T>
void run_forward(const at::Tensor& x, const std::vector<T>& packed, const T* bias, at::Tensor& y, const Shape& s,
                 int64_t cpg, int64_t sw, bool relu = false) {
  check_whole_blocks<T>(s.c, cpg == 1);
  with_shape<T>(cpg, sw, [&]<int64_t CPG, int64_t SW>() {
    forward<T, CPG, SW>(x.data_ptr<T>(), packed.data(), bias, y.data_ptr<T>(), s, relu);
  });
}

// The (N, C, OH, OW) channels_last output of a conv of `input` by a (C, cpg, kh, KW) filter.
at::Tensor forward_output(const at::Tensor& input, int64_t kh, at::IntArrayRef stride, at::IntArrayRef padding) {
  const int64_t oh = (input.size(2) + 2 * padding[0] - kh) / stride[0] + 1,
                ow = (input.size(3) + 2 * padding[1] - KW) / stride[1] + 1;
  TORCH_CHECK(input.size(2) + 2 * padding[0] >= kh && input.size(3) + 2 * padding[1] >= KW,
              "narrow NHWC kernel: input of size ", input.sizes(), " is smaller than the filter (", kh, ", ", KW,
              ") with padding ", padding);
  return at::empty({input.size(0), input.size(1), oh, ow},
                   input.options().memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

at::Tensor narrow_forward_nhwc(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding) {
  check_operands(input, weight, "input");
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t kh = w.size(2);
  at::Tensor out = forward_output(input, kh, stride, padding);
  const Shape s = shape_of(input.sizes(), out.sizes(), kh, stride[0], padding);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_narrow_forward_nhwc", [&] {
    const auto packed = pack(w.data_ptr<scalar_t>(), s.c, w.size(1), kh, /*adjoint=*/false);
    run_forward<scalar_t>(input, packed, b.defined() ? b.data_ptr<scalar_t>() : nullptr, out, s, w.size(1),
                          stride[1]);
  });
  return out;
}

// The input gradient of a stride-1 conv is a stride-1 conv of the output gradient with the adjoint filters (each
// group's transposed, taps flipped) and padding k - 1 - p; that of a stride-2 conv gathers through the same filters.
at::Tensor narrow_backward_input_nhwc(const at::Tensor& grad_output, const at::Tensor& weight,
                                      at::IntArrayRef input_shape, at::IntArrayRef stride, at::IntArrayRef padding) {
  const at::Tensor grad = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  check_operands(grad, weight, "grad_output");
  const at::Tensor w = weight.contiguous();
  const int64_t kh = w.size(2), cpg = w.size(1);
  TORCH_CHECK((stride[0] == 1 && stride[1] == 1) || (stride[0] == 2 && stride[1] == 2),
              "narrow NHWC kernel: the input gradient needs stride 1 or 2 in both directions, got ", stride);
  at::Tensor grad_in = at::empty(input_shape, grad.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "groupconv_narrow_backward_input_nhwc", [&] {
    const auto packed = pack(w.data_ptr<scalar_t>(), w.size(0), cpg, kh, /*adjoint=*/true);
    if (stride[0] == 2) {
      const Shape s = shape_of(grad_in.sizes(), grad.sizes(), kh, 2, padding);
      check_whole_blocks<scalar_t>(s.c, false);
      with_shape<scalar_t>(cpg, 1, [&]<int64_t CPG, int64_t>() {
        stride_2_input_gradient<scalar_t, CPG>(grad.data_ptr<scalar_t>(), packed.data(),
                                               grad_in.data_ptr<scalar_t>(), s,
                                               std::make_index_sequence<CPG / ROTATIONS_PER_PASS<CPG>>{});
      });
      return;
    }
    TORCH_CHECK(padding[0] <= kh - 1 && padding[1] <= KW - 1, "narrow NHWC kernel: padding ", padding,
                " exceeds the kernel size - 1");
    const std::vector<int64_t> adjoint_padding{kh - 1 - padding[0], KW - 1 - padding[1]};
    const Shape s = shape_of(grad.sizes(), grad_in.sizes(), kh, 1, adjoint_padding);
    run_forward<scalar_t>(grad, packed, nullptr, grad_in, s, cpg, 1);
  });
  return grad_in;
}

at::Tensor narrow_backward_weight_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                       at::IntArrayRef weight_shape, at::IntArrayRef stride,
                                       at::IntArrayRef padding) {
  const at::Tensor grad = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_w = at::empty(weight_shape, grad.options());
  check_operands(input, grad_w, "input");
  const Shape s = shape_of(input.sizes(), grad.sizes(), weight_shape[2], stride[0], padding);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_narrow_backward_weight_nhwc", [&] {
    check_whole_blocks<scalar_t>(s.c, false);
    with_shape<scalar_t>(weight_shape[1], stride[1], [&]<int64_t CPG, int64_t SW>() {
      weight_gradient<scalar_t, CPG, SW>(grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
                                         grad_w.data_ptr<scalar_t>(), s,
                                         std::make_index_sequence<CPG / ROTATIONS_PER_PASS<CPG>>{});
    });
  });
  return grad_w;
}

// The packed filters of one conv, for NarrowKernel, in the weight's dtype.
struct PackedNarrowFilters {
  int64_t channels, channels_per_group, kh;
  std::vector<int64_t> stride, padding;
  bool relu;
  std::variant<std::vector<float>, std::vector<double>> filters, bias;  // bias: empty without one
};

NarrowKernel::NarrowKernel(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool relu) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(3) == KW && weight.device().is_cpu() &&
                  (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble),
              "narrow NHWC kernel: weight must be a float32 or float64 CPU tensor (C, C/groups, kh, ", KW, "), got ",
              weight.sizes(), " ", weight.scalar_type(), " on ", weight.device());
  const int64_t cpg = weight.size(1);
  TORCH_CHECK(stride.size() == 2 && (stride[1] == 1 || stride[1] == 2) && stride[0] >= 1,
              "narrow NHWC kernel: stride must be (sh, 1 or 2), got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "narrow NHWC kernel: padding must be two non-negative ints, got ", padding);
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                                    bias->scalar_type() == weight.scalar_type()),
              "narrow NHWC kernel: bias must be a vector of the weight's ", weight.size(0), " channels and dtype");
  const at::Tensor w = weight.contiguous();
  auto packed = std::make_shared<PackedNarrowFilters>();
  packed->channels = weight.size(0);
  packed->channels_per_group = cpg;
  packed->kh = weight.size(2);
  packed->stride = stride.vec();
  packed->padding = padding.vec();
  packed->relu = relu;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "groupconv_narrow_pack", [&] {
    check_whole_blocks<scalar_t>(packed->channels, cpg == 1);
    packed->filters = pack(w.data_ptr<scalar_t>(), packed->channels, cpg, packed->kh, /*adjoint=*/false);
    std::vector<scalar_t> b;
    if (bias.has_value()) {
      const at::Tensor contiguous = bias->contiguous();
      b.assign(contiguous.data_ptr<scalar_t>(), contiguous.data_ptr<scalar_t>() + packed->channels);
    }
    packed->bias = std::move(b);
  });
  packed_ = std::move(packed);
}

at::Tensor NarrowKernel::operator()(const at::Tensor& input) const {
  const PackedNarrowFilters& k = *packed_;
  const at::ScalarType dtype = std::holds_alternative<std::vector<float>>(k.filters) ? at::kFloat : at::kDouble;
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  input.size(1) == k.channels && input.scalar_type() == dtype && input.device().is_cpu(),
              "narrow NHWC kernel: input must be a channels_last ", dtype, " CPU tensor of ", k.channels,
              " channels, got ", input.sizes(), " ", input.scalar_type(), " on ", input.device());
  at::Tensor out = forward_output(input, k.kh, k.stride, k.padding);
  const Shape s = shape_of(input.sizes(), out.sizes(), k.kh, k.stride[0], k.padding);
  std::visit([&](const auto& filters) {
    using T = typename std::decay_t<decltype(filters)>::value_type;
    const auto& bias = std::get<std::vector<T>>(k.bias);
    run_forward<T>(input, filters, bias.empty() ? nullptr : bias.data(), out, s, k.channels_per_group, k.stride[1],
                   k.relu);
  }, k.filters);
  return out;
}
