// ancis::detect, CPU kernel: the release's Detect step (spec §4) for a whole batch.
//
// Results are identical to reference.detect + reference.detections_of_image. Where the
// bits come from ATen (softmax, exp), ATen computes them, on just the rows that matter:
// 1. a cheap exact-safe prefilter in double drops rows whose class score cannot exceed
//    conf_thresh (the score is at most sigmoid(x_c - max_{j != c} x_j); a 1e-4 margin covers
//    the float error of the softmax many times over);
// 2. one at::softmax call on the remaining rows of the whole batch (softmax is row-wise, so a
//    row's bits do not depend on the rows around it);
// 3. strict `>` threshold, top-k by (score desc, prior index asc) = torch's stable sort;
// 4. only the surviving priors are decoded (exp from one at::exp call; elementwise, so
//    position-independent);
// 5. greedy NMS with the reference's IoU arithmetic, max_det per class, score > 0;
// 6. classes merged by a stable sort on descending score.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // per-operator headers: faster builds
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/softmax.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../ancis_checks.h"
#include "../ancis_common.h"
#include "parallel.h"
#include "greedy_nms.h"

namespace ancis {
namespace cpu {
namespace {

struct DetectArgs {
  double conf_thresh;
  double nms_thresh;
  int64_t pre_nms_top_k;  // < 0: no cap
  int64_t max_det;
  double v0, v1;
};

// Logit below which a class cannot pass conf_thresh; -inf keeps every row, +inf none.
template <typename scalar_t>
double prefilter_logit(double conf_thresh) {
  constexpr bool reduced = sizeof(scalar_t) < 4;
  if (reduced) {
    return -std::numeric_limits<double>::infinity();
  }
  const double q = conf_thresh - 1e-4;
  if (q <= 0.0) {
    return -std::numeric_limits<double>::infinity();
  }
  if (q >= 1.0) {
    return std::numeric_limits<double>::infinity();
  }
  return std::log(q / (1.0 - q));
}

// Rows of conf [P, nc] that may hold a class >= 1 above the threshold, ascending.
template <typename scalar_t>
std::vector<int64_t> candidate_rows(const scalar_t* conf, int64_t num_priors, int64_t nc, double logit) {
  std::vector<int64_t> rows;
  if (logit == std::numeric_limits<double>::infinity()) {
    return rows;
  }
  if (logit == -std::numeric_limits<double>::infinity()) {
    rows.resize(num_priors);
    for (int64_t p = 0; p < num_priors; ++p) rows[p] = p;
    return rows;
  }
  for (int64_t p = 0; p < num_priors; ++p) {
    const scalar_t* x = conf + p * nc;
    if (nc == 2) {
      if (static_cast<double>(x[1]) - static_cast<double>(x[0]) >= logit) rows.push_back(p);
      continue;
    }
    double m1 = -std::numeric_limits<double>::infinity(), m2 = m1;
    int64_t i1 = -1;
    for (int64_t c = 0; c < nc; ++c) {
      const double v = static_cast<double>(x[c]);
      if (i1 < 0 || v > m1) {
        m2 = m1;
        m1 = v;
        i1 = c;
      } else if (v > m2) {
        m2 = v;
      }
    }
    for (int64_t c = 1; c < nc; ++c) {
      const double other = c == i1 ? m2 : m1;
      if (static_cast<double>(x[c]) - other >= logit) {
        rows.push_back(p);
        break;
      }
    }
  }
  return rows;
}

at::Tensor long_tensor(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

// One image's state between the batch-wide ATen calls.
struct ImageRows {
  std::vector<int64_t> rows;                   // prefiltered priors, ascending
  int64_t prob_offset = 0;                     // first row of this image in the softmax output
  std::vector<std::vector<int64_t>> survivors; // per class: positions into rows, best first
  std::vector<int64_t> exp_slot;               // per position into rows: row of the exp output, or -1
};

template <typename loc_t, typename out_t>
class BatchDetector {
 public:
  using acc_t = at::opmath_type<loc_t>;

  BatchDetector(const at::Tensor& locs, const at::Tensor& conf, const at::Tensor& priors, const DetectArgs& args)
      : locs_(locs), conf_(conf), priors_(priors), args_(args), batch_(locs.size(0)), num_priors_(locs.size(1)),
        nc_(conf.size(2)), images_(batch_) {}

  void run(at::Tensor& boxes, at::Tensor& scores, at::Tensor& labels, at::Tensor& counts) {
    prefilter();
    softmax_rows();
    select_candidates();
    exp_needed();
    const int64_t slots = boxes.size(1);
    int64_t pairs = 0;  // IoUs the greedy NMS may compute
    for (const ImageRows& im : images_) {
      for (const std::vector<int64_t>& cand : im.survivors) pairs += static_cast<int64_t>(cand.size() * cand.size()) / 2;
    }
    at::parallel_for(0, batch_, grain_for(batch_, pairs + batch_), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        counts.data_ptr<int64_t>()[b] = nms_and_merge(b, boxes.data_ptr<loc_t>() + b * slots * 4,
                                                      scores.data_ptr<loc_t>() + b * slots,
                                                      labels.data_ptr<int64_t>() + b * slots);
      }
    });
  }

