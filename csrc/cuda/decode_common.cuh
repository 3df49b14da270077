// Device helpers shared by the CUDA kernels: grid arithmetic and on-device box decoding.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../ancis_common.h"

namespace ancis {
namespace cuda {

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// torch's CUDA exp: std::exp in the op-math type (libdevice, not the fast intrinsic).
__device__ __forceinline__ float exp_opmath(float x) {
  return ::expf(x);
}
__device__ __forceinline__ double exp_opmath(double x) {
  return ::exp(x);
}

// decode_prior with e = exp(l[2:4] * v1) computed the way torch's CUDA kernels do:
// l * v1 rounded to the locs dtype, then exp in op-math, rounded to the locs dtype.
template <typename loc_t, typename out_t>
__device__ __forceinline__ void decode_prior_device(const loc_t* l, const out_t* p, double v0, double v1, out_t* o) {
  using lop = at::opmath_type<loc_t>;
  loc_t e[2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const loc_t scaled = static_cast<loc_t>(mul_rn(static_cast<lop>(l[2 + k]), static_cast<lop>(v1)));
    e[k] = static_cast<loc_t>(exp_opmath(static_cast<lop>(scaled)));
  }
  decode_prior<loc_t, out_t>(l, p, e, v0, o);
}

}  // namespace cuda
}  // namespace ancis
