// ancis::nms and ancis::batched_nms, CUDA kernels: 64-bit overlap bitmask + greedy pass on
// the device. The only host synchronisation is reading the number of kept boxes at the end
// (the output length depends on the data).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ancis_checks.h"
#include "nms_common.cuh"

namespace ancis {
namespace cuda {
namespace {

at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
                    double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = upcast_reduced(boxes).index_select(0, order).contiguous();
  at::Tensor classes;
  if (idxs) {
    classes = idxs->to(at::kLong).index_select(0, order).contiguous();
  }
  const int64_t col_blocks = ceil_div(n, kMaskBits);
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor removed = at::zeros({col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor kept = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor num_kept = at::empty({1}, boxes.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "ancis_nms_cuda", [&] {
    const dim3 grid(col_blocks, col_blocks, 1);
    overlap_mask_kernel<scalar_t, IoUKind::Torchvision><<<grid, kMaskBits, 0, stream>>>(
        sorted.data_ptr<scalar_t>(), nullptr, idxs ? classes.data_ptr<int64_t>() : nullptr, n, col_blocks,
        threshold_as<scalar_t>(iou_threshold), reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  greedy_kernel<<<1, 256, 0, stream>>>(reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), nullptr, n,
                                       col_blocks, -1, n, reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()),
                                       kept.data_ptr<int64_t>(), num_kept.data_ptr<int64_t>(), ListAll{});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t count = num_kept.item<int64_t>();
  return order.index_select(0, kept.narrow(0, 0, count));
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl(boxes, scores, std::nullopt, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_impl(boxes, scores, idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
  m.impl("batched_nms", TORCH_FN(batched_nms_cuda));
}

}  // namespace cuda
}  // namespace ancis
