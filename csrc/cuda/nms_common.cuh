// Bitmask greedy NMS on the GPU, shared by ancis::nms, ancis::batched_nms and ancis::detect.
//
// Boxes are pre-sorted best first in S independent segments of at most n_max boxes.
// 1. overlap_mask_kernel: for box i and each block of 64 later boxes, a 64-bit word whose
//    bit j says "IoU(i, j) > thr" (and, for batched NMS, same class). Upper triangle only.
// 2. greedy_kernel: one thread block per segment walks the boxes 64 at a time: one thread
//    resolves the 64 boxes of the block against the diagonal word, then all threads fold
//    the mask rows of the boxes it kept into the words of the later blocks. Two
//    __syncthreads per 64 boxes, no host synchronisation.
#pragma once

#include <cstdint>

#include "decode_common.cuh"

namespace ancis {
namespace cuda {

constexpr int kMaskBits = 64;

enum class IoUKind { Torchvision, Reference };

template <typename T, IoUKind kind>
__device__ __forceinline__ T segment_iou(const T* a, const T* b) {
  const T a_area = box_area<T>(a[0], a[1], a[2], a[3]);
  const T b_area = box_area<T>(b[0], b[1], b[2], b[3]);
  return kind == IoUKind::Torchvision
             ? iou_torchvision<T>(a[0], a[1], a[2], a[3], a_area, b[0], b[1], b[2], b[3], b_area)
             : iou_reference<T>(a[0], a[1], a[2], a[3], a_area, b[0], b[1], b[2], b[3], b_area);
}

// grid (col_blocks, col_blocks, S), 64 threads. boxes [S, n_max, 4]; counts [S] (nullptr: all
// segments hold n_max boxes); classes [S, n_max] or nullptr. mask [S, n_max, col_blocks].
template <typename T, IoUKind kind>
__global__ void overlap_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ counts,
                                    const int64_t* __restrict__ classes, int64_t n_max, int64_t col_blocks, T thr,
                                    uint64_t* __restrict__ mask) {
  const int64_t seg = blockIdx.z, row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t n = counts ? counts[seg] : n_max;
  const int64_t row_size = min(n - row_block * kMaskBits, int64_t(kMaskBits));
  const int64_t col_size = min(n - col_block * kMaskBits, int64_t(kMaskBits));
  if (row_size <= 0 || col_size <= 0) return;

  // Raw storage: c10::Half has a constructor, which __shared__ variables may not.
  __shared__ __align__(16) unsigned char col_storage[kMaskBits * 4 * sizeof(T)];
  T* col_boxes = reinterpret_cast<T*>(col_storage);
  __shared__ int64_t col_classes[kMaskBits];
  const T* seg_boxes = boxes + seg * n_max * 4;
  const int t = threadIdx.x;
  if (t < col_size) {
    const int64_t j = col_block * kMaskBits + t;
#pragma unroll
    for (int c = 0; c < 4; ++c) col_boxes[t * 4 + c] = seg_boxes[j * 4 + c];
    col_classes[t] = classes ? classes[seg * n_max + j] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;
  const int64_t i = row_block * kMaskBits + t;
  T own[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) own[c] = seg_boxes[i * 4 + c];
  const int64_t own_class = classes ? classes[seg * n_max + i] : 0;
  uint64_t bits = 0;
  for (int j = (row_block == col_block ? t + 1 : 0); j < col_size; ++j) {
    if (col_classes[j] == own_class && greater<T>(segment_iou<T, kind>(own, col_boxes + j * 4), thr)) {
      bits |= 1ULL << j;
    }
  }
  mask[(seg * n_max + i) * col_blocks + col_block] = bits;
}

// grid (S), any block size. removed [S, col_blocks] zeroed scratch. Writes the kept
// positions of each segment in order to kept [S, cap] and their number to num_kept [S].
// At most max_keep boxes are kept (< 0: no limit); a kept box is listed only if
// `listed(seg, i)` (detect drops zero scores after the max_keep cut, like the reference).
template <typename Listed>
__global__ void greedy_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ counts, int64_t n_max,
                              int64_t col_blocks, int64_t max_keep, int64_t cap, uint64_t* __restrict__ removed,
                              int64_t* __restrict__ kept, int64_t* __restrict__ num_kept, Listed listed) {
  const int64_t seg = blockIdx.x;
  const int64_t n = counts ? counts[seg] : n_max;
  const int64_t blocks = ceil_div(n, kMaskBits);
  const uint64_t* seg_mask = mask + seg * n_max * col_blocks;
  uint64_t* seg_removed = removed + seg * col_blocks;
  int64_t* seg_kept = kept + seg * cap;
  __shared__ uint64_t kept_bits;
  __shared__ int stop;
  __shared__ int64_t taken, listed_n;
  if (threadIdx.x == 0) {
    stop = 0;
    taken = 0;
    listed_n = 0;
  }
  for (int64_t rb = 0; rb < blocks; ++rb) {
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t rem = seg_removed[rb];
      uint64_t bits = 0;
      const int size = static_cast<int>(min(n - rb * kMaskBits, int64_t(kMaskBits)));
      for (int t = 0; t < size; ++t) {
        if ((rem >> t) & 1ULL) continue;
        if (max_keep >= 0 && taken >= max_keep) {
          stop = 1;
          break;
        }
        const int64_t i = rb * kMaskBits + t;
        bits |= 1ULL << t;
        ++taken;
        if (listed(seg, i)) seg_kept[listed_n++] = i;
        rem |= seg_mask[i * col_blocks + rb];
      }
      kept_bits = bits;
    }
    __syncthreads();
    const uint64_t bits = kept_bits;
    for (int64_t w = rb + 1 + threadIdx.x; w < blocks; w += blockDim.x) {
      uint64_t acc = seg_removed[w];
      for (uint64_t b = bits; b; b &= b - 1) {
        const int t = __ffsll(static_cast<long long>(b)) - 1;
        acc |= seg_mask[(rb * kMaskBits + t) * col_blocks + w];
      }
      seg_removed[w] = acc;
    }
    if (stop) break;
  }
  if (threadIdx.x == 0) num_kept[seg] = listed_n;
}

struct ListAll {
  __device__ bool operator()(int64_t, int64_t) const { return true; }
};

}  // namespace cuda
}  // namespace ancis