 private:
  struct Kept {
    acc_t score;
    int64_t cls, rank;
    out_t box[4];
  };

  void prefilter() {
    const double logit = prefilter_logit<loc_t>(args_.conf_thresh);
    const loc_t* c = conf_.data_ptr<loc_t>();
    at::parallel_for(0, batch_, grain_for(batch_, batch_ * num_priors_ * nc_), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        images_[b].rows = candidate_rows<loc_t>(c + b * num_priors_ * nc_, num_priors_, nc_, logit);
      }
    });
  }

  // One at::softmax call for the prefiltered rows of the whole batch.
  void softmax_rows() {
    std::vector<int64_t> flat;
    for (int64_t b = 0; b < batch_; ++b) {
      images_[b].prob_offset = static_cast<int64_t>(flat.size());
      for (int64_t p : images_[b].rows) flat.push_back(b * num_priors_ + p);
    }
    if (flat.empty()) return;
    probs_ = at::softmax(conf_.view({-1, nc_}).index_select(0, long_tensor(flat)), -1).contiguous();
  }

  acc_t prob(const ImageRows& im, int64_t q, int64_t c) const {
    return static_cast<acc_t>(probs_.data_ptr<loc_t>()[(im.prob_offset + q) * nc_ + c]);
  }

  // Strict threshold, then the pre-NMS cap by (score desc, prior index asc).
  void select_candidates() {
    const acc_t thr = static_cast<acc_t>(static_cast<loc_t>(args_.conf_thresh));
    for (ImageRows& im : images_) {
      const int64_t n = static_cast<int64_t>(im.rows.size());
      im.survivors.assign(nc_, {});
      im.exp_slot.assign(n, -1);
      for (int64_t c = 1; c < nc_; ++c) {
        std::vector<int64_t>& cand = im.survivors[c];
        for (int64_t q = 0; q < n; ++q) {
          if (prob(im, q, c) > thr) cand.push_back(q);
        }
        const int64_t k = args_.pre_nms_top_k < 0 ? static_cast<int64_t>(cand.size())
                                                   : std::min<int64_t>(args_.pre_nms_top_k, cand.size());
        std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [&](int64_t a, int64_t b) {
          const acc_t sa = prob(im, a, c), sb = prob(im, b, c);
          return sa > sb || (sa == sb && a < b);
        });
        cand.resize(k);
        for (int64_t q : cand) im.exp_slot[q] = 0;
      }
    }
  }

  // exp(l[2:4] * v1) of the surviving priors of the whole batch, from at::exp.
  void exp_needed() {
    std::vector<int64_t> flat;
    for (int64_t b = 0; b < batch_; ++b) {
      ImageRows& im = images_[b];
      for (size_t q = 0; q < im.rows.size(); ++q) {
        if (im.exp_slot[q] < 0) continue;
        im.exp_slot[q] = static_cast<int64_t>(flat.size());
        flat.push_back(b * num_priors_ + im.rows[q]);
      }
    }
    if (flat.empty()) return;
    sel_locs_ = locs_.view({-1, 4}).index_select(0, long_tensor(flat));
    exps_ = at::exp(at::mul(sel_locs_.narrow(1, 2, 2), args_.v1)).contiguous();
  }

  // Greedy NMS per class, max_det, score > 0, classes merged by stable descending score.
  int64_t nms_and_merge(int64_t b, loc_t* boxes_out, loc_t* scores_out, int64_t* labels_out) const {
    const ImageRows& im = images_[b];
    const out_t* priors = priors_.data_ptr<out_t>();
    const out_t nms_thr = static_cast<out_t>(args_.nms_thresh);
    std::vector<Kept> kept;
    std::vector<int64_t> keep;
    for (int64_t c = 1; c < nc_; ++c) {
      const std::vector<int64_t>& cand = im.survivors[c];
      const int64_t k = static_cast<int64_t>(cand.size());
      if (k == 0) continue;
      SortedBoxes<out_t> sorted(k);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t s = im.exp_slot[cand[i]];
        out_t bx[4];
        decode_prior<loc_t, out_t>(sel_locs_.data_ptr<loc_t>() + 4 * s, priors + 4 * im.rows[cand[i]],
                                   exps_.data_ptr<loc_t>() + 2 * s, args_.v0, bx);
        sorted.y1[i] = bx[0];
        sorted.x1[i] = bx[1];
        sorted.y2[i] = bx[2];
        sorted.x2[i] = bx[3];
        sorted.area[i] = box_area<out_t>(bx[0], bx[1], bx[2], bx[3]);
        sorted.pos[i] = i;
      }
      const SortedBoxes<out_t> decoded = sorted;  // greedy_nms_sorted compacts `sorted`
      keep.clear();
      greedy_nms_sorted<out_t, IoUKind::Reference>(sorted, nms_thr, args_.max_det, keep);
      for (int64_t rank = 0; rank < static_cast<int64_t>(keep.size()); ++rank) {
        const int64_t i = keep[rank];
        const acc_t score = static_cast<acc_t>(static_cast<loc_t>(prob(im, cand[i], c)));
        if (!(score > acc_t(0))) continue;  // detections_of_image keeps score > 0
        kept.push_back({score, c, rank, {decoded.y1[i], decoded.x1[i], decoded.y2[i], decoded.x2[i]}});
      }
    }
    std::stable_sort(kept.begin(), kept.end(), [](const Kept& x, const Kept& y) { return x.score > y.score; });
    for (size_t r = 0; r < kept.size(); ++r) {
      for (int j = 0; j < 4; ++j) boxes_out[4 * r + j] = static_cast<loc_t>(kept[r].box[j]);
      scores_out[r] = static_cast<loc_t>(kept[r].score);
      labels_out[r] = kept[r].cls;
    }
    return static_cast<int64_t>(kept.size());
  }

  const at::Tensor& locs_;
  const at::Tensor& conf_;
  const at::Tensor& priors_;
  const DetectArgs& args_;
  const int64_t batch_, num_priors_, nc_;
  std::vector<ImageRows> images_;
  at::Tensor probs_, sel_locs_, exps_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect_cpu(
    const at::Tensor& locs, const at::Tensor& conf_logits, const at::Tensor& priors, double conf_thresh,
    double nms_thresh, std::optional<int64_t> pre_nms_top_k, int64_t max_det, at::ArrayRef<double> variances) {
  check_detect_inputs(locs, conf_logits, priors, pre_nms_top_k, max_det, variances);
  const at::ScalarType out_type = decode_out_type(locs, priors, "detect");
  const int64_t batch = locs.size(0), nc = conf_logits.size(2);
  const int64_t slots = (nc - 1) * max_det;
  at::Tensor boxes = at::zeros({batch, slots, 4}, locs.options());
  at::Tensor scores = at::zeros({batch, slots}, locs.options());
  at::Tensor labels = at::zeros({batch, slots}, locs.options().dtype(at::kLong));
  at::Tensor counts = at::zeros({batch}, locs.options().dtype(at::kLong));
  if (slots == 0 || locs.size(1) == 0) {
    return {boxes, scores, labels, counts};
  }
  const DetectArgs args{conf_thresh, nms_thresh, pre_nms_top_k ? *pre_nms_top_k : -1, max_det, variances[0],
                        variances[1]};
  const at::Tensor l = locs.contiguous(), c = conf_logits.contiguous(), p = priors.to(out_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "ancis_detect_cpu", [&] {
    if (out_type == l.scalar_type()) {
      BatchDetector<scalar_t, scalar_t>(l, c, p, args).run(boxes, scores, labels, counts);
    } else {
      BatchDetector<scalar_t, float>(l, c, p, args).run(boxes, scores, labels, counts);
    }
  });
  return {boxes, scores, labels, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(ancis, CPU, m) {
  m.impl("detect", TORCH_FN(detect_cpu));
}

}  // namespace cpu
}  // namespace ancis
