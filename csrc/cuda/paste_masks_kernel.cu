// ancis::paste_masks and ancis::paste_labels, CUDA kernels: one thread per output pixel
// (per box for the masks). The OpenCV geometry and float arithmetic are those of the CPU
// kernel (ancis_common.h), evaluated for the one canvas pixel a thread needs.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/arange.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "../ancis_checks.h"
#include "decode_common.cuh"

namespace ancis {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Per box: inclusive canvas bounds (y1, x1, y2, x2), patch size (h_k, w_k); y1 = -1 when the
// box has no mask.
__global__ void paste_jobs_kernel(const double* __restrict__ boxes, const int64_t* __restrict__ mask_sizes, int64_t k,
                                  int64_t h, int64_t w, int64_t height, int64_t width, int64_t* __restrict__ jobs) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= k) return;
  int64_t* job = jobs + 6 * i;
  const double* b = boxes + 4 * i;
  const int64_t mh = mask_sizes ? mask_sizes[2 * i] : h, mw = mask_sizes ? mask_sizes[2 * i + 1] : w;
  job[4] = min(max(mh, int64_t(0)), h);
  job[5] = min(max(mw, int64_t(0)), w);
  if (job[4] == 0 || job[5] == 0 || !paste_bounds(b[0], b[1], b[2], b[3], height, width, job)) {
    job[0] = -1;
  }
}

// Value of the canvas pixel (cy, cx) for this job: cv::resize INTER_LINEAR of the patch into
// the box, >= thr. The caller has checked that the pixel lies in the box.
__device__ bool canvas_pixel(const float* __restrict__ patch, int64_t stride, const int64_t* job, int64_t cy,
                             int64_t cx, float thr) {
  const int64_t bh = job[2] - job[0] + 1, bw = job[3] - job[1] + 1, sh = job[4], sw = job[5];
  const int64_t py = cy - job[0], px = cx - job[1];
  if (sh == bh && sw == bw) {
    return patch[py * stride + px] >= thr;
  }
  const LinearTap tx = cv_linear_tap(px, sw, bw), ty = cv_linear_tap(py, sh, bh);
  auto row = [&](int64_t r) {
    const float* s = patch + r * stride;
    if (tx.single) return mul_rn(s[tx.src], 1.f);
    return add_rn(mul_rn(s[tx.src], sub_rn(1.f, tx.w1)), mul_rn(s[tx.src + 1], tx.w1));
  };
  const int64_t r1 = min(static_cast<int64_t>(ty.src) + 1, sh - 1);
  const float v = add_rn(mul_rn(row(ty.src), sub_rn(1.f, ty.w1)), mul_rn(row(r1), ty.w1));
  return v >= thr;
}

__global__ void paste_masks_kernel(const float* __restrict__ probs, const int64_t* __restrict__ jobs, int64_t k,
                                   int64_t h, int64_t w, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                                   float thr, bool* __restrict__ out) {
  const int64_t total = k * out_h * out_w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ox = idx % out_w, oy = (idx / out_w) % out_h, i = idx / (out_w * out_h);
    const int64_t* job = jobs + 6 * i;
    const int64_t cy = cv_nearest_src(oy, height, out_h), cx = cv_nearest_src(ox, width, out_w);
    bool v = false;
    if (job[0] >= 0 && cy >= job[0] && cy <= job[2] && cx >= job[1] && cx <= job[3]) {
      v = canvas_pixel(probs + i * h * w, w, job, cy, cx, thr);
    }
    out[idx] = v;
  }
}

