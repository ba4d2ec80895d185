// Pointwise (1x1, stride 1, no padding) grouped convolution on channels_last (NHWC) tensors, forward and both
// gradients, float32 and float64.
//
// In NHWC a 1x1 conv is a (pixels x C) matrix times a block-diagonal (C x M) one: pixel p's output channels of
// group g are y[p, g*B + b] = sum_a x[p, g*A + a] * K_g[a, b]. The forward has A = C/G, B = M/G, K_g = W_g^T; the
// input gradient the same product with A = M/G, B = C/G, K_g = W_g. BLAS cannot do all groups in one call without
// copying the strided group slices in and out (oneDNN reorders, and torch's channels_last path runs 2-3x above the
// memory floor on ShuffleNet's layers), and one call per group would stream the whole output once per group.
// Here each block of pixels is read once and all its groups computed while it sits in L1, so the kernel makes one
// pass over x and one over y, as the memory floor does.
//
// Register blocking: a pixel's B outputs (in chunks of up to 4 vector registers) stay in
// registers for PIXELS pixels at a time, while the A inputs stream past: per input channel a, one row of K_g
// (loaded once) is multiplied by each pixel's x[p, g*A + a] (broadcast). K_g is packed with its rows padded to
// whole half vectors (zeros), so the inner loops have fixed trip counts the compiler vectorises and keeps in
// registers; a group's last 8 columns, where B is an odd multiple of 8, take a half-width register (24 channels: a
// vector and a half, not two vectors with a quarter of their lanes wasted: 1.2-1.3x on such layers).
// Every output element is written by one thread (at::parallel_for over chunks of pixels): results do not depend on
// scheduling.

#include "pointwise.h"

#include "layout.h"

#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>  // streaming stores (stream_out)
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <variant>
#include <vector>

namespace {

// The packed right-hand side: for each group, A rows of `padded` values (B of them real, the rest zero: whole
// half vectors).
template <typename T>
struct Packed {
  std::vector<T> values;
  int64_t groups, a, b, padded;
  std::vector<T> bias;  // per group, `padded` values (B real): empty without a bias
  // The forward's fused epilogue and input shuffle (an inference-time conv; set after packing):
  bool relu = false;            // outputs stored as max(0, y)
  std::vector<int64_t> source;  // where given, input channel g*A + k is read from x's channel source[g*A + k]
  const T* row(int64_t group, int64_t k) const { return values.data() + (group * a + k) * padded; }
};

// K_g[k, j] = W[g*M/G + j, k] (transposed: the forward) or W[g*M/G + k, j] (the input gradient), W of shape
// (M, C/G) flattened.
template <typename T>
Packed<T> pack(const T* w, const T* bias, int64_t groups, int64_t a, int64_t b, bool transposed) {
  constexpr int64_t half = Half<T>::size;
  Packed<T> p{{}, groups, a, b, (b + half - 1) / half * half, {}};
  if (bias) {
    p.bias.assign(groups * p.padded, T(0));
    for (int64_t g = 0; g < groups; ++g) std::copy(bias + g * b, bias + (g + 1) * b, p.bias.begin() + g * p.padded);
  }
  p.values.assign(groups * a * p.padded, T(0));
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t k = 0; k < a; ++k)
      for (int64_t j = 0; j < b; ++j)
        p.values[(g * a + k) * p.padded + j] = transposed ? w[(g * b + j) * a + k] : w[(g * a + k) * b + j];
  return p;
}

template <typename V, typename T>
inline V load(const T* source) {
  V v;
  std::memcpy(&v, source, sizeof(V));  // an unaligned vector load
  return v;
}

template <typename T, typename V>
inline void store(T* target, const V& v) {
  std::memcpy(target, &v, sizeof(V));  // an unaligned vector store
}

