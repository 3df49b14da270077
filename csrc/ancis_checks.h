// Input validation shared by the CPU and CUDA entry points (host code only).
// TORCH_CHECK_VALUE raises ValueError in Python, with a message naming the bad input.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/result_type.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace ancis {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    s += (d ? ", " : "") + std::to_string(t.size(d));
  }
  return s + "]";
}

inline void check_floating(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                    t.scalar_type());
}

inline void check_integral(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK_VALUE(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
                    " must be an integer tensor, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b,
                              const char* op) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b, " is on ",
                    b.device(), "; move them to the same device");
}

inline void check_boxes(const at::Tensor& boxes, const char* op) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must have shape [N, 4] (y1, x1, y2, x2), got ",
                    shape_str(boxes));
}

// Half and bfloat16 boxes are processed in float32.
inline at::Tensor upcast_reduced(const at::Tensor& t) {
  const auto st = t.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) ? t.to(at::kFloat) : t;
}

inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores,
                             const std::optional<at::Tensor>& idxs) {
  const char* op = idxs ? "batched_nms" : "nms";
  check_boxes(boxes, op);
  check_floating(boxes, "boxes", op);
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must have shape [",
                    boxes.size(0), "] to match boxes ", shape_str(boxes), ", got ", shape_str(scores));
  check_floating(scores, "scores", op);
  check_same_device(boxes, scores, "boxes", "scores", op);
  if (idxs) {
    TORCH_CHECK_VALUE(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op, ": idxs must have shape [",
                      boxes.size(0), "], got ", shape_str(*idxs));
    check_integral(*idxs, "idxs", op);
    check_same_device(boxes, *idxs, "boxes", "idxs", op);
  }
}

inline void check_decode_inputs(const at::Tensor& locs, const at::Tensor& priors, at::ArrayRef<double> variances,
                                const char* op) {
  TORCH_CHECK_VALUE(locs.dim() >= 2 && locs.size(-1) == 4, op, ": locs must have shape [..., P, 4], got ",
                    shape_str(locs));
  TORCH_CHECK_VALUE(priors.dim() == 2 && priors.size(1) == 4 && priors.size(0) == locs.size(-2), op,
                    ": priors must have shape [", locs.size(-2), ", 4] (cy, cx, h, w) to match locs ",
                    shape_str(locs), ", got ", shape_str(priors));
  check_floating(locs, "locs", op);
  check_floating(priors, "priors", op);
  check_same_device(locs, priors, "locs", "priors", op);
  TORCH_CHECK_VALUE(variances.size() == 2, op, ": variances must have 2 values, got ", variances.size());
}

// Output dtype of decode: torch's promotion of locs and priors. Supported: the locs dtype,
// or float32 for half/bfloat16 locs (a half model with float32 priors).
inline at::ScalarType decode_out_type(const at::Tensor& locs, const at::Tensor& priors, const char* op) {
  const at::ScalarType out = at::result_type(locs, priors);
  const at::ScalarType lt = locs.scalar_type();
  TORCH_CHECK_VALUE(out == lt || (out == at::kFloat && (lt == at::kHalf || lt == at::kBFloat16)), op,
                    ": priors dtype ", priors.scalar_type(), " with locs dtype ", lt,
                    " is not supported; give priors the dtype of locs");
  return out;
}

