// Memory layouts the CPU kernels tell apart, how they bring memory into cache, and the vector register they use.
#pragma once

#include <torch/extension.h>

#if defined(__AVX512F__)
#include <immintrin.h>  // masked loads and stores (load_first, store_first)
#endif

#include <cstring>
#include <type_traits>

// Channels innermost (channels_last or channels_last_3d) and not also plain contiguous (C == 1, or 1x1 pixels).
inline bool is_channels_innermost(const at::Tensor& x) {
  return !x.is_contiguous() && ((x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                                (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)));
}

// Reads `count` values front to back, one per cache line, so that they are in cache for the work that follows. A
// channels_last kernel that works on a few channels of every pixel at a time (a group, a block of channels) reads a
// stride the hardware prefetchers follow badly, while a sequential pass streams at full bandwidth. Measured with one
// thread on a 256 -> 64 g8 pointwise layer at 32x28x28: the weight gradient 4.1 -> 3.3 ms.
template <typename T>
inline void touch(const T* values, int64_t count) {
  T sink = 0;
  for (int64_t i = 0; i < count; i += 64 / sizeof(T)) sink += values[i];
  asm volatile("" : : "r"(&sink) : "memory");  // keep the loads
}

// One vector register of T (GCC's vector extension: an AVX-512 register where the machine has them, else two or four
// narrower ones), and the integer vector that names its lanes in a __builtin_shuffle. Kernels keep their
// accumulators in these: a plain array indexed in loops is not guaranteed a register (gcc kept one on the stack, 5x
// slower).
template <typename T>
struct Vector {
  static constexpr int64_t bytes = 64;
  static constexpr int64_t size = bytes / sizeof(T);
  typedef T type __attribute__((vector_size(bytes)));
  typedef std::conditional_t<sizeof(T) == 8, int64_t, int32_t> Index;
  typedef Index Mask __attribute__((vector_size(bytes)));
};

// Half a vector register (an AVX2 register where Vector is an AVX-512 one): the last 8 floats of a row of outputs
// whose width is an odd multiple of 8. A group of 24 output channels then takes a vector and a half, all lanes
// real, instead of two vectors with a quarter of their lanes wasted (ShuffleNet g=8's 768 -> 192 conv).
template <typename T>
struct Half {
  static constexpr int64_t size = Vector<T>::size / 2;
  typedef T type __attribute__((vector_size(Vector<T>::bytes / 2)));
};

// The first `count` (> 0) values of v: one masked store where the machine has them (a memcpy of a run-time length
// is a library call, and keeps the accumulators on the stack).
template <typename T, typename V>
inline void store_first(T* target, const V& v, int64_t count) {
  if (count <= 0) return;
  constexpr int64_t size = sizeof(V) / sizeof(T);
  if (count >= size) return (void)std::memcpy(target, &v, sizeof(V));
#if defined(__AVX512F__) && defined(__AVX512VL__)
  const unsigned mask = (1u << count) - 1;
  if constexpr (std::is_same_v<T, float> && size == 16) return _mm512_mask_storeu_ps(target, mask, (__m512)v);
  if constexpr (std::is_same_v<T, float> && size == 8) return _mm256_mask_storeu_ps(target, mask, (__m256)v);
  if constexpr (std::is_same_v<T, double> && size == 8) return _mm512_mask_storeu_pd(target, mask, (__m512d)v);
  if constexpr (std::is_same_v<T, double> && size == 4) return _mm256_mask_storeu_pd(target, mask, (__m256d)v);
#endif
  std::memcpy(target, &v, count * sizeof(T));
}

// The first `count` values at `source` in a vector, the rest zero (no read past them): store_first's counterpart.
template <typename V, typename T>
inline V load_first(const T* source, int64_t count) {
  constexpr int64_t size = sizeof(V) / sizeof(T);
  if (count >= size) {
    V v;
    std::memcpy(&v, source, sizeof(V));
    return v;
  }
  if (count <= 0) return V{};
#if defined(__AVX512F__) && defined(__AVX512VL__)
  const unsigned mask = (1u << count) - 1;
  if constexpr (std::is_same_v<T, float> && size == 16) return (V)_mm512_maskz_loadu_ps(mask, source);
  if constexpr (std::is_same_v<T, float> && size == 8) return (V)_mm256_maskz_loadu_ps(mask, source);
  if constexpr (std::is_same_v<T, double> && size == 8) return (V)_mm512_maskz_loadu_pd(mask, source);
  if constexpr (std::is_same_v<T, double> && size == 4) return (V)_mm256_maskz_loadu_pd(mask, source);
#endif
  V v{};
  std::memcpy(&v, source, count * sizeof(T));
  return v;
}