// y[p, column0 + j] = sum_k x[p, g*A + k] * K_g[k, column0 + j] (+ bias[g*B + column0 + j]) (+ init[p, g*B +
// column0 + j], where `init` is given: rows laid out as y's) for PIXELS pixels and VECTORS vectors (and a half vector
// with HALF) of columns from column0 (only the first `width` of them real).
template <typename T, int64_t PIXELS, int64_t VECTORS, bool HALF = false>
inline void block(const T* x, int64_t x_stride, const Packed<T>& k, int64_t g, int64_t column0, int64_t width,
                  T* y, int64_t y_stride, const T* init) {
  using V = typename Vector<T>::type;
  using H = typename Half<T>::type;
  constexpr int64_t lanes = Vector<T>::size;
  constexpr int64_t SLOTS = VECTORS > 0 ? VECTORS : 1;  // no zero-length arrays
  V acc[PIXELS][SLOTS];
  H tail[PIXELS];
  const T* start = init ? init + g * k.b + column0 : nullptr;  // (the values the sums start from: else zero)
#pragma GCC unroll 16
  for (int64_t p = 0; p < PIXELS; ++p) {
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECTORS; ++v)
      acc[p][v] = start ? load_first<V>(start + p * y_stride + v * lanes, width - v * lanes) : V{};
    tail[p] = HALF && start ? load_first<H>(start + p * y_stride + VECTORS * lanes, width - VECTORS * lanes) : H{};
  }
  const int64_t* source = k.source.empty() ? nullptr : k.source.data() + g * k.a;
  const T* row = k.row(g, 0) + column0;
  for (int64_t i = 0; i < k.a; ++i, row += k.padded) {
    V columns[SLOTS];
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECTORS; ++v) columns[v] = load<V>(row + v * lanes);
    H tail_columns{};
    if constexpr (HALF) tail_columns = load<H>(row + VECTORS * lanes);
    const T* xi = x + (source ? source[i] : g * k.a + i);  // (x's values are broadcast one at a time: any order)
#pragma GCC unroll 16
    for (int64_t p = 0; p < PIXELS; ++p) {
      const T value = xi[p * x_stride];
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECTORS; ++v) acc[p][v] += value * columns[v];
      if constexpr (HALF) tail[p] += value * tail_columns;
    }
  }
  if (k.bias.size()) {
    const T* bias_row = k.bias.data() + g * k.padded + column0;
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECTORS; ++v) {
      const V b = load<V>(bias_row + v * lanes);
#pragma GCC unroll 16
      for (int64_t p = 0; p < PIXELS; ++p) acc[p][v] += b;
    }
    if constexpr (HALF) {
      const H b = load<H>(bias_row + VECTORS * lanes);
#pragma GCC unroll 16
      for (int64_t p = 0; p < PIXELS; ++p) tail[p] += b;
    }
  }
  if (k.relu) {
#pragma GCC unroll 16
    for (int64_t p = 0; p < PIXELS; ++p) {
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECTORS; ++v) acc[p][v] = acc[p][v] > V{} ? acc[p][v] : V{};
      if constexpr (HALF) tail[p] = tail[p] > H{} ? tail[p] : H{};
    }
  }
  // The real columns only (the padding would overwrite the next group's). Whole vectors are stored as such, which
  // keeps the accumulators in registers; a block wider than what is left of its group is stored masked.
  T* yg = y + g * k.b + column0;
  constexpr int64_t full_width = VECTORS * lanes + (HALF ? Half<T>::size : 0);
  if (width == full_width) {
#pragma GCC unroll 16
    for (int64_t p = 0; p < PIXELS; ++p) {
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECTORS; ++v) store(yg + p * y_stride + v * lanes, acc[p][v]);
      if constexpr (HALF) store(yg + p * y_stride + VECTORS * lanes, tail[p]);
    }
    return;
  }
  for (int64_t p = 0; p < PIXELS; ++p) {
    for (int64_t v = 0; v < VECTORS; ++v)
      store_first(yg + p * y_stride + v * lanes, acc[p][v], std::min<int64_t>(lanes, width - v * lanes));
    if constexpr (HALF) store_first(yg + p * y_stride + VECTORS * lanes, tail[p], width - VECTORS * lanes);
  }
}

