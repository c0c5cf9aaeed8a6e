// gather_as / gather_to_f32: a contiguous (float32) copy of any-strided MLX array data, shared by the custom
// primitives (mlx_primitive.cpp, attention.cpp) for inputs that are not plain row views.
// Internal header; needs the MLX headers.
#pragma once

#include <cstdint>
#include <vector>

#include "mlx/array.h"

namespace mlx_engine {

// dst[e] = src[offset of element e] for the row-major order of `shape` (strides in elements),
// converted to Out with static_cast.
template <typename Out, typename T>
inline void gather_as(const T* src, const mlx::core::Shape& shape, const mlx::core::Strides& strides, Out* dst) {
  const int nd = (int)shape.size();
  int64_t total = 1;
  for (int i = 0; i < nd; ++i) total *= shape[i];
  std::vector<int64_t> idx((size_t)nd, 0);
  int64_t off = 0;
  for (int64_t e = 0; e < total; ++e) {
    dst[e] = static_cast<Out>(src[off]);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (int64_t)(shape[d] - 1);
      idx[d] = 0;
    }
  }
}

// gather_as into float32.
template <typename T>
inline void gather_to_f32(const T* src, const mlx::core::Shape& shape, const mlx::core::Strides& strides, float* dst) {
  gather_as<float>(src, shape, strides, dst);
}

}  // namespace mlx_engine
