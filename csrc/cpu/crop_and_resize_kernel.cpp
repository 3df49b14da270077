// ancis::crop_and_resize, CPU kernel: bilinear crops of K boxes, box-parallel.
//
// Float boxes are continuous (y1, x1, y2, x2) feature-pixel coordinates (roi_align
// aligned=True geometry, or corner-aligned samples); integer boxes are inclusive crops
// (spec §5 bounds) resampled as F.interpolate would resample the crop.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ancis_checks.h"
#include "../ancis_common.h"
#include "parallel.h"

namespace ancis {
namespace cpu {
namespace {

template <typename acc_t>
void compute_taps(const at::Tensor& boxes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                  bool align_corners, std::vector<BilinearTap<acc_t>>& ty, std::vector<BilinearTap<acc_t>>& tx) {
  const int64_t k = boxes.size(0);
  ty.resize(k * out_h);
  tx.resize(k * out_w);
  if (at::isFloatingType(boxes.scalar_type())) {
    const at::Tensor b = boxes.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* bp = b.data_ptr<acc_t>();
    at::parallel_for(0, k, grain_for(k, k * (out_h + out_w) * 16), [&](int64_t k0, int64_t k1) {
      for (int64_t i = k0; i < k1; ++i) {
        const acc_t* r = bp + 4 * i;
        for (int64_t y = 0; y < out_h; ++y) ty[i * out_h + y] = box_tap<acc_t>(r[0], r[2], y, out_h, height, align_corners);
        for (int64_t x = 0; x < out_w; ++x) tx[i * out_w + x] = box_tap<acc_t>(r[1], r[3], x, out_w, width, align_corners);
      }
    });
    return;
  }
  const at::Tensor b = boxes.to(at::kLong).contiguous();
  const int64_t* bp = b.data_ptr<int64_t>();
  at::parallel_for(0, k, grain_for(k, k * (out_h + out_w) * 16), [&](int64_t k0, int64_t k1) {
    for (int64_t i = k0; i < k1; ++i) {
      const int64_t y1 = std::max<int64_t>(bp[4 * i], 0), x1 = std::max<int64_t>(bp[4 * i + 1], 0);
      const int64_t y2 = std::min<int64_t>(bp[4 * i + 2], height - 1), x2 = std::min<int64_t>(bp[4 * i + 3], width - 1);
      const bool valid = y1 <= y2 && x1 <= x2;
      for (int64_t y = 0; y < out_h; ++y) {
        ty[i * out_h + y] = valid ? crop_tap<acc_t>(y1, y2, y, out_h, align_corners) : BilinearTap<acc_t>{0, 0, 0, 0, false};
      }
      for (int64_t x = 0; x < out_w; ++x) {
        tx[i * out_w + x] = valid ? crop_tap<acc_t>(x1, x2, x, out_w, align_corners) : BilinearTap<acc_t>{0, 0, 0, 0, false};
      }
    }
  });
}

// Sizes and bilinear taps shared by both memory layouts' loops.
template <typename acc_t>
struct CropGeometry {
  int64_t k, channels, out_h, out_w, height, width;
  std::vector<BilinearTap<acc_t>> ty, tx;  // [k * out_h], [k * out_w]