// All groups and columns of PIXELS pixels: columns in chunks of 4, then 2 vectors, then what is left (at most a
// vector and a half), with at most 16 accumulator registers (4-vector chunks take the pixels 4 at a time) and at
// least 8 (an FMA's latency times its throughput: fewer independent sums leave the FMA units waiting).
template <typename T, int64_t PIXELS>
void pixels_of(const T* x, int64_t x_stride, const Packed<T>& k, T* y, int64_t y_stride, const T* init) {
  constexpr int64_t lanes = Vector<T>::size;
  constexpr int64_t QUAD_PIXELS = PIXELS < 4 ? PIXELS : 4;
  for (int64_t g = 0; g < k.groups; ++g) {
    int64_t column = 0;
    for (; column + 4 * lanes <= k.padded; column += 4 * lanes)
      for (int64_t p = 0; p < PIXELS; p += QUAD_PIXELS)
        block<T, QUAD_PIXELS, 4>(x + p * x_stride, x_stride, k, g, column, std::min<int64_t>(4 * lanes, k.b - column),
                                 y + p * y_stride, y_stride, init ? init + p * y_stride : nullptr);
    for (; column + 2 * lanes <= k.padded; column += 2 * lanes)
      block<T, PIXELS, 2>(x, x_stride, k, g, column, std::min<int64_t>(2 * lanes, k.b - column), y, y_stride, init);
    const int64_t left = k.padded - column, width = k.b - column;  // left: none, a half, one or 1.5 vectors
    if (left == lanes + lanes / 2) block<T, PIXELS, 1, true>(x, x_stride, k, g, column, width, y, y_stride, init);
    else if (left == lanes) block<T, PIXELS, 1>(x, x_stride, k, g, column, width, y, y_stride, init);
    else if (left == lanes / 2) block<T, PIXELS, 0, true>(x, x_stride, k, g, column, width, y, y_stride, init);
  }
}

constexpr int64_t PIXEL_BLOCK = 8;
constexpr int64_t FORWARD_CHUNK = 64;  // pixels (8 blocks) brought into cache at a time

// Outputs larger than the last-level cache are written with non-temporal (streaming) stores: a plain store first
// reads the line it writes (for the forward of an expanding 1x1, the output is most of the traffic), and an output
// that does not fit in the cache leaves it before the next op reads it anyway. 96 -> 384 g8 at 32x28x28 (38.5 MB
// out): 1.16x; the input gradient of 384 -> 96: 1.22x. A smaller output stays in cache for the op that follows.
// The size is a constant: the L3 cache that a core's threads share (32 MiB on this AMD EPYC, as on most of its
// kind); sysconf reports the whole host's (320 MiB) inside a virtual machine.
constexpr int64_t STREAMING_MIN_BYTES = int64_t(32) << 20;

// Copies n values to `target` with streaming stores where the machine has them (plain stores elsewhere).
template <typename T>
void stream_out(T* target, const T* source, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  constexpr int64_t lanes = 64 / sizeof(T);
  for (; i < n && (reinterpret_cast<uintptr_t>(target + i) & 63); ++i) target[i] = source[i];
  for (; i + lanes <= n; i += lanes)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(target + i), _mm512_loadu_si512(source + i));
#endif
  for (; i < n; ++i) target[i] = source[i];
}

inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();  // streaming stores are weakly ordered: make them visible before the thread's work ends
#endif
}

// Asks for `count` values from `values` on in cache (for writing where `write`), a prefetch per cache line: the
// loads go on while the kernel computes.
template <typename T>
inline void prefetch(const T* values, int64_t count, bool write) {
  for (int64_t i = 0; i < count; i += 64 / sizeof(T)) {
    if (write) __builtin_prefetch(values + i, 1, 3);
    else __builtin_prefetch(values + i, 0, 3);
  }
}

