// Arithmetic shared by the CPU and CUDA kernels of the ancis operators.
//
// Every formula here reproduces, operation for operation, the float arithmetic of the
// code it stands in for (ancis_fast.boxes.decode, the reference greedy NMS, torchvision's
// nms, roi_align, OpenCV's resize): the operators promise identical results, so the order
// of the operations matters. On the device, multiplications and additions go through the
// _rn intrinsics so that nvcc cannot fuse them into FMAs the reference does not perform.
// Boxes are (y1, x1, y2, x2) everywhere.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define ANCIS_HD __host__ __device__ __forceinline__
#define ANCIS_UNROLL _Pragma("unroll")
#else
#define ANCIS_HD inline
#define ANCIS_UNROLL
#endif

namespace ancis {

// ---------------------------------------------------------------------------------------
// Non-contracting arithmetic (plain operators on the host, where we build without FMA
// contraction, see -ffp-contract=off).
ANCIS_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
ANCIS_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
ANCIS_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
ANCIS_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
ANCIS_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
ANCIS_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
ANCIS_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
ANCIS_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// ---------------------------------------------------------------------------------------
// One prior of ancis_fast.boxes.decode (spec §4). `l` = (dy, dx, dh, dw) in the locs dtype,
// `p` = (cy, cx, h, w) and the result (y1, x1, y2, x2) in the output dtype, `e` =
// exp(l[2:4] * v1) exactly as torch computed it. Every rounding mirrors the dtype of the
// tensor torch produces at that step: locs*v0 has the locs dtype, the rest the output dtype.
template <typename loc_t, typename out_t>
ANCIS_HD void decode_prior(const loc_t* l, const out_t* p, const loc_t* e, double v0, out_t* o) {
  using lop = at::opmath_type<loc_t>;
  using oop = at::opmath_type<out_t>;
  const lop v = static_cast<lop>(v0);
  ANCIS_UNROLL
  for (int k = 0; k < 2; ++k) {
    const loc_t shift = static_cast<loc_t>(mul_rn(static_cast<lop>(l[k]), v));
    const out_t prod = static_cast<out_t>(mul_rn(static_cast<oop>(shift), static_cast<oop>(p[2 + k])));
    const out_t centre = static_cast<out_t>(add_rn(static_cast<oop>(p[k]), static_cast<oop>(prod)));
    const out_t size = static_cast<out_t>(mul_rn(static_cast<oop>(p[2 + k]), static_cast<oop>(e[k])));
    const out_t half = static_cast<out_t>(div_rn(static_cast<oop>(size), oop(2)));
    const out_t top_left = static_cast<out_t>(sub_rn(static_cast<oop>(centre), static_cast<oop>(half)));
    o[k] = top_left;
    o[2 + k] = static_cast<out_t>(add_rn(static_cast<oop>(top_left), static_cast<oop>(size)));
  }
}

// ---------------------------------------------------------------------------------------
// IoU of a kept box `a` with a candidate `b`; areas are precomputed as (y2-y1)*(x2-x1).
// The arithmetic runs in the op-math type A (float for half) and every intermediate is
// rounded to T, as torch's elementwise ops on T tensors do (a no-op for float and double).

template <typename T, typename A = at::opmath_type<T>>
ANCIS_HD A round_to(A v) {
  return static_cast<A>(static_cast<T>(v));
}

// Comparison in the op-math type (c10::Half's own operators are ambiguous under nvcc).
template <typename T>
ANCIS_HD bool greater(T a, T b) {
  using A = at::opmath_type<T>;
  return static_cast<A>(a) > static_cast<A>(b);
}

// torchvision.ops.nms: w = max(0, min(ax2,bx2) - max(ax1,bx1)) with std::max/std::min
// argument order, union = (area_a + area_b) - inter.
template <typename T>
ANCIS_HD T iou_torchvision(T ay1_, T ax1_, T ay2_, T ax2_, T a_area_, T by1_, T bx1_, T by2_, T bx2_, T b_area_) {
  using A = at::opmath_type<T>;
  const A ay1 = ay1_, ax1 = ax1_, ay2 = ay2_, ax2 = ax2_, a_area = a_area_;
  const A by1 = by1_, bx1 = bx1_, by2 = by2_, bx2 = bx2_, b_area = b_area_;
  const A yy1 = (ay1 < by1) ? by1 : ay1;
  const A xx1 = (ax1 < bx1) ? bx1 : ax1;
  const A yy2 = (by2 < ay2) ? by2 : ay2;
  const A xx2 = (bx2 < ax2) ? bx2 : ax2;
  const A dh = round_to<T>(sub_rn(yy2, yy1));
  const A dw = round_to<T>(sub_rn(xx2, xx1));
  const A h = (A(0) < dh) ? dh : A(0);
  const A w = (A(0) < dw) ? dw : A(0);
  const A inter = round_to<T>(mul_rn(w, h));
  const A uni = round_to<T>(sub_rn(round_to<T>(add_rn(a_area, b_area)), inter));
  return static_cast<T>(div_rn(inter, uni));
}

// The release's greedy NMS (reference.nms_greedy): h = clamp(min(y2) - max(y1), min=0)
// (NaN-propagating), union = (area_rest - inter) + area_best. A NaN coordinate makes an
// area NaN and therefore the IoU NaN, so min/max need no NaN care of their own.
template <typename T>
ANCIS_HD T iou_reference(T ay1_, T ax1_, T ay2_, T ax2_, T a_area_, T by1_, T bx1_, T by2_, T bx2_, T b_area_) {
  using A = at::opmath_type<T>;
  const A ay1 = ay1_, ax1 = ax1_, ay2 = ay2_, ax2 = ax2_, a_area = a_area_;
  const A by1 = by1_, bx1 = bx1_, by2 = by2_, bx2 = bx2_, b_area = b_area_;
  const A yy1 = (ay1 < by1) ? by1 : ay1;
  const A xx1 = (ax1 < bx1) ? bx1 : ax1;
  const A yy2 = (by2 < ay2) ? by2 : ay2;
  const A xx2 = (bx2 < ax2) ? bx2 : ax2;
  const A dh = round_to<T>(sub_rn(yy2, yy1));
  const A dw = round_to<T>(sub_rn(xx2, xx1));
  const A h = (dh < A(0)) ? A(0) : dh;
  const A w = (dw < A(0)) ? A(0) : dw;
  const A inter = round_to<T>(mul_rn(h, w));
  const A uni = round_to<T>(add_rn(round_to<T>(sub_rn(b_area, inter)), a_area));
  return static_cast<T>(div_rn(inter, uni));
}

template <typename T>
ANCIS_HD T box_area(T y1, T x1, T y2, T x2) {
  using A = at::opmath_type<T>;
  const A dy = round_to<T>(sub_rn(static_cast<A>(y2), static_cast<A>(y1)));
  const A dx = round_to<T>(sub_rn(static_cast<A>(x2), static_cast<A>(x1)));
  return static_cast<T>(mul_rn(dy, dx));
}

// ---------------------------------------------------------------------------------------
// crop_and_resize: one axis of a bilinear sample, the two source indices and weights.
template <typename T>
struct BilinearTap {
  int64_t lo, hi;
  T w_lo, w_hi;
  bool valid;
};

// Box edges b0 <= b1 along an axis of `size` pixels, continuous coordinates (pixel i covers
// [i, i+1)). !align_corners: the centres of out_len equal bins, exactly as
// torchvision.ops.roi_align(aligned=True, sampling_ratio=1) computes them;
// align_corners: b0 and b1 are the first and last sample (index coordinates). Border rules
// of roi_align: samples beyond [-1, size] are zero, others clamp to the map.
template <typename T>
ANCIS_HD BilinearTap<T> box_tap(T b0, T b1, int64_t i, int64_t out_len, int64_t size, bool align_corners) {
  T c;
  if (align_corners) {
    const T scale = out_len > 1 ? div_rn(sub_rn(b1, b0), static_cast<T>(out_len - 1)) : T(0);
    c = add_rn(b0, mul_rn(static_cast<T>(i), scale));
  } else {
    const T start = sub_rn(b0, T(0.5));
    const T bin = div_rn(sub_rn(sub_rn(b1, T(0.5)), start), static_cast<T>(out_len));
    c = add_rn(add_rn(start, mul_rn(static_cast<T>(i), bin)), mul_rn(T(0.5), bin));
  }
  if (!(c >= T(-1)) || c > static_cast<T>(size)) {
    return {0, 0, T(0), T(0), false};
  }
  if (c <= T(0)) c = T(0);
  int64_t lo = static_cast<int64_t>(c), hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    c = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T w_hi = sub_rn(c, static_cast<T>(lo));
  return {lo, hi, sub_rn(T(1), w_hi), w_hi, true};
}

// Inclusive integer crop [c0, c1] of a map, resampled like
// F.interpolate(crop, out_len, mode="bilinear", align_corners) would: the sample never leaves
// the crop, and out_len == c1 - c0 + 1 is an exact copy.
template <typename T>
ANCIS_HD BilinearTap<T> crop_tap(int64_t c0, int64_t c1, int64_t i, int64_t out_len, bool align_corners) {
  const int64_t in = c1 - c0 + 1;
  T src;
  if (align_corners) {
    const T scale = out_len > 1 ? div_rn(static_cast<T>(in - 1), static_cast<T>(out_len - 1)) : T(0);
    src = mul_rn(scale, static_cast<T>(i));
  } else {
    const T scale = div_rn(static_cast<T>(in), static_cast<T>(out_len));
    src = sub_rn(mul_rn(scale, add_rn(static_cast<T>(i), T(0.5))), T(0.5));
    if (src < T(0)) src = T(0);
  }
  int64_t lo = static_cast<int64_t>(src);
  if (lo > in - 1) lo = in - 1;
  const int64_t hi = lo < in - 1 ? lo + 1 : lo;
  T w_hi = sub_rn(src, static_cast<T>(lo));
  w_hi = w_hi < T(0) ? T(0) : (w_hi > T(1) ? T(1) : w_hi);
  return {c0 + lo, c0 + hi, sub_rn(T(1), w_hi), w_hi, true};
}

// roi_align's combination: w1*v1 + w2*v2 + w3*v3 + w4*v4, left to right.
template <typename T>
ANCIS_HD T bilinear_combine(const BilinearTap<T>& ty, const BilinearTap<T>& tx, T v1, T v2, T v3, T v4) {
  const T w1 = mul_rn(ty.w_lo, tx.w_lo), w2 = mul_rn(ty.w_lo, tx.w_hi);
  const T w3 = mul_rn(ty.w_hi, tx.w_lo), w4 = mul_rn(ty.w_hi, tx.w_hi);
  return add_rn(add_rn(add_rn(mul_rn(w1, v1), mul_rn(w2, v2)), mul_rn(w3, v3)), mul_rn(w4, v4));
}

// ---------------------------------------------------------------------------------------
// cv::resize geometry (INTER_LINEAR, generic path) for one axis: source index and the
// weight of the next source pixel, for destination index d of dst_len from src_len.
// `single` is true where OpenCV reads only one source pixel (right/bottom border).
struct LinearTap {
  int32_t src;
  float w1;
  bool single;
};

ANCIS_HD LinearTap cv_linear_tap(int64_t d, int64_t src_len, int64_t dst_len) {
  const double scale = 1.0 / (static_cast<double>(dst_len) / static_cast<double>(src_len));
  float f = static_cast<float>((static_cast<double>(d) + 0.5) * scale - 0.5);
  int32_t s = static_cast<int32_t>(floorf(f));
  f -= static_cast<float>(s);
  if (s < 0) {
    f = 0.f;
    s = 0;
  }
  bool single = false;
  if (s + 1 >= src_len) {
    single = true;
    if (s >= src_len - 1) {
      f = 0.f;
      s = static_cast<int32_t>(src_len - 1);
    }
  }
  return {s, f, single};
}

// cv::resize INTER_NEAREST: source index of destination index d.
ANCIS_HD int64_t cv_nearest_src(int64_t d, int64_t src_len, int64_t dst_len) {
  const double inv = 1.0 / (static_cast<double>(dst_len) / static_cast<double>(src_len));
  const int64_t s = static_cast<int64_t>(floor(static_cast<double>(d) * inv));
  return s < src_len - 1 ? s : src_len - 1;
}

// Spec §6 integer paste box: round half to even, clip to the canvas. Returns false when
// the box is empty (or not a number).
ANCIS_HD bool paste_bounds(double y1, double x1, double y2, double x2, int64_t height, int64_t width,
                           int64_t* out) {
  if (!(y1 == y1) || !(x1 == x1) || !(y2 == y2) || !(x2 == x2)) {
    return false;
  }
  // Clamp before rounding so that huge values do not overflow the integer conversion.
  const double lim = 4.0e15;
  y1 = fmin(fmax(y1, -lim), lim);
  x1 = fmin(fmax(x1, -lim), lim);
  y2 = fmin(fmax(y2, -lim), lim);
  x2 = fmin(fmax(x2, -lim), lim);
  int64_t iy1 = static_cast<int64_t>(rint(y1));
  int64_t ix1 = static_cast<int64_t>(rint(x1));
  int64_t iy2 = static_cast<int64_t>(rint(y2));
  int64_t ix2 = static_cast<int64_t>(rint(x2));
  iy1 = iy1 > 0 ? iy1 : 0;
  ix1 = ix1 > 0 ? ix1 : 0;
  iy2 = iy2 < height - 1 ? iy2 : height - 1;
  ix2 = ix2 < width - 1 ? ix2 : width - 1;
  if (iy2 < iy1 || ix2 < ix1) {
    return false;
  }
  out[0] = iy1;
  out[1] = ix1;
  out[2] = iy2;
  out[3] = ix2;
  return true;
}

// Float threshold t such that, for every float x, (x > t) == ((double)x > thr). This is
// how torchvision compares a float IoU with its double threshold.
inline float float_threshold_below(double thr) {
  float t = static_cast<float>(thr);
  if (static_cast<double>(t) > thr) {
    t = std::nextafter(t, -std::numeric_limits<float>::infinity());
  }
  return t;
}

// The IoU threshold in the kernels' box type T: float_threshold_below for float (the
// comparison torchvision makes), the value itself for double.
template <typename T>
inline T threshold_as(double thr) {
  if constexpr (std::is_same_v<T, float>) {
    return float_threshold_below(thr);
  } else {
    return static_cast<T>(thr);
  }
}

}  // namespace ancis