  CropGeometry(const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& out, bool align_corners)
      : k(out.size(0)), channels(out.size(1)), out_h(out.size(2)), out_w(out.size(3)), height(features.size(2)),
        width(features.size(3)) {
    compute_taps<acc_t>(boxes, height, width, out_h, out_w, align_corners, ty, tx);
  }
};

template <typename scalar_t>
void crop_planes(const at::Tensor& features, const at::Tensor& boxes, const int64_t* bidx, bool align_corners,
                 at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const CropGeometry<acc_t> g(features, boxes, out, align_corners);
  const scalar_t* f = features.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t planes = g.k * g.channels;
  // Channel-major order: all boxes sample one channel plane while it is in cache; box-major
  // order would fetch a new plane for every (box, channel) and wait on memory.
  at::parallel_for(0, planes, grain_for(planes, planes * g.out_h * g.out_w * 4), [&](int64_t p0, int64_t p1) {
    for (int64_t job = p0; job < p1; ++job) {
      const int64_t c = job / g.k, i = job % g.k;
      const scalar_t* src = f + (bidx[i] * g.channels + c) * g.height * g.width;
      scalar_t* dst = o + (i * g.channels + c) * g.out_h * g.out_w;
      for (int64_t y = 0; y < g.out_h; ++y) {
        const BilinearTap<acc_t>& a = g.ty[i * g.out_h + y];
        scalar_t* out_row = dst + y * g.out_w;
        if (!a.valid) {
          std::fill(out_row, out_row + g.out_w, scalar_t(0));
          continue;
        }
        const scalar_t* row_lo = src + a.lo * g.width;
        const scalar_t* row_hi = src + a.hi * g.width;
        for (int64_t x = 0; x < g.out_w; ++x) {
          const BilinearTap<acc_t>& b = g.tx[i * g.out_w + x];
          acc_t v = 0;
          if (b.valid) {
            v += bilinear_combine<acc_t>(a, b, row_lo[b.lo], row_lo[b.hi], row_hi[b.lo], row_hi[b.hi]);
          }
          out_row[x] = static_cast<scalar_t>(v);
        }
      }
    }
  });
}

// Channels-last features (the detector's layout): every output pixel mixes the contiguous
// channel vectors of four input pixels; the output is channels-last too, so neither the
// feature map nor the crops need a layout conversion.
template <typename scalar_t>
void crop_pixels(const at::Tensor& features, const at::Tensor& boxes, const int64_t* bidx, bool align_corners,
                 at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const CropGeometry<acc_t> g(features, boxes, out, align_corners);
  const scalar_t* f = features.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t pixels = g.k * g.out_h * g.out_w;
  at::parallel_for(0, pixels, grain_for(pixels, pixels * g.channels * 4), [&](int64_t p0, int64_t p1) {
    for (int64_t job = p0; job < p1; ++job) {
      const int64_t i = job / (g.out_h * g.out_w), y = (job / g.out_w) % g.out_h, x = job % g.out_w;
      const BilinearTap<acc_t>& a = g.ty[i * g.out_h + y];
      const BilinearTap<acc_t>& b = g.tx[i * g.out_w + x];
      scalar_t* dst = o + job * g.channels;
      if (!a.valid || !b.valid) {
        std::fill(dst, dst + g.channels, scalar_t(0));
        continue;
      }
      const scalar_t* image = f + bidx[i] * g.height * g.width * g.channels;
      const scalar_t* top_left = image + (a.lo * g.width + b.lo) * g.channels;
      const scalar_t* top_right = image + (a.lo * g.width + b.hi) * g.channels;
      const scalar_t* bottom_left = image + (a.hi * g.width + b.lo) * g.channels;
      const scalar_t* bottom_right = image + (a.hi * g.width + b.hi) * g.channels;
      for (int64_t c = 0; c < g.channels; ++c) {
        dst[c] = static_cast<scalar_t>(
            bilinear_combine<acc_t>(a, b, top_left[c], top_right[c], bottom_left[c], bottom_right[c]));
      }
    }
  });
}

at::Tensor crop_and_resize_cpu(const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& batch_idx,
                               at::IntArrayRef out_size, bool align_corners) {
  check_crop_inputs(features, boxes, batch_idx, out_size);
  const int64_t k = boxes.size(0);
  const bool channels_last = !features.is_contiguous() && features.is_contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({k, features.size(1), out_size[0], out_size[1]},
                             features.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                            : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor bidx = batch_idx.to(at::kLong).contiguous();
  const int64_t* bp = bidx.data_ptr<int64_t>();
  for (int64_t i = 0; i < k; ++i) {
    TORCH_CHECK_VALUE(bp[i] >= 0 && bp[i] < features.size(0), "crop_and_resize: batch_idx[", i, "] = ", bp[i],
                      " is out of range for features with batch size ", features.size(0));
  }
  if (channels_last) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "ancis_crop_and_resize_cpu",
                                    [&] { crop_pixels<scalar_t>(features, boxes, bp, align_corners, out); });
    return out;
  }
  const at::Tensor f = features.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "ancis_crop_and_resize_cpu",
                                  [&] { crop_planes<scalar_t>(f, boxes, bp, align_corners, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CPU, m) {
  m.impl("crop_and_resize", TORCH_FN(crop_and_resize_cpu));
}

}  // namespace cpu
}  // namespace ancis