// y for pixels first ... last (x's rows times K, plus init's rows where given), in blocks of PIXEL_BLOCK pixels; with
// `buffer` (PIXEL_BLOCK rows of y), each block is computed there and streamed out. Where prefetch_until is past
// `last`, each block also prefetches the rows of the pixels last - first further on (the next chunk's), up to
// prefetch_until.
template <typename T>
void pointwise_rows(const T* x, int64_t x_stride, const Packed<T>& k, T* y, int64_t y_stride, int64_t first,
                    int64_t last, T* buffer, const T* init, int64_t prefetch_until = 0) {
  auto init_at = [&](int64_t p) { return init ? init + p * y_stride : nullptr; };
  const int64_t ahead = last - first;
  int64_t p = first;
  for (; p + PIXEL_BLOCK <= last; p += PIXEL_BLOCK) {
    if (p + ahead + PIXEL_BLOCK <= prefetch_until) {
      prefetch(x + (p + ahead) * x_stride, PIXEL_BLOCK * x_stride, false);
      prefetch(y + (p + ahead) * y_stride, PIXEL_BLOCK * y_stride, true);
      if (init) prefetch(init + (p + ahead) * y_stride, PIXEL_BLOCK * y_stride, false);
    }
    if (buffer) {
      pixels_of<T, PIXEL_BLOCK>(x + p * x_stride, x_stride, k, buffer, y_stride, init_at(p));
      stream_out(y + p * y_stride, buffer, PIXEL_BLOCK * y_stride);
    } else {
      pixels_of<T, PIXEL_BLOCK>(x + p * x_stride, x_stride, k, y + p * y_stride, y_stride, init_at(p));
    }
  }
  for (; p < last; ++p) pixels_of<T, 1>(x + p * x_stride, x_stride, k, y + p * y_stride, y_stride, init_at(p));
}

template <typename T>
bool streams(int64_t pixel_count, int64_t y_stride) {
  return pixel_count * y_stride * int64_t(sizeof(T)) > STREAMING_MIN_BYTES;
}

// How a thread brings its chunks into cache. Operands that fit in the last-level cache together: the first chunk by a
// sequential pass (layout.h's touch), each later one by prefetches issued while the chunk before it computes (1.05x
// to 1.2x on ShuffleNet's and ResNeXt's grouped 1x1 layers at batch 1 and 8). Larger ones come from memory: each
// chunk by a sequential pass before it computes, which the hardware prefetchers stream at full bandwidth (the
// prefetches ran 384 -> 96 g8 at 32x28x28 at 0.9x, 240 -> 60 g3 at 0.8x).
template <typename T>
void pointwise_nhwc(const T* x, int64_t pixel_count, const Packed<T>& k, T* y, const T* init) {
  const int64_t x_stride = k.groups * k.a, y_stride = k.groups * k.b;
  // A small input (a 7x7 or 14x14 one at batch 1) in blocks rather than chunks: 49 pixels are one chunk, which one
  // thread would compute alone; 196 are four, three of them on the first of two threads.
  const int64_t chunk_pixels =
      pixel_count < 4 * FORWARD_CHUNK * at::get_num_threads() ? PIXEL_BLOCK : FORWARD_CHUNK;
  const int64_t chunks = (pixel_count + chunk_pixels - 1) / chunk_pixels;
  const int64_t work_per_chunk = chunk_pixels * x_stride * k.b;
  const bool streaming = streams<T>(pixel_count, y_stride);
  const bool prefetching =
      pixel_count * (x_stride + (init ? 2 : 1) * y_stride) * int64_t(sizeof(T)) <= STREAMING_MIN_BYTES;
  at::parallel_for(0, chunks, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_chunk)),
                   [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(streaming ? PIXEL_BLOCK * y_stride : 0);
    const int64_t prefetch_until = prefetching ? std::min(end * chunk_pixels, pixel_count) : 0;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * chunk_pixels, last = std::min(first + chunk_pixels, pixel_count);
      if (!prefetching || chunk == begin) {
        touch(x + first * x_stride, (last - first) * x_stride);
        if (!streaming) touch(static_cast<const T*>(y + first * y_stride), (last - first) * y_stride);
        if (init) touch(init + first * y_stride, (last - first) * y_stride);
      }
      pointwise_rows(x, x_stride, k, y, y_stride, first, last, streaming ? buffer.data() : nullptr, init,
                     prefetch_until);
    }
    if (streaming) stream_fence();
  });
}

