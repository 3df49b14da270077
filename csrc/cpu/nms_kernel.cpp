// ancis::nms and ancis::batched_nms, CPU kernels.
//
// Same keep as torchvision.ops.nms / batched_nms: boxes sorted by descending score
// (stable), IoU without +1, a box is dropped when its IoU with a kept box of the same class
// is greater than the threshold.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>

#include "../ancis_checks.h"
#include "greedy_nms.h"
#include "parallel.h"

namespace ancis {
namespace cpu {
namespace {

// Gathers boxes[order[begin..end)] into structure-of-arrays form.
template <typename T>
SortedBoxes<T> gather_sorted(const T* boxes, const int64_t* order, int64_t begin, int64_t end) {
  SortedBoxes<T> out(end - begin);
  for (int64_t i = begin; i < end; ++i) {
    const T* b = boxes + 4 * order[i];
    const int64_t o = i - begin;
    out.y1[o] = b[0];
    out.x1[o] = b[1];
    out.y2[o] = b[2];
    out.x2[o] = b[3];
    out.area[o] = box_area<T>(b[0], b[1], b[2], b[3]);
    out.pos[o] = i;
  }
  return out;
}

at::Tensor sort_desc_stable(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores, c10::nullopt);
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = sort_desc_stable(scores).contiguous();
  const int64_t* order_p = order.data_ptr<int64_t>();
  std::vector<int64_t> keep;
  const at::Tensor b = upcast_reduced(boxes).contiguous();
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "ancis_nms_cpu", [&] {
    SortedBoxes<scalar_t> sorted = gather_sorted<scalar_t>(b.data_ptr<scalar_t>(), order_p, 0, n);
    greedy_nms_sorted<scalar_t, IoUKind::Torchvision>(sorted, threshold_as<scalar_t>(iou_threshold), -1, keep);
  });
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  int64_t* out_p = out.data_ptr<int64_t>();
  for (size_t i = 0; i < keep.size(); ++i) {
    out_p[i] = order_p[keep[i]];
  }
  return out;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = sort_desc_stable(scores).contiguous();
  const int64_t* order_p = order.data_ptr<int64_t>();
  const at::Tensor cls = idxs.to(at::kLong).contiguous();
  const int64_t* cls_p = cls.data_ptr<int64_t>();

  // Sorted positions grouped by class, each group still in score order.
  std::vector<int64_t> by_class(n);
  std::iota(by_class.begin(), by_class.end(), 0);
  std::stable_sort(by_class.begin(), by_class.end(),
                   [&](int64_t a, int64_t b) { return cls_p[order_p[a]] < cls_p[order_p[b]]; });
  std::vector<int64_t> group_start{0};
  for (int64_t i = 1; i < n; ++i) {
    if (cls_p[order_p[by_class[i]]] != cls_p[order_p[by_class[i - 1]]]) {
      group_start.push_back(i);
    }
  }
  group_start.push_back(n);
  const int64_t groups = static_cast<int64_t>(group_start.size()) - 1;
  int64_t pairs = 0;  // IoUs the per-class greedy passes may compute
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t size = group_start[g + 1] - group_start[g];
    pairs += size * size / 2;
  }

  std::vector<uint8_t> kept(n, 0);
  const at::Tensor b = upcast_reduced(boxes).contiguous();
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "ancis_batched_nms_cpu", [&] {
    const scalar_t* b_p = b.data_ptr<scalar_t>();
    const scalar_t thr = threshold_as<scalar_t>(iou_threshold);
    at::parallel_for(0, groups, grain_for(groups, pairs + groups), [&](int64_t g0, int64_t g1) {
      std::vector<int64_t> group_order, keep;
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t begin = group_start[g], end = group_start[g + 1];
        group_order.resize(end - begin);
        for (int64_t i = begin; i < end; ++i) {
          group_order[i - begin] = order_p[by_class[i]];
        }
        SortedBoxes<scalar_t> sorted = gather_sorted<scalar_t>(b_p, group_order.data(), 0, end - begin);
        keep.clear();
        greedy_nms_sorted<scalar_t, IoUKind::Torchvision>(sorted, thr, -1, keep);
        for (int64_t k : keep) {
          kept[by_class[begin + k]] = 1;
        }
      }
    });
  });
  const int64_t num_kept = std::accumulate(kept.begin(), kept.end(), int64_t{0});
  at::Tensor out = at::empty({num_kept}, boxes.options().dtype(at::kLong));
  int64_t* out_p = out.data_ptr<int64_t>();
  for (int64_t i = 0, w = 0; i < n; ++i) {
    if (kept[i]) {
      out_p[w++] = order_p[i];
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
  m.impl("batched_nms", TORCH_FN(batched_nms_cpu));
}

}  // namespace cpu
}  // namespace ancis
