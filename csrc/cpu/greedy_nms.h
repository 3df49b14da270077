// Greedy NMS over boxes already sorted by descending score (CPU).
//
// The boxes live in contiguous structure-of-arrays storage so that the IoU pass of one kept
// box against all later boxes is a branch-free loop the compiler vectorises; suppressed
// boxes are squeezed out once they make up a quarter of what is left, so later passes do
// not walk over them again.
#pragma once

#include <cstdint>
#include <vector>

#include "../ancis_common.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__) && \
    !defined(ANCIS_NO_TARGET_CLONES)
// AVX2 only (no "fma"): contraction would change the IoU bits.
#define ANCIS_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ANCIS_SIMD_CLONES
#endif

namespace ancis {
namespace cpu {

enum class IoUKind { Torchvision, Reference };

template <typename T>
struct SortedBoxes {
  std::vector<T> y1, x1, y2, x2, area;
  std::vector<int64_t> pos;  // position in the sorted order

  explicit SortedBoxes(int64_t n) : y1(n), x1(n), y2(n), x2(n), area(n), pos(n) {}
};

// sup[j] |= IoU(box, j) > thr for j in [begin, end); returns how many became suppressed.
template <typename T, IoUKind kind>
ANCIS_SIMD_CLONES int64_t suppress_pass(const T* __restrict y1, const T* __restrict x1, const T* __restrict y2,
                                        const T* __restrict x2, const T* __restrict area, uint8_t* __restrict sup,
                                        int64_t begin, int64_t end, T by1, T bx1, T by2, T bx2, T barea, T thr) {
  int64_t newly = 0;
  for (int64_t j = begin; j < end; ++j) {
    const T iou = kind == IoUKind::Torchvision
                      ? iou_torchvision<T>(by1, bx1, by2, bx2, barea, y1[j], x1[j], y2[j], x2[j], area[j])
                      : iou_reference<T>(by1, bx1, by2, bx2, barea, y1[j], x1[j], y2[j], x2[j], area[j]);
    const uint8_t s = greater<T>(iou, thr);
    newly += s & (sup[j] ^ 1);
    sup[j] |= s;
  }
  return newly;
}

// Keeps at most `max_keep` boxes (negative: no limit). Appends the sorted positions of the
// kept boxes to `keep`, in order. `boxes` is consumed (compacted in place).
template <typename T, IoUKind kind>
void greedy_nms_sorted(SortedBoxes<T>& boxes, T thr, int64_t max_keep, std::vector<int64_t>& keep) {
  int64_t n = static_cast<int64_t>(boxes.pos.size());
  std::vector<uint8_t> sup(n, 0);
  int64_t dead = 0;  // suppressed entries in [i, n)
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (sup[i]) {
      --dead;
      continue;
    }
    if (max_keep >= 0 && kept >= max_keep) {
      break;
    }
    keep.push_back(boxes.pos[i]);
    ++kept;
    dead += suppress_pass<T, kind>(boxes.y1.data(), boxes.x1.data(), boxes.y2.data(), boxes.x2.data(),
                                   boxes.area.data(), sup.data(), i + 1, n, boxes.y1[i], boxes.x1[i], boxes.y2[i],
                                   boxes.x2[i], boxes.area[i], thr);
    const int64_t left = n - i - 1;
    if (left > 256 && dead * 4 > left) {
      int64_t w = i + 1;
      for (int64_t j = i + 1; j < n; ++j) {
        if (!sup[j]) {
          boxes.y1[w] = boxes.y1[j];
          boxes.x1[w] = boxes.x1[j];
          boxes.y2[w] = boxes.y2[j];
          boxes.x2[w] = boxes.x2[j];
          boxes.area[w] = boxes.area[j];
          boxes.pos[w] = boxes.pos[j];
          sup[w] = 0;
          ++w;
        }
      }
      n = w;
      dead = 0;
    }
  }
}

}  // namespace cpu
}  // namespace ancis