// ------------------------------------------------------------------------------------------ weight gradient
// grad_w[g*B + b, a] = sum over pixels p of grad_y[p, g*B + b] * x[p, g*A + a]  (A = C/G, B = M/G).
// Register tile: ROWS output channels b by VECTORS vectors (and a half) of input channels a, summed over a chunk of
// pixels (per pixel: VECTORS loads of x, ROWS broadcasts of grad_y, ROWS x VECTORS FMAs). Lanes past A (the next
// group's channels) are computed and dropped; where such a load would run past the end of x, the pixel's values are
// copied into a zero-padded buffer first. Chunks of pixels have a fixed size, so the sum's order, and the result,
// does not depend on the thread count: each chunk writes its own partial sums, added in chunk order.

constexpr int64_t GRADIENT_CHUNK = 256;  // pixels; x and grad_y of a chunk stay in L2 while its tiles run

template <typename T, int64_t ROWS, int64_t SLOTS, int64_t VECTORS, bool HALF>
__attribute__((always_inline)) inline void accumulate_outer(typename Vector<T>::type (&acc)[ROWS][SLOTS],
                                                            typename Half<T>::type (&tail)[ROWS], const T* xp,
                                                            const T* gp) {
  using V = typename Vector<T>::type;
  using H = typename Half<T>::type;
  V xv[SLOTS];
#pragma GCC unroll 16
  for (int64_t v = 0; v < VECTORS; ++v) xv[v] = load<V>(xp + v * Vector<T>::size);
  H xt{};
  if constexpr (HALF) xt = load<H>(xp + VECTORS * Vector<T>::size);
#pragma GCC unroll 16
  for (int64_t r = 0; r < ROWS; ++r) {
    const T value = gp[r];
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECTORS; ++v) acc[r][v] += value * xv[v];
    if constexpr (HALF) tail[r] += value * xt;
  }
}

// Columns a0 ... a0 + width of rows 0 ... ROWS of one group's gradient: VECTORS vectors of columns, and a half vector
// with HALF (the last of them partly past A where width is less).
template <typename T, int64_t ROWS, int64_t VECTORS, bool HALF = false>
inline void gradient_tile(const T* x, int64_t x_stride, const T* x_end, const T* grad, int64_t grad_stride,
                          int64_t pixels, int64_t a0, int64_t width, T* partial, int64_t a) {
  using V = typename Vector<T>::type;
  using H = typename Half<T>::type;
  constexpr int64_t lanes = Vector<T>::size, half = Half<T>::size;
  constexpr int64_t SLOTS = VECTORS > 0 ? VECTORS : 1;  // no zero-length arrays
  constexpr int64_t span = VECTORS * lanes + (HALF ? half : 0);
  V acc[ROWS][SLOTS];
  H tail[ROWS];
#pragma GCC unroll 16
  for (int64_t r = 0; r < ROWS; ++r) {
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECTORS; ++v) acc[r][v] = V{};
    tail[r] = H{};
  }
  // The pixels whose loads stay inside x run straight; the rest (the tensor's last few) through a zero-padded copy.
  // No branch or call in the main loop, which keeps the accumulators in registers.
  const T* x0 = x + a0;
  const int64_t room = x_end - x0 - span;
  const int64_t safe = room < 0 ? 0 : std::min<int64_t>(pixels, room / x_stride + 1);
  for (int64_t p = 0; p < safe; ++p)
    accumulate_outer<T, ROWS, SLOTS, VECTORS, HALF>(acc, tail, x0 + p * x_stride, grad + p * grad_stride);
  for (int64_t p = safe; p < pixels; ++p) {
    T padded[span] = {};
    const T* xp = x0 + p * x_stride;
    std::copy(xp, std::min<const T*>(xp + span, x_end), padded);
    accumulate_outer<T, ROWS, SLOTS, VECTORS, HALF>(acc, tail, padded, grad + p * grad_stride);
  }
  for (int64_t r = 0; r < ROWS; ++r) {
    for (int64_t v = 0; v < VECTORS; ++v)
      for (int64_t j = 0; j < lanes && v * lanes + j < width; ++j) partial[r * a + a0 + v * lanes + j] = acc[r][v][j];
    if constexpr (HALF)
      for (int64_t j = 0; j < half && VECTORS * lanes + j < width; ++j)
        partial[r * a + a0 + VECTORS * lanes + j] = tail[r][j];
  }
}

