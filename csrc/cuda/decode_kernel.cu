// ancis::decode, CUDA kernel: one thread per prior, the same rounding steps as
// ancis_fast.boxes.decode computes with torch's CUDA kernels (exp included: torch's CUDA exp
// is the libdevice exp this file calls).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ancis_checks.h"
#include "decode_common.cuh"

namespace ancis {
namespace cuda {
namespace {

template <typename loc_t, typename out_t>
__global__ void decode_kernel(const loc_t* __restrict__ locs, const out_t* __restrict__ priors, int64_t rows,
                              int64_t num_priors, double v0, double v1, out_t* __restrict__ out) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    decode_prior_device<loc_t, out_t>(locs + 4 * r, priors + 4 * (r % num_priors), v0, v1, out + 4 * r);
  }
}

at::Tensor decode_cuda(const at::Tensor& locs, const at::Tensor& priors, at::ArrayRef<double> variances) {
  check_decode_inputs(locs, priors, variances, "decode");
  const at::ScalarType out_type = decode_out_type(locs, priors, "decode");
  const c10::cuda::CUDAGuard guard(locs.device());
  const at::Tensor l = locs.contiguous();
  at::Tensor out = at::empty(l.sizes(), l.options().dtype(out_type));
  const int64_t rows = l.numel() / 4;
  if (rows == 0) {
    return out;
  }
  const at::Tensor p = priors.to(out_type).contiguous();
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(rows, threads), 65535));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "ancis_decode_cuda", [&] {
    if (out_type == l.scalar_type()) {
      decode_kernel<scalar_t, scalar_t><<<blocks, threads, 0, stream>>>(
          l.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), rows, p.size(0), variances[0], variances[1],
          out.data_ptr<scalar_t>());
    } else {
      decode_kernel<scalar_t, float><<<blocks, threads, 0, stream>>>(
          l.data_ptr<scalar_t>(), p.data_ptr<float>(), rows, p.size(0), variances[0], variances[1],
          out.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CUDA, m) {
  m.impl("decode", TORCH_FN(decode_cuda));
}

}  // namespace cuda
}  // namespace ancis
