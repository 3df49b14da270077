// ancis::paste_masks and ancis::paste_labels, CPU kernels (spec §6).
//
// Per box: the integer paste box (round half to even, clipped to the input canvas), the
// probability patch resized into it with OpenCV's INTER_LINEAR geometry and weights,
// binarised at >= threshold; the canvas then maps to the output size with OpenCV's
// INTER_NEAREST rule. Only the output pixels that fall inside the box are touched.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../ancis_checks.h"
#include "../ancis_common.h"
#include "parallel.h"

namespace ancis {
namespace cpu {
namespace {

// Output pixel -> canvas pixel, one axis.
std::vector<int64_t> nearest_table(int64_t canvas_len, int64_t out_len) {
  std::vector<int64_t> t(out_len);
  for (int64_t d = 0; d < out_len; ++d) t[d] = cv_nearest_src(d, canvas_len, out_len);
  return t;
}

// One box: its canvas bounds, its binarised patch and the output window it covers.
struct PasteJob {
  bool valid = false;
  int64_t b[4] = {0, 0, 0, 0};  // inclusive canvas box (y1, x1, y2, x2)
  int64_t oy0 = 0, oy1 = 0, ox0 = 0, ox1 = 0;
  std::vector<uint8_t> patch;   // (y2-y1+1) x (x2-x1+1)
};

// cv::resize(src, (dw, dh), INTER_LINEAR) >= thr, generic OpenCV path, float32.
void resize_binarize(const float* src, int64_t stride, int64_t sh, int64_t sw, int64_t dh, int64_t dw, float thr,
                     uint8_t* dst) {
  if (sh == dh && sw == dw) {  // cv::resize copies
    for (int64_t y = 0; y < dh; ++y)
      for (int64_t x = 0; x < dw; ++x) dst[y * dw + x] = src[y * stride + x] >= thr;
    return;
  }
  std::vector<LinearTap> tx(dw);
  for (int64_t x = 0; x < dw; ++x) tx[x] = cv_linear_tap(x, sw, dw);
  std::vector<float> rows(sh * dw);  // horizontal pass of every source row
  for (int64_t r = 0; r < sh; ++r) {
    const float* s = src + r * stride;
    float* d = rows.data() + r * dw;
    for (int64_t x = 0; x < dw; ++x) {
      const LinearTap& t = tx[x];
      d[x] = t.single ? s[t.src] * 1.f : s[t.src] * (1.f - t.w1) + s[t.src + 1] * t.w1;
    }
  }
  for (int64_t y = 0; y < dh; ++y) {
    const LinearTap t = cv_linear_tap(y, sh, dh);
    const float b1 = t.w1, b0 = 1.f - t.w1;
    const float* r0 = rows.data() + t.src * dw;
    const float* r1 = rows.data() + std::min<int64_t>(t.src + 1, sh - 1) * dw;
    for (int64_t x = 0; x < dw; ++x) dst[y * dw + x] = r0[x] * b0 + r1[x] * b1 >= thr;
  }
}

std::vector<PasteJob> make_jobs(const at::Tensor& probs, const at::Tensor& boxes,
                                const std::optional<at::Tensor>& mask_sizes, at::IntArrayRef input_size,
                                const std::vector<int64_t>& ty, const std::vector<int64_t>& tx, double threshold) {
  const int64_t k = probs.size(0), h = probs.size(1), w = probs.size(2);
  const at::Tensor p = probs.to(at::kFloat).contiguous();
  const at::Tensor b = boxes.to(at::kDouble).contiguous();
  at::Tensor sizes;
  if (mask_sizes) {
    sizes = mask_sizes->to(at::kLong).contiguous();
    const int64_t* sp = sizes.data_ptr<int64_t>();
    for (int64_t i = 0; i < k; ++i) {
      TORCH_CHECK_VALUE(sp[2 * i] >= 0 && sp[2 * i] <= h && sp[2 * i + 1] >= 0 && sp[2 * i + 1] <= w,
                        "paste_masks: mask_sizes[", i, "] = (", sp[2 * i], ", ", sp[2 * i + 1],
                        ") exceeds the probs patch size (", h, ", ", w, ")");
    }
  }
  const float thr = static_cast<float>(threshold);
  std::vector<PasteJob> jobs(k);
  // Work per box: resizing the patch into its box (~ box area, unknown yet: guess the patch).
  at::parallel_for(0, k, grain_for(k, k * std::max<int64_t>(h * w, 256) * 2), [&](int64_t k0, int64_t k1) {
    for (int64_t i = k0; i < k1; ++i) {
      PasteJob& job = jobs[i];
      const int64_t mh = mask_sizes ? sizes.data_ptr<int64_t>()[2 * i] : h;
      const int64_t mw = mask_sizes ? sizes.data_ptr<int64_t>()[2 * i + 1] : w;
      const double* bb = b.data_ptr<double>() + 4 * i;
      if (mh == 0 || mw == 0 || !paste_bounds(bb[0], bb[1], bb[2], bb[3], input_size[0], input_size[1], job.b)) {
        continue;
      }
      job.oy0 = std::lower_bound(ty.begin(), ty.end(), job.b[0]) - ty.begin();
      job.oy1 = std::upper_bound(ty.begin(), ty.end(), job.b[2]) - ty.begin();
      job.ox0 = std::lower_bound(tx.begin(), tx.end(), job.b[1]) - tx.begin();
      job.ox1 = std::upper_bound(tx.begin(), tx.end(), job.b[3]) - tx.begin();
      if (job.oy0 >= job.oy1 || job.ox0 >= job.ox1) {
        continue;  // the box vanishes when the canvas shrinks to the output size
      }
      const int64_t bh = job.b[2] - job.b[0] + 1, bw = job.b[3] - job.b[1] + 1;
      job.patch.resize(bh * bw);
      resize_binarize(p.data_ptr<float>() + i * h * w, w, mh, mw, bh, bw, thr, job.patch.data());
      job.valid = true;
    }
  });
  return jobs;
}

// Output pixels the jobs cover together.
int64_t window_area(const std::vector<PasteJob>& jobs) {
  int64_t area = 0;
  for (const PasteJob& job : jobs) {
    if (job.valid) area += (job.oy1 - job.oy0) * (job.ox1 - job.ox0);
  }
  return area;
}

// Calls fn(oy, ox, value) for the output pixels of `job`.
template <typename Fn>
void for_each_pixel(const PasteJob& job, const std::vector<int64_t>& ty, const std::vector<int64_t>& tx, int64_t oy0,
                    int64_t oy1, Fn&& fn) {
  const int64_t bw = job.b[3] - job.b[1] + 1;
  for (int64_t oy = std::max(oy0, job.oy0); oy < std::min(oy1, job.oy1); ++oy) {
    const uint8_t* row = job.patch.data() + (ty[oy] - job.b[0]) * bw;
    for (int64_t ox = job.ox0; ox < job.ox1; ++ox) fn(oy, ox, row[tx[ox] - job.b[1]]);
  }
}

at::Tensor paste_masks_cpu(const at::Tensor& probs, const at::Tensor& boxes, const std::optional<at::Tensor>& mask_sizes,
                           at::IntArrayRef input_size, at::IntArrayRef output_size, double threshold) {
  check_paste_inputs(probs, boxes, mask_sizes, std::nullopt, input_size, output_size, "paste_masks");
  const int64_t k = probs.size(0), oh = output_size[0], ow = output_size[1];
  at::Tensor out = at::zeros({k, oh, ow}, probs.options().dtype(at::kBool));
  if (k == 0) return out;
  const std::vector<int64_t> ty = nearest_table(input_size[0], oh), tx = nearest_table(input_size[1], ow);
  const std::vector<PasteJob> jobs = make_jobs(probs, boxes, mask_sizes, input_size, ty, tx, threshold);
  bool* o = out.data_ptr<bool>();
  at::parallel_for(0, k, grain_for(k, window_area(jobs)), [&](int64_t k0, int64_t k1) {
    for (int64_t i = k0; i < k1; ++i) {
      if (!jobs[i].valid) continue;
      bool* plane = o + i * oh * ow;
      for_each_pixel(jobs[i], ty, tx, 0, oh, [&](int64_t y, int64_t x, uint8_t v) { plane[y * ow + x] = v; });
    }
  });
  return out;
}

at::Tensor paste_labels_cpu(const at::Tensor& probs, const at::Tensor& boxes, const std::optional<at::Tensor>& mask_sizes,
                            const std::optional<at::Tensor>& scores, at::IntArrayRef input_size,
                            at::IntArrayRef output_size, double threshold) {
  check_paste_inputs(probs, boxes, mask_sizes, scores, input_size, output_size, "paste_labels");
  const int64_t k = probs.size(0), oh = output_size[0], ow = output_size[1];
  if (k == 0) return at::zeros({oh, ow}, probs.options().dtype(at::kInt));
  // Zeroed row by row below: a separate fill would open a parallel region even for small work.
  at::Tensor out = at::empty({oh, ow}, probs.options().dtype(at::kInt));
  const std::vector<int64_t> ty = nearest_table(input_size[0], oh), tx = nearest_table(input_size[1], ow);
  const std::vector<PasteJob> jobs = make_jobs(probs, boxes, mask_sizes, input_size, ty, tx, threshold);
  // Paint from the lowest priority up, so that the highest score ends on top.
  std::vector<int64_t> priority(k);
  if (scores) {
    const at::Tensor order = std::get<1>(scores->sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
    std::copy(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + k, priority.begin());
  } else {
    for (int64_t i = 0; i < k; ++i) priority[i] = i;
  }
  int32_t* o = out.data_ptr<int32_t>();
  at::parallel_for(0, oh, grain_for(oh, window_area(jobs) + oh * ow / 8), [&](int64_t y0, int64_t y1) {
    std::fill(o + y0 * ow, o + y1 * ow, 0);
    for (int64_t r = k - 1; r >= 0; --r) {
      const int64_t i = priority[r];
      if (!jobs[i].valid) continue;
      const int32_t label = static_cast<int32_t>(i + 1);
      for_each_pixel(jobs[i], ty, tx, y0, y1, [&](int64_t y, int64_t x, uint8_t v) {
        if (v) o[y * ow + x] = label;
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CPU, m) {
  m.impl("paste_masks", TORCH_FN(paste_masks_cpu));
  m.impl("paste_labels", TORCH_FN(paste_labels_cpu));
}

}  // namespace cpu
}  // namespace ancis
