// When to use at::parallel_for. On a loaded machine a parallel region can wait a scheduler
// time slice (milliseconds) for its threads, so small work stays on the calling thread.
#pragma once

#include <algorithm>
#include <cstdint>

namespace ancis {
namespace cpu {

// Elementary steps (one IoU, one bilinear sample, ...) below which one thread does it all.
constexpr int64_t kMinParallelWork = int64_t(1) << 20;

// Grain for at::parallel_for over `items` that cost `total_work` steps together: chunks of at
// least kMinParallelWork steps, so the loop only goes parallel when that pays.
inline int64_t grain_for(int64_t items, int64_t total_work) {
  if (items <= 0) return 1;
  const int64_t per_item = std::max<int64_t>(1, total_work / items);
  return std::max<int64_t>(1, kMinParallelWork / per_item);
}

}  // namespace cpu
}  // namespace ancis