// One group's (B x A) gradient over a chunk of pixels, into `partial`: rows in tiles of 8, 4, 2, 1 (exactly B, no
// reads past the group's rows), columns in tiles of 2 vectors, then what is left: a vector and a half, a vector or a
// half (the last partly past A). 24 columns (ShuffleNet g=8's 192 -> 768) take a vector and a half, not two vectors.
template <typename T>
void gradient_group(const T* x, int64_t x_stride, const T* x_end, const T* grad, int64_t grad_stride, int64_t pixels,
                    int64_t a, int64_t b, T* partial) {
  constexpr int64_t lanes = Vector<T>::size, half = Half<T>::size;
  int64_t row = 0;
  auto rows = [&](auto tile_rows) {
    constexpr int64_t R = decltype(tile_rows)::value;
    for (; row + R <= b; row += R) {
      int64_t column = 0;
      for (; a - column > lanes + half; column += 2 * lanes)
        gradient_tile<T, R, 2>(x, x_stride, x_end, grad + row, grad_stride, pixels, column,
                               std::min<int64_t>(2 * lanes, a - column), partial + row * a, a);
      const int64_t left = a - column;
      T* tile_partial = partial + row * a;
      if (left > lanes)
        gradient_tile<T, R, 1, true>(x, x_stride, x_end, grad + row, grad_stride, pixels, column, left, tile_partial, a);
      else if (left > half)
        gradient_tile<T, R, 1>(x, x_stride, x_end, grad + row, grad_stride, pixels, column, left, tile_partial, a);
      else if (left > 0)
        gradient_tile<T, R, 0, true>(x, x_stride, x_end, grad + row, grad_stride, pixels, column, left, tile_partial,
                                     a);
    }
  };
  rows(std::integral_constant<int64_t, 8>{});
  rows(std::integral_constant<int64_t, 4>{});
  rows(std::integral_constant<int64_t, 2>{});
  rows(std::integral_constant<int64_t, 1>{});
}

// The weight gradient and, with `input_k` (the weight packed for the input gradient) and `grad_x`, the input
// gradient too (plus `init`, where given, laid out as grad_x), chunk by chunk: both read a chunk of grad_y while it
// is in cache, so the pair costs one pass over grad_y instead of two (for ShuffleNet's expanding 1x1s grad_y is the
// large tensor).
template <typename T>
void pointwise_weight_gradient(const T* grad, const T* x, int64_t pixel_count, int64_t groups, int64_t a, int64_t b,
                               T* grad_w, const Packed<T>* input_k = nullptr, T* grad_x = nullptr,
                               const T* init = nullptr) {
  const int64_t x_stride = groups * a, grad_stride = groups * b, size = groups * b * a;
  const T* x_end = x + pixel_count * x_stride;
  const int64_t chunks = (pixel_count + GRADIENT_CHUNK - 1) / GRADIENT_CHUNK;
  std::vector<T> partials(chunks * size);
  const bool streaming = grad_x && streams<T>(pixel_count, x_stride);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(streaming ? PIXEL_BLOCK * x_stride : 0);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t p0 = chunk * GRADIENT_CHUNK, pixels = std::min(GRADIENT_CHUNK, pixel_count - p0);
      touch(x + p0 * x_stride, pixels * x_stride);
      touch(grad + p0 * grad_stride, pixels * grad_stride);
      if (init) touch(init + p0 * x_stride, pixels * x_stride);
      if (grad_x)
        pointwise_rows(grad, grad_stride, *input_k, grad_x, x_stride, p0, p0 + pixels,
                       streaming ? buffer.data() : nullptr, init);
      for (int64_t g = 0; g < groups; ++g)
        gradient_group(x + p0 * x_stride + g * a, x_stride, x_end, grad + p0 * grad_stride + g * b, grad_stride,
                       pixels, a, b, partials.data() + chunk * size + g * b * a);
    }
    if (streaming) stream_fence();
  });
  at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[chunk * size + i];
      grad_w[i] = sum;
    }
  });
}

