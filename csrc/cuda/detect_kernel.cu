// ancis::detect, CUDA kernels: the release's Detect step (spec §4) for a whole batch without
// host synchronisation.
//
// softmax (ATen, the reference's bits) -> one key per (image, class, prior): the score if it
// is strictly above conf_thresh, else -inf -> one stable segmented sort (ATen) -> decode of
// the top pre_nms_top_k candidates of each segment only -> bitmask greedy NMS with the
// reference's IoU arithmetic, max_det per class, score > 0 -> classes merged per image by a
// stable rank (class order breaks score ties, as detections_of_image's stable sort).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/softmax.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../ancis_checks.h"
#include "nms_common.cuh"

namespace ancis {
namespace cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), 65535)));
}

// keys [S, P]: the class score where > thr, -inf elsewhere (S = B * (nc - 1) segments).
template <typename loc_t, typename acc_t>
__global__ void candidate_keys_kernel(const loc_t* __restrict__ probs, int64_t num_priors, int64_t nc, int64_t total,
                                      acc_t thr, acc_t* __restrict__ keys) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t seg = idx / num_priors, p = idx % num_priors;
    const int64_t b = seg / (nc - 1), c = seg % (nc - 1) + 1;
    const acc_t v = static_cast<acc_t>(probs[(b * num_priors + p) * nc + c]);
    keys[idx] = v > thr ? v : -std::numeric_limits<acc_t>::infinity();
  }
}

// Candidates of each segment, capped at k_max: sorted keys are > -inf first.
template <typename acc_t>
__global__ void segment_counts_kernel(const acc_t* __restrict__ sorted_keys, int64_t segments, int64_t num_priors,
                                      int64_t k_max, int64_t* __restrict__ counts) {
  const int64_t seg = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (seg >= segments) return;
  const acc_t* row = sorted_keys + seg * num_priors;
  int64_t lo = 0, hi = num_priors;  // first -inf in [lo, hi]
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row[mid] > -std::numeric_limits<acc_t>::infinity()) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  counts[seg] = lo < k_max ? lo : k_max;
}

// Decodes the surviving candidates: boxes [S, k_max, 4] (output dtype), scores [S, k_max].
template <typename loc_t, typename out_t, typename acc_t>
__global__ void decode_candidates_kernel(const loc_t* __restrict__ locs, const out_t* __restrict__ priors,
                                         const acc_t* __restrict__ sorted_keys, const int64_t* __restrict__ sorted_idx,
                                         const int64_t* __restrict__ counts, int64_t num_priors, int64_t nc,
                                         int64_t k_max, int64_t total, double v0, double v1,
                                         out_t* __restrict__ boxes, acc_t* __restrict__ scores) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t seg = idx / k_max, i = idx % k_max;
    if (i >= counts[seg]) continue;
    const int64_t p = sorted_idx[seg * num_priors + i];
    const int64_t b = seg / (nc - 1);
    decode_prior_device<loc_t, out_t>(locs + (b * num_priors + p) * 4, priors + p * 4, v0, v1, boxes + idx * 4);
    scores[idx] = sorted_keys[seg * num_priors + i];
  }
}

// detections_of_image keeps rows with score > 0 (after the max_det cut).
template <typename acc_t>
struct ScorePositive {
  const acc_t* scores;
  int64_t k_max;
  __device__ bool operator()(int64_t seg, int64_t i) const { return scores[seg * k_max + i] > acc_t(0); }
};

