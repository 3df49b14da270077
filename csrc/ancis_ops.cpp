// The ancis operator library: every schema, in one place.
//
// Kernels register per dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu; fake (meta)
// kernels for torch.compile / torch.export are registered from Python
// (ancis_fast/ops/_native.py). Boxes are (y1, x1, y2, x2), priors (cy, cx, h, w).
#include <torch/library.h>
#include <torch/version.h>

#include <string>

namespace ancis {
namespace {

std::string build_info() {
  std::string info = "torch=" TORCH_VERSION;
#if defined(WITH_CUDA)
  info += ";cuda=1";
#else
  info += ";cuda=0";
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(ancis, m) {
  // locs [..., P, 4] (dy, dx, dh, dw), priors [P, 4] -> boxes [..., P, 4].
  m.def("decode(Tensor locs, Tensor priors, float[2] variances=[0.1, 0.2]) -> Tensor");
  // Whole-batch Detect (spec §4). Returns boxes [B, M, 4], scores [B, M] (locs dtype),
  // labels [B, M] int64, counts [B] int64 with M = (num_classes - 1) * max_det; rows past
  // counts[b] are zero. pre_nms_top_k=None lifts the release's 200-candidate cap.
  m.def(
      "detect(Tensor locs, Tensor conf_logits, Tensor priors, float conf_thresh=0.3, float nms_thresh=0.3, "
      "int? pre_nms_top_k=200, int max_det=500, float[2] variances=[0.1, 0.2]) -> (Tensor, Tensor, Tensor, Tensor)");
  // boxes [N, 4], scores [N] -> kept indices int64 [K], descending score.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // features [B, C, H, W], boxes [K, 4] (float: continuous; integer: inclusive crops),
  // batch_idx [K] -> [K, C, h, w].
  m.def("crop_and_resize(Tensor features, Tensor boxes, Tensor batch_idx, int[2] out_size, bool align_corners=False) -> Tensor");
  // probs [K, h, w], boxes [K, 4] in input pixels -> bool [K, H0, W0].
  m.def(
      "paste_masks(Tensor probs, Tensor boxes, Tensor? mask_sizes, int[2] input_size, int[2] output_size, "
      "float threshold=0.5) -> Tensor");
  // Same, as one int32 label image [H0, W0]: label k+1 for box k, highest score on top.
  m.def(
      "paste_labels(Tensor probs, Tensor boxes, Tensor? mask_sizes, Tensor? scores, int[2] input_size, "
      "int[2] output_size, float threshold=0.5) -> Tensor");
  m.def("_build_info() -> str", &build_info);
}

}  // namespace ancis