// `accumulate` (optional): a tensor of the output's shape added to it, read as the output is written (a residual
// block's shortcut gradient, summed into its first conv's input gradient without a pass of its own).
at::Tensor accumulated_rows(const c10::optional<at::Tensor>& accumulate, at::IntArrayRef sizes) {
  if (!accumulate.has_value() || !accumulate->defined()) return at::Tensor();
  TORCH_CHECK(accumulate->sizes() == sizes, "pointwise NHWC kernel: the tensor added must have the output's shape ",
              sizes, ", got ", accumulate->sizes());
  return accumulate->contiguous(at::MemoryFormat::ChannelsLast);
}

// The forward's packed weights, with the epilogue and the input shuffle (`channels`: the input's).
template <typename T>
Packed<T> pack_forward(const at::Tensor& w, const at::Tensor& b, int64_t groups, int64_t a, int64_t out_per_group,
                       bool transposed, bool relu, int64_t shuffle_groups, int64_t channels) {
  Packed<T> k = pack(w.data_ptr<T>(), b.defined() ? b.data_ptr<T>() : nullptr, groups, a, out_per_group, transposed);
  k.relu = relu;
  if (shuffle_groups > 1) {  // channel_shuffle(x, s)[c] = x[(c % s) * (C / s) + c / s]
    const int64_t per_group = channels / shuffle_groups;
    k.source.resize(channels);
    for (int64_t c = 0; c < channels; ++c) k.source[c] = (c % shuffle_groups) * per_group + c / shuffle_groups;
  }
  return k;
}

// The (N, out_channels, H, W) channels_last output of `input` times the packed weights (plus `accumulate`).
template <typename T>
at::Tensor run_packed(const at::Tensor& input, const Packed<T>& k, int64_t out_channels,
                      const c10::optional<at::Tensor>& accumulate) {
  at::Tensor out = at::empty({input.size(0), out_channels, input.size(2), input.size(3)},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t pixel_count = input.size(0) * input.size(2) * input.size(3);
  const at::Tensor init = accumulated_rows(accumulate, out.sizes());
  pointwise_nhwc(input.data_ptr<T>(), pixel_count, k, out.data_ptr<T>(), init.defined() ? init.data_ptr<T>() : nullptr);
  return out;
}

void check_channels_last_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast),
              "pointwise NHWC kernel: input must be a channels_last 4-D tensor, got strides ", input.strides());
}

at::Tensor run(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
               int64_t groups, int64_t out_channels, bool transposed,
               const c10::optional<at::Tensor>& accumulate = c10::nullopt, bool relu = false,
               int64_t shuffle_groups = 1) {
  check_channels_last_input(input);
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t a = input.size(1) / groups, out_per_group = out_channels / groups;
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_pointwise_nhwc", [&] {
    out = run_packed(input, pack_forward<scalar_t>(w, b, groups, a, out_per_group, transposed, relu, shuffle_groups,
                                                   input.size(1)),
                     out_channels, accumulate);
  });
  return out;
}

}  // namespace

at::Tensor pointwise_forward_nhwc(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, int64_t groups,
                                  const c10::optional<at::Tensor>& residual, bool relu, int64_t shuffle_groups) {
  TORCH_CHECK(shuffle_groups >= 1 && input.size(1) % shuffle_groups == 0, "pointwise NHWC kernel: shuffle_groups=",
              shuffle_groups, " must divide the input's ", input.size(1), " channels");
  return run(input, weight, bias, groups, weight.size(0), /*transposed=*/true, residual, relu, shuffle_groups);
}

at::Tensor pointwise_backward_weight_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef weight_shape, int64_t groups) {
  const auto channels_last = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(channels_last),
              "pointwise NHWC kernel: input must be a channels_last 4-D tensor, got strides ", input.strides());
  const at::Tensor grad = grad_output.contiguous(channels_last);
  at::Tensor grad_w = at::empty(weight_shape, grad.options());
  const int64_t pixel_count = input.size(0) * input.size(2) * input.size(3);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_pointwise_weight_gradient_nhwc", [&] {
    pointwise_weight_gradient(grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), pixel_count, groups,
                              input.size(1) / groups, grad.size(1) / groups, grad_w.data_ptr<scalar_t>());
  });
  return grad_w;
}