// One block per image: each kept detection finds its slot by counting, in the other classes
// of its image, the detections that the stable merge puts before it.
template <typename loc_t, typename out_t, typename acc_t>
__global__ void merge_classes_kernel(const out_t* __restrict__ cand_boxes, const acc_t* __restrict__ cand_scores,
                                     const int64_t* __restrict__ kept, const int64_t* __restrict__ num_kept,
                                     int64_t nc, int64_t k_max, int64_t cap, int64_t slots,
                                     loc_t* __restrict__ boxes_out, loc_t* __restrict__ scores_out,
                                     int64_t* __restrict__ labels_out, int64_t* __restrict__ counts_out) {
  const int64_t b = blockIdx.x, classes = nc - 1;
  auto score_at = [&](int64_t seg, int64_t r) { return cand_scores[seg * k_max + kept[seg * cap + r]]; };
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t seg = b * classes + c;
    for (int64_t r = threadIdx.x; r < num_kept[seg]; r += blockDim.x) {
      const acc_t s = score_at(seg, r);
      int64_t pos = r;
      for (int64_t c2 = 0; c2 < classes; ++c2) {
        if (c2 == c) continue;
        const int64_t seg2 = b * classes + c2;
        // Entries of seg2 before this one: score >= s for earlier classes, > s for later.
        int64_t lo = 0, hi = num_kept[seg2];
        while (lo < hi) {
          const int64_t mid = (lo + hi) / 2;
          const acc_t v = score_at(seg2, mid);
          if (c2 < c ? v >= s : v > s) {
            lo = mid + 1;
          } else {
            hi = mid;
          }
        }
        pos += lo;
      }
      const int64_t i = kept[seg * cap + r];
      const out_t* box = cand_boxes + (seg * k_max + i) * 4;
      loc_t* dst = boxes_out + (b * slots + pos) * 4;
#pragma unroll
      for (int j = 0; j < 4; ++j) dst[j] = static_cast<loc_t>(box[j]);
      scores_out[b * slots + pos] = static_cast<loc_t>(s);
      labels_out[b * slots + pos] = c + 1;
    }
  }
  if (threadIdx.x == 0) {
    int64_t total = 0;
    for (int64_t c = 0; c < classes; ++c) total += num_kept[b * classes + c];
    counts_out[b] = total;
  }
}

struct DetectArgs {
  double conf_thresh, nms_thresh;
  int64_t k_max, max_det;
  double v0, v1;
};

