// ancis::crop_and_resize, CUDA kernel: one thread per output element, the same sample
// geometry and arithmetic as the CPU kernel (ancis_common.h). A batch_idx outside the batch
// gives zeros (checking it would need a host synchronisation).
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

template <typename scalar_t, typename box_t>
__global__ void crop_kernel(const scalar_t* __restrict__ features, const box_t* __restrict__ boxes,
                            const int64_t* __restrict__ batch_idx, int64_t batch, int64_t channels, int64_t height,
                            int64_t width, int64_t out_h, int64_t out_w, bool align_corners, int64_t total,
                            scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool integer_crop = !std::is_floating_point<box_t>::value;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = idx % out_w, y = (idx / out_w) % out_h, c = (idx / (out_w * out_h)) % channels;
    const int64_t k = idx / (out_w * out_h * channels);
    const int64_t b = batch_idx[k];
    const box_t* r = boxes + 4 * k;
    BilinearTap<acc_t> ty, tx;
    if constexpr (integer_crop) {
      const int64_t y1 = max(static_cast<int64_t>(r[0]), int64_t(0)), x1 = max(static_cast<int64_t>(r[1]), int64_t(0));
      const int64_t y2 = min(static_cast<int64_t>(r[2]), height - 1), x2 = min(static_cast<int64_t>(r[3]), width - 1);
      if (y2 < y1 || x2 < x1) {
        out[idx] = scalar_t(0);
        continue;
      }
      ty = crop_tap<acc_t>(y1, y2, y, out_h, align_corners);
      tx = crop_tap<acc_t>(x1, x2, x, out_w, align_corners);
    } else {
      ty = box_tap<acc_t>(static_cast<acc_t>(r[0]), static_cast<acc_t>(r[2]), y, out_h, height, align_corners);
      tx = box_tap<acc_t>(static_cast<acc_t>(r[1]), static_cast<acc_t>(r[3]), x, out_w, width, align_corners);
    }
    if (b < 0 || b >= batch || !ty.valid || !tx.valid) {
      out[idx] = scalar_t(0);
      continue;
    }
    const scalar_t* plane = features + (b * channels + c) * height * width;
    const scalar_t* lo = plane + ty.lo * width;
    const scalar_t* hi = plane + ty.hi * width;
    acc_t v = 0;
    v += bilinear_combine<acc_t>(ty, tx, static_cast<acc_t>(lo[tx.lo]), static_cast<acc_t>(lo[tx.hi]),
                                 static_cast<acc_t>(hi[tx.lo]), static_cast<acc_t>(hi[tx.hi]));
    out[idx] = static_cast<scalar_t>(v);
  }
}

at::Tensor crop_and_resize_cuda(const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& batch_idx,
                                at::IntArrayRef out_size, bool align_corners) {
  check_crop_inputs(features, boxes, batch_idx, out_size);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t k = boxes.size(0);
  at::Tensor out = at::empty({k, features.size(1), out_size[0], out_size[1]}, features.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor f = features.contiguous();
  const at::Tensor bidx = batch_idx.to(at::kLong).contiguous();
  const bool integer_crop = !at::isFloatingType(boxes.scalar_type());
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(out.numel(), threads), 1 << 20));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "ancis_crop_and_resize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (integer_crop) {
      const at::Tensor b = boxes.to(at::kLong).contiguous();
      crop_kernel<scalar_t, int64_t><<<blocks, threads, 0, stream>>>(
          f.data_ptr<scalar_t>(), b.data_ptr<int64_t>(), bidx.data_ptr<int64_t>(), f.size(0), f.size(1), f.size(2),
          f.size(3), out_size[0], out_size[1], align_corners, out.numel(), out.data_ptr<scalar_t>());
    } else {
      const at::Tensor b = boxes.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      crop_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
          f.data_ptr<scalar_t>(), b.data_ptr<acc_t>(), bidx.data_ptr<int64_t>(), f.size(0), f.size(1), f.size(2),
          f.size(3), out_size[0], out_size[1], align_corners, out.numel(), out.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CUDA, m) {
  m.impl("crop_and_resize", TORCH_FN(crop_and_resize_cuda));
}

}  // namespace cuda
}  // namespace ancis