std::vector<at::Tensor> pointwise_backward_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                               const at::Tensor& weight, int64_t groups,
                                               const c10::optional<at::Tensor>& accumulate) {
  const auto channels_last = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(channels_last),
              "pointwise NHWC kernel: input must be a channels_last 4-D tensor, got strides ", input.strides());
  const at::Tensor grad = grad_output.contiguous(channels_last);
  const at::Tensor w = weight.contiguous();
  at::Tensor grad_w = at::empty(w.sizes(), grad.options());
  at::Tensor grad_x = at::empty(input.sizes(), input.options().memory_format(channels_last));
  const int64_t pixel_count = input.size(0) * input.size(2) * input.size(3);
  const int64_t a = input.size(1) / groups, b = grad.size(1) / groups;
  const at::Tensor init = accumulated_rows(accumulate, grad_x.sizes());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "groupconv_pointwise_backward_nhwc", [&] {
    const Packed<scalar_t> input_k = pack(w.data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr), groups, b,
                                          a, /*transposed=*/false);
    pointwise_weight_gradient(grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), pixel_count, groups, a, b,
                              grad_w.data_ptr<scalar_t>(), &input_k, grad_x.data_ptr<scalar_t>(),
                              init.defined() ? init.data_ptr<scalar_t>() : nullptr);
  });
  return {grad_x, grad_w};
}

at::Tensor pointwise_backward_input_nhwc(const at::Tensor& grad_output, const at::Tensor& weight, int64_t groups,
                                         const c10::optional<at::Tensor>& accumulate) {
  return run(grad_output, weight, c10::nullopt, groups, weight.size(1) * groups, /*transposed=*/false, accumulate);
}

// The packed weights of one conv, for PointwiseKernel, in the weight's dtype.
struct PackedPointwiseWeights {
  int64_t in_channels, out_channels;
  std::variant<Packed<float>, Packed<double>> packed;
};

PointwiseKernel::PointwiseKernel(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, int64_t groups,
                                 bool relu, int64_t shuffle_groups) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1,
              "pointwise NHWC kernel: weight must be a 1x1 conv's (M, C/groups, 1, 1), got shape ", weight.sizes());
  TORCH_CHECK(weight.device().is_cpu(), "pointwise NHWC kernel: weight must be on the CPU, got ", weight.device());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
              "pointwise NHWC kernel: weight must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0, "pointwise NHWC kernel: groups=", groups,
              " must divide the weight's ", weight.size(0), " output channels");
  const int64_t a = weight.size(1), in_channels = a * groups;
  TORCH_CHECK(shuffle_groups >= 1 && in_channels % shuffle_groups == 0, "pointwise NHWC kernel: shuffle_groups=",
              shuffle_groups, " must divide the input's ", in_channels, " channels");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                                    bias->scalar_type() == weight.scalar_type()),
              "pointwise NHWC kernel: bias must be a vector of the weight's ", weight.size(0), " output channels and ",
              "dtype");
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t out_per_group = weight.size(0) / groups;
  auto packed = std::make_shared<PackedPointwiseWeights>();
  packed->in_channels = in_channels;
  packed->out_channels = weight.size(0);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "groupconv_pointwise_pack", [&] {
    packed->packed = pack_forward<scalar_t>(w, b, groups, a, out_per_group, /*transposed=*/true, relu,
                                            shuffle_groups, in_channels);
  });
  packed_ = std::move(packed);
}

at::Tensor PointwiseKernel::operator()(const at::Tensor& input, const c10::optional<at::Tensor>& residual) const {
  check_channels_last_input(input);
  const at::ScalarType dtype = std::holds_alternative<Packed<float>>(packed_->packed) ? at::kFloat : at::kDouble;
  TORCH_CHECK(input.size(1) == packed_->in_channels && input.scalar_type() == dtype && input.device().is_cpu(),
              "pointwise NHWC kernel: input must have ", packed_->in_channels, " channels, the weight's dtype ",
              dtype, " and be on the CPU, got ", input.sizes(), " ", input.scalar_type(), " on ", input.device());
  return std::visit([&](const auto& k) { return run_packed(input, k, packed_->out_channels, residual); },
                    packed_->packed);
}