template <typename loc_t, typename out_t>
void detect_launch(const at::Tensor& locs, const at::Tensor& probs, const at::Tensor& priors, const DetectArgs& args,
                   at::Tensor& boxes, at::Tensor& scores, at::Tensor& labels, at::Tensor& counts) {
  using acc_t = at::opmath_type<loc_t>;
  const int64_t batch = locs.size(0), num_priors = locs.size(1), nc = probs.size(2);
  const int64_t segments = batch * (nc - 1), k_max = args.k_max, slots = boxes.size(1);
  const auto opts = locs.options();
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor keys = at::empty({segments, num_priors}, opts.dtype(acc_type));
  candidate_keys_kernel<loc_t, acc_t><<<grid_for(keys.numel()), kThreads, 0, stream>>>(
      probs.data_ptr<loc_t>(), num_priors, nc, keys.numel(),
      static_cast<acc_t>(static_cast<loc_t>(args.conf_thresh)), keys.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto sorted = keys.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
  const at::Tensor sorted_keys = std::get<0>(sorted).contiguous(), sorted_idx = std::get<1>(sorted).contiguous();

  at::Tensor n_seg = at::empty({segments}, opts.dtype(at::kLong));
  segment_counts_kernel<acc_t><<<grid_for(segments), kThreads, 0, stream>>>(
      sorted_keys.data_ptr<acc_t>(), segments, num_priors, k_max, n_seg.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor cand_boxes = at::zeros({segments, k_max, 4}, opts.dtype(priors.scalar_type()));
  at::Tensor cand_scores = at::zeros({segments, k_max}, opts.dtype(acc_type));
  decode_candidates_kernel<loc_t, out_t, acc_t><<<grid_for(segments * k_max), kThreads, 0, stream>>>(
      locs.data_ptr<loc_t>(), priors.data_ptr<out_t>(), sorted_keys.data_ptr<acc_t>(), sorted_idx.data_ptr<int64_t>(),
      n_seg.data_ptr<int64_t>(), num_priors, nc, k_max, segments * k_max, args.v0, args.v1,
      cand_boxes.data_ptr<out_t>(), cand_scores.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t col_blocks = ceil_div(k_max, kMaskBits);
  at::Tensor mask = at::empty({segments * k_max * col_blocks}, opts.dtype(at::kLong));
  overlap_mask_kernel<out_t, IoUKind::Reference><<<dim3(col_blocks, col_blocks, segments), kMaskBits, 0, stream>>>(
      cand_boxes.data_ptr<out_t>(), n_seg.data_ptr<int64_t>(), nullptr, k_max, col_blocks,
      static_cast<out_t>(args.nms_thresh), reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t cap = std::min(args.max_det, k_max);
  at::Tensor removed = at::zeros({segments, col_blocks}, opts.dtype(at::kLong));
  at::Tensor kept = at::empty({segments, cap}, opts.dtype(at::kLong));
  at::Tensor num_kept = at::empty({segments}, opts.dtype(at::kLong));
  greedy_kernel<<<segments, 128, 0, stream>>>(reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()),
                                              n_seg.data_ptr<int64_t>(), k_max, col_blocks, args.max_det, cap,
                                              reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()),
                                              kept.data_ptr<int64_t>(), num_kept.data_ptr<int64_t>(),
                                              ScorePositive<acc_t>{cand_scores.data_ptr<acc_t>(), k_max});
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  merge_classes_kernel<loc_t, out_t, acc_t><<<batch, kThreads, 0, stream>>>(
      cand_boxes.data_ptr<out_t>(), cand_scores.data_ptr<acc_t>(), kept.data_ptr<int64_t>(),
      num_kept.data_ptr<int64_t>(), nc, k_max, cap, slots, boxes.data_ptr<loc_t>(), scores.data_ptr<loc_t>(),
      labels.data_ptr<int64_t>(), counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect_cuda(
    const at::Tensor& locs, const at::Tensor& conf_logits, const at::Tensor& priors, double conf_thresh,
    double nms_thresh, std::optional<int64_t> pre_nms_top_k, int64_t max_det, at::ArrayRef<double> variances) {
  check_detect_inputs(locs, conf_logits, priors, pre_nms_top_k, max_det, variances);
  const at::ScalarType out_type = decode_out_type(locs, priors, "detect");
  const c10::cuda::CUDAGuard guard(locs.device());
  const int64_t batch = locs.size(0), num_priors = locs.size(1), nc = conf_logits.size(2);
  const int64_t slots = (nc - 1) * max_det;
  at::Tensor boxes = at::zeros({batch, slots, 4}, locs.options());
  at::Tensor scores = at::zeros({batch, slots}, locs.options());
  at::Tensor labels = at::zeros({batch, slots}, locs.options().dtype(at::kLong));
  at::Tensor counts = at::zeros({batch}, locs.options().dtype(at::kLong));
  const int64_t k_max = pre_nms_top_k ? std::min(*pre_nms_top_k, num_priors) : num_priors;
  if (slots == 0 || batch == 0 || k_max == 0) {
    return {boxes, scores, labels, counts};
  }
  TORCH_CHECK_VALUE(batch * (nc - 1) <= 65535, "detect: batch * (num_classes - 1) = ", batch * (nc - 1),
                    " exceeds the CUDA grid limit of 65535; split the batch");
  const DetectArgs args{conf_thresh, nms_thresh, k_max, max_det, variances[0], variances[1]};
  const at::Tensor l = locs.contiguous(), p = priors.to(out_type).contiguous();
  const at::Tensor probs = at::softmax(conf_logits, -1).contiguous();  // the reference's own softmax
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "ancis_detect_cuda", [&] {
    if (out_type == l.scalar_type()) {
      detect_launch<scalar_t, scalar_t>(l, probs, p, args, boxes, scores, labels, counts);
    } else {
      detect_launch<scalar_t, float>(l, probs, p, args, boxes, scores, labels, counts);
    }
  });
  return {boxes, scores, labels, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CUDA, m) {
  m.impl("detect", TORCH_FN(detect_cuda));
}

}  // namespace cuda
}  // namespace ancis
