// ancis::decode, CPU kernel: SSD box decoding (spec §4), bit-identical to
// ancis_fast.boxes.decode.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/mul.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../ancis_checks.h"
#include "../ancis_common.h"
#include "parallel.h"

namespace ancis {
namespace cpu {
namespace {

// Rows per mul + exp call: 16384 elements, below ATen's 32768-element grain, so they never
// open a parallel region of their own (those can stall on a loaded machine).
constexpr int64_t kExpChunk = 8192;

template <typename loc_t, typename out_t>
void decode_rows(const at::Tensor& locs, const at::Tensor& priors, double v0, double v1, at::Tensor& out) {
  const int64_t num_priors = priors.size(0);
  const int64_t rows = locs.size(0);
  const int64_t chunks = (rows + kExpChunk - 1) / kExpChunk;
  const loc_t* l = locs.data_ptr<loc_t>();
  const out_t* p = priors.data_ptr<out_t>();
  out_t* o = out.data_ptr<out_t>();
  at::parallel_for(0, chunks, grain_for(chunks, rows * 16), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kExpChunk, n = std::min(kExpChunk, rows - r0);
      // torch.exp's own vectorised (and elementwise) exp: the sizes carry boxes.decode's bits.
      const at::Tensor e = at::exp(at::mul(locs.narrow(0, r0, n).narrow(1, 2, 2), v1)).contiguous();
      const loc_t* ex = e.data_ptr<loc_t>();
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = r0 + r;
        decode_prior<loc_t, out_t>(l + 4 * row, p + 4 * (row % num_priors), ex + 2 * r, v0, o + 4 * row);
      }
    }
  });
}

at::Tensor decode_cpu(const at::Tensor& locs, const at::Tensor& priors, at::ArrayRef<double> variances) {
  check_decode_inputs(locs, priors, variances, "decode");
  const at::ScalarType out_type = decode_out_type(locs, priors, "decode");
  const at::Tensor l = locs.contiguous();
  at::Tensor out = at::empty(l.sizes(), l.options().dtype(out_type));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor p = priors.to(out_type).contiguous();
  const at::Tensor rows = l.view({-1, 4});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "ancis_decode_cpu", [&] {
    if (out_type == l.scalar_type()) {
      decode_rows<scalar_t, scalar_t>(rows, p, variances[0], variances[1], out);
    } else {
      decode_rows<scalar_t, float>(rows, p, variances[0], variances[1], out);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CPU, m) {
  m.impl("decode", TORCH_FN(decode_cpu));
}

}  // namespace cpu
}  // namespace ancis
