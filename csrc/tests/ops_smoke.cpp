// ctest smoke test: dlopen libancis_ops and run every ancis operator once on CPU through the
// dispatcher (as a TorchScript / exported-program runner would), checking hand-computed
// results where they are small enough to state.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>
#include <optional>
#include <tuple>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += ok ? 0 : 1;
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor tensor(std::vector<float> values, std::vector<int64_t> shape) {
  return at::tensor(values, at::kFloat).reshape(shape);
}

void decode() {
  const at::Tensor priors = tensor({10, 20, 4, 8}, {1, 4});
  const at::Tensor locs = at::zeros({1, 1, 4});
  const std::vector<double> variances{0.1, 0.2};
  const at::Tensor boxes = op<at::Tensor(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>)>("ancis::decode")
                               .call(locs, priors, variances);
  expect(at::equal(boxes, tensor({8, 16, 12, 24}, {1, 1, 4})), "decode: zero offsets give the prior box");
}

void detect() {
  const at::Tensor priors = tensor({32, 32, 10, 10, 32, 33, 10, 10, 80, 80, 10, 10}, {3, 4});
  const at::Tensor locs = at::zeros({1, 3, 4});
  const at::Tensor conf = tensor({0, 2, 0, 1, 3, 0}, {1, 3, 2});  // third prior is background
  const std::vector<double> variances{0.1, 0.2};
  using Signature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, std::optional<int64_t>, int64_t,
      at::ArrayRef<double>);
  const auto [boxes, scores, labels, counts] =
      op<Signature>("ancis::detect").call(locs, conf, priors, 0.3, 0.3, 200, 500, variances);
  // The second prior overlaps the first (IoU 0.82) and scores lower: suppressed.
  expect(counts.item<int64_t>() == 1 && boxes.size(1) == 500, "detect: one detection after NMS");
  expect(at::equal(boxes[0][0], tensor({27, 27, 37, 37}, {4})), "detect: the best prior's box");
  expect(labels[0][0].item<int64_t>() == 1, "detect: label 1");
}

void nms() {
  const at::Tensor boxes = tensor({0, 0, 10, 10, 0, 1, 10, 11, 0, 5, 10, 15, 20, 20, 30, 30}, {4, 4});
  const at::Tensor scores = tensor({0.9f, 0.8f, 0.7f, 0.1f}, {4});
  const at::Tensor keep =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("ancis::nms").call(boxes, scores, 0.5);
  expect(at::equal(keep, at::tensor({0, 2, 3}, at::kLong)), "nms: keep [0, 2, 3]");
  const at::Tensor idxs = at::tensor({0, 1, 0, 0}, at::kLong);
  const at::Tensor bkeep = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
                               "ancis::batched_nms")
                               .call(boxes, scores, idxs, 0.5);
  expect(at::equal(bkeep, at::tensor({0, 1, 2, 3}, at::kLong)), "batched_nms: classes do not suppress each other");
}

void crop_and_resize() {
  const at::Tensor features = at::arange(48, at::kFloat).reshape({1, 1, 6, 8});
  const at::Tensor boxes = tensor({1, 2, 4, 6}, {1, 4});
  const at::Tensor batch_idx = at::zeros({1}, at::kLong);
  const std::vector<int64_t> size{4, 5};
  auto crop = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, bool)>(
      "ancis::crop_and_resize");
  const at::Tensor corners = crop.call(features, boxes, batch_idx, size, true);
  // Exact on a linear ramp: 8 * y + x on y = 1..4, x = 2..6.
  const at::Tensor ramp = at::arange(1, 5, at::kFloat).unsqueeze(1) * 8 + at::arange(2, 7, at::kFloat);
  expect(at::equal(corners[0][0], ramp), "crop_and_resize: align_corners samples the box corners");
  const at::Tensor bounds = at::tensor({1, 2, 4, 6}, at::kLong).reshape({1, 4});
  const at::Tensor exact = crop.call(features, bounds, batch_idx, std::vector<int64_t>{4, 5}, false);
  expect(at::equal(exact[0][0], features[0][0].slice(0, 1, 5).slice(1, 2, 7)),
         "crop_and_resize: an integer crop at its own size is the crop");
}

void paste() {
  const at::Tensor probs = at::ones({2, 3, 3});
  const at::Tensor boxes = tensor({1, 1, 3, 3, 2, 2, 5, 5}, {2, 4});
  const std::vector<int64_t> input{8, 8}, output{8, 8};
  const at::Tensor masks =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                    at::IntArrayRef, double)>("ancis::paste_masks")
          .call(probs, boxes, std::nullopt, input, output, 0.5);
  expect(masks[0].sum().item<int64_t>() == 9 && masks[1].sum().item<int64_t>() == 16, "paste_masks: box areas");
  const at::Tensor labels =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                    const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef, double)>("ancis::paste_labels")
          .call(probs, boxes, std::nullopt, tensor({0.2f, 0.9f}, {2}), input, output, 0.5);
  expect(labels[2][2].item<int32_t>() == 2 && labels[1][1].item<int32_t>() == 1 && labels[0][0].item<int32_t>() == 0,
         "paste_labels: highest score on top");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s path/to/libancis_ops.so\n", argv[0]);
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 1;
  }
  try {
    decode();
    detect();
    nms();
    crop_and_resize();
    paste();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