// priority [K]: box indices, highest first. The first box whose mask covers a pixel labels it.
__global__ void paste_labels_kernel(const float* __restrict__ probs, const int64_t* __restrict__ jobs,
                                    const int64_t* __restrict__ priority, int64_t k, int64_t h, int64_t w,
                                    int64_t height, int64_t width, int64_t out_h, int64_t out_w, float thr,
                                    int32_t* __restrict__ out) {
  const int64_t total = out_h * out_w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ox = idx % out_w, oy = idx / out_w;
    const int64_t cy = cv_nearest_src(oy, height, out_h), cx = cv_nearest_src(ox, width, out_w);
    int32_t label = 0;
    for (int64_t r = 0; r < k; ++r) {
      const int64_t i = priority[r];
      const int64_t* job = jobs + 6 * i;
      if (job[0] < 0 || cy < job[0] || cy > job[2] || cx < job[1] || cx > job[3]) continue;
      if (canvas_pixel(probs + i * h * w, w, job, cy, cx, thr)) {
        label = static_cast<int32_t>(i + 1);
        break;
      }
    }
    out[idx] = label;
  }
}

struct Prepared {
  at::Tensor probs, jobs;
};

Prepared prepare(const at::Tensor& probs, const at::Tensor& boxes, const std::optional<at::Tensor>& mask_sizes,
                 at::IntArrayRef input_size, cudaStream_t stream) {
  const int64_t k = probs.size(0);
  Prepared p{probs.to(at::kFloat).contiguous(), at::empty({k, 6}, probs.options().dtype(at::kLong))};
  const at::Tensor b = boxes.to(at::kDouble).contiguous();
  at::Tensor sizes;
  if (mask_sizes) sizes = mask_sizes->to(at::kLong).contiguous();
  paste_jobs_kernel<<<static_cast<int>(ceil_div(k, kThreads)), kThreads, 0, stream>>>(
      b.data_ptr<double>(), mask_sizes ? sizes.data_ptr<int64_t>() : nullptr, k, probs.size(1), probs.size(2),
      input_size[0], input_size[1], p.jobs.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return p;
}

int grid_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), 1 << 20)));
}

at::Tensor paste_masks_cuda(const at::Tensor& probs, const at::Tensor& boxes, const std::optional<at::Tensor>& mask_sizes,
                            at::IntArrayRef input_size, at::IntArrayRef output_size, double threshold) {
  check_paste_inputs(probs, boxes, mask_sizes, std::nullopt, input_size, output_size, "paste_masks");
  const c10::cuda::CUDAGuard guard(probs.device());
  const int64_t k = probs.size(0);
  at::Tensor out = at::empty({k, output_size[0], output_size[1]}, probs.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Prepared p = prepare(probs, boxes, mask_sizes, input_size, stream);
  paste_masks_kernel<<<grid_for(out.numel()), kThreads, 0, stream>>>(
      p.probs.data_ptr<float>(), p.jobs.data_ptr<int64_t>(), k, probs.size(1), probs.size(2), input_size[0],
      input_size[1], output_size[0], output_size[1], static_cast<float>(threshold), out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor paste_labels_cuda(const at::Tensor& probs, const at::Tensor& boxes, const std::optional<at::Tensor>& mask_sizes,
                             const std::optional<at::Tensor>& scores, at::IntArrayRef input_size,
                             at::IntArrayRef output_size, double threshold) {
  check_paste_inputs(probs, boxes, mask_sizes, scores, input_size, output_size, "paste_labels");
  const c10::cuda::CUDAGuard guard(probs.device());
  const int64_t k = probs.size(0);
  at::Tensor out = at::zeros({output_size[0], output_size[1]}, probs.options().dtype(at::kInt));
  if (k == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Prepared p = prepare(probs, boxes, mask_sizes, input_size, stream);
  const at::Tensor priority =
      scores ? std::get<1>(scores->sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous()
             : at::arange(k, probs.options().dtype(at::kLong));
  paste_labels_kernel<<<grid_for(out.numel()), kThreads, 0, stream>>>(
      p.probs.data_ptr<float>(), p.jobs.data_ptr<int64_t>(), priority.data_ptr<int64_t>(), k, probs.size(1),
      probs.size(2), input_size[0], input_size[1], output_size[0], output_size[1], static_cast<float>(threshold),
      out.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CUDA, m) {
  m.impl("paste_masks", TORCH_FN(paste_masks_cuda));
  m.impl("paste_labels", TORCH_FN(paste_labels_cuda));
}

}  // namespace cuda
}  // namespace ancis