inline void check_detect_inputs(const at::Tensor& locs, const at::Tensor& conf, const at::Tensor& priors,
                                std::optional<int64_t> pre_nms_top_k, int64_t max_det,
                                at::ArrayRef<double> variances) {
  const char* op = "detect";
  TORCH_CHECK_VALUE(locs.dim() == 3 && locs.size(2) == 4, op, ": locs must have shape [B, P, 4], got ",
                    shape_str(locs));
  TORCH_CHECK_VALUE(conf.dim() == 3 && conf.size(0) == locs.size(0) && conf.size(1) == locs.size(1) &&
                        conf.size(2) >= 1,
                    op, ": conf_logits must have shape [", locs.size(0), ", ", locs.size(1),
                    ", num_classes] to match locs, got ", shape_str(conf));
  check_decode_inputs(locs, priors, variances, op);
  check_floating(conf, "conf_logits", op);
  TORCH_CHECK_VALUE(conf.scalar_type() == locs.scalar_type(), op, ": conf_logits dtype ", conf.scalar_type(),
                    " differs from locs dtype ", locs.scalar_type());
  check_same_device(locs, conf, "locs", "conf_logits", op);
  TORCH_CHECK_VALUE(max_det >= 0, op, ": max_det must be >= 0, got ", max_det);
  TORCH_CHECK_VALUE(!pre_nms_top_k || *pre_nms_top_k >= 0, op, ": pre_nms_top_k must be >= 0 or None, got ",
                    pre_nms_top_k.value_or(0));
}

inline void check_crop_inputs(const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& batch_idx,
                              at::IntArrayRef out_size) {
  const char* op = "crop_and_resize";
  TORCH_CHECK_VALUE(features.dim() == 4, op, ": features must have shape [B, C, H, W], got ", shape_str(features));
  check_floating(features, "features", op);
  check_boxes(boxes, op);
  TORCH_CHECK_VALUE(at::isFloatingType(boxes.scalar_type()) || at::isIntegralType(boxes.scalar_type(), false), op,
                    ": boxes must be floating (continuous coordinates) or integer (inclusive crops), got ",
                    boxes.scalar_type());
  TORCH_CHECK_VALUE(batch_idx.dim() == 1 && batch_idx.size(0) == boxes.size(0), op, ": batch_idx must have shape [",
                    boxes.size(0), "], got ", shape_str(batch_idx));
  check_integral(batch_idx, "batch_idx", op);
  TORCH_CHECK_VALUE(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0, op,
                    ": out_size must be two positive integers (h, w), got ", out_size);
  check_same_device(features, boxes, "features", "boxes", op);
  check_same_device(features, batch_idx, "features", "batch_idx", op);
}

inline void check_paste_inputs(const at::Tensor& probs, const at::Tensor& boxes, const std::optional<at::Tensor>& mask_sizes,
                               const std::optional<at::Tensor>& scores, at::IntArrayRef input_size,
                               at::IntArrayRef output_size, const char* op) {
  TORCH_CHECK_VALUE(probs.dim() == 3, op, ": probs must have shape [K, h, w], got ", shape_str(probs));
  check_floating(probs, "probs", op);
  check_boxes(boxes, op);
  TORCH_CHECK_VALUE(boxes.size(0) == probs.size(0), op, ": boxes ", shape_str(boxes), " and probs ", shape_str(probs),
                    " disagree on K");
  check_floating(boxes, "boxes", op);
  check_same_device(probs, boxes, "probs", "boxes", op);
  if (mask_sizes) {
    TORCH_CHECK_VALUE(mask_sizes->dim() == 2 && mask_sizes->size(0) == probs.size(0) && mask_sizes->size(1) == 2, op,
                      ": mask_sizes must have shape [", probs.size(0), ", 2] (h_k, w_k), got ", shape_str(*mask_sizes));
    check_integral(*mask_sizes, "mask_sizes", op);
    check_same_device(probs, *mask_sizes, "probs", "mask_sizes", op);
  }
  if (scores) {
    TORCH_CHECK_VALUE(scores->dim() == 1 && scores->size(0) == probs.size(0), op, ": scores must have shape [",
                      probs.size(0), "], got ", shape_str(*scores));
    check_floating(*scores, "scores", op);
    check_same_device(probs, *scores, "probs", "scores", op);
  }
  TORCH_CHECK_VALUE(input_size.size() == 2 && input_size[0] > 0 && input_size[1] > 0, op,
                    ": input_size must be two positive integers (H, W), got ", input_size);
  TORCH_CHECK_VALUE(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0, op,
                    ": output_size must be two positive integers (H0, W0), got ", output_size);
}

}  // namespace ancis
