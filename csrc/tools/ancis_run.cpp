// ancis_run: runs an export of ancis_fast's whole pipeline from C++ and times it: TorchScript
// (`ancis-fast export --format torchscript`, MODEL.pt) or AOTInductor (`--format aoti`,
// MODEL.pt2, loaded with torch::inductor::AOTIModelPackageLoader).
//
//   ancis_run MODEL.pt|MODEL.pt2 INPUT.pt [--runs N] [--warmup W] [--threads T] [--device cpu|cuda]
//             [--out detections.csv]
//   ancis_run --check-ops        exit 0 when the ancis operators are registered
//
// INPUT.pt is the network input x [B,3,H,W] float32 (BGR in [0,1] at the model's input size)
// saved by Python's torch.save, e.g. `ancis-fast export ... --example-input INPUT.pt` or
// ancis_fast.export.save_runner_input; it is read with torch::jit::pickle_load. Images are not
// read here because OpenCV's C++ library is not part of the default environment (pip's
// opencv-python ships no C++ headers); preprocessing stays in Python.
//
// Both return boxes [B,M,4], scores [B,M], labels [B,M], counts [B], probs [B,M,h,w],
// mask_sizes [B,M,2] (image b's detections are its first counts[b] rows). Prints the instance
// count and the median latency of the timed runs; --out writes one CSV row per detection:
// batch_idx,label,score,y1,x1,y2,x2,mask_h,mask_w (boxes in network-input pixels, y before x).
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string model, input, out, device = "cpu";
  int runs = 10, warmup = 2, threads = 0;
  bool check_ops = false;
};

constexpr const char* kUsage =
    "usage: ancis_run MODEL.pt|MODEL.pt2 INPUT.pt [--runs N] [--warmup W] [--threads T] [--device cpu|cuda] "
    "[--out detections.csv]\n"
    "       ancis_run --check-ops\n";

int to_int(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (*end != '\0' || value < 0) throw std::invalid_argument(flag + " expects a non-negative integer, got " + text);
  return static_cast<int>(value);
}

Options parse(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--check-ops") {
      options.check_ops = true;
    } else if (arg == "--runs" && has_value) {
      options.runs = std::max(1, to_int(arg, argv[++i]));
    } else if (arg == "--warmup" && has_value) {
      options.warmup = to_int(arg, argv[++i]);
    } else if (arg == "--threads" && has_value) {
      options.threads = to_int(arg, argv[++i]);
    } else if (arg == "--device" && has_value) {
      options.device = argv[++i];
    } else if (arg == "--out" && has_value) {
      options.out = argv[++i];
    } else if (arg.rfind("--", 0) == 0) {
      throw std::invalid_argument("unknown option or missing value: " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (!options.check_ops) {
    if (positional.size() != 2) throw std::invalid_argument("expected MODEL.pt and INPUT.pt");
    options.model = positional[0];
    options.input = positional[1];
  }
  return options;
}

bool ops_registered() {
  for (const char* name : {"ancis::detect", "ancis::crop_and_resize", "ancis::paste_masks"}) {
    if (!c10::Dispatcher::singleton().findSchema({name, ""}).has_value()) {
      std::fprintf(stderr, "error: operator %s is not registered (libancis_ops not loaded)\n", name);
      return false;
    }
  }
  return true;
}

at::Tensor read_input(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open input " + path);
  const std::vector<char> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const c10::IValue value = torch::jit::pickle_load(data);
  if (!value.isTensor()) {
    throw std::runtime_error(path + " holds no tensor; write it with ancis_fast.export.save_runner_input");
  }
  return value.toTensor();
}

// The exported pipeline, either format: forward(x) -> the six padded outputs.
class Model {
 public:
  Model(const std::string& path, const torch::Device& device) {
    if (path.size() > 4 && path.compare(path.size() - 4, 4, ".pt2") == 0) {
      const c10::DeviceIndex index = device.is_cuda() ? (device.has_index() ? device.index() : 0) : -1;
      package_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
      const std::string config = package_->get_metadata().at("ancis_config");
      input_size_ = parse_input_size(config);
    } else {
      module_ = std::make_unique<torch::jit::Module>(torch::jit::load(path, device));
      module_->eval();
      const auto size = module_->attr("input_size").toTupleRef().elements();
      input_size_ = {size.at(0).toInt(), size.at(1).toInt()};
    }
  }

  void check_input(const at::Tensor& x) const {
    if (x.dim() != 4 || x.size(1) != 3 || x.size(2) != input_size_[0] || x.size(3) != input_size_[1]) {
      throw std::runtime_error("input has shape " + c10::str(x.sizes()) + "; the model expects [B, 3, " +
                               std::to_string(input_size_[0]) + ", " + std::to_string(input_size_[1]) + "]");
    }
  }

  std::vector<at::Tensor> forward(const at::Tensor& x) {
    if (package_) return package_->run({x});
    const c10::IValue outputs = module_->forward({x});  // kept alive while its elements are read
    std::vector<at::Tensor> tensors;
    for (const auto& value : outputs.toTupleRef().elements()) tensors.push_back(value.toTensor());
    return tensors;
  }

 private:
  // "input_size": [H, W] from the package's JSON settings (written by ancis_fast.export)
  static std::vector<int64_t> parse_input_size(const std::string& json) {
    const auto key = json.find("\"input_size\"");
    const auto open = json.find('[', key), comma = json.find(',', open), close = json.find(']', open);
    if (key == std::string::npos || open == std::string::npos || close == std::string::npos) {
      throw std::runtime_error("the package has no input_size in its ancis_config; re-export it");
    }
    return {std::stoll(json.substr(open + 1, comma - open - 1)), std::stoll(json.substr(comma + 1, close - comma - 1))};
  }

  std::unique_ptr<torch::jit::Module> module_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package_;
  std::vector<int64_t> input_size_;
};

// boxes, scores, labels, counts, probs, mask_sizes; the small ones copied to the CPU (which
// also waits for a GPU to finish).
std::vector<at::Tensor> run_once(Model& model, const at::Tensor& x) {
  std::vector<at::Tensor> tensors = model.forward(x);
  for (int i : {0, 1, 2, 3, 5}) tensors[i] = tensors[i].cpu();
  return tensors;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

void write_csv(const std::string& path, const std::vector<at::Tensor>& out) {
  std::ofstream file(path);
  if (!file) throw std::runtime_error("cannot write " + path);
  const auto boxes = out[0].to(at::kDouble).contiguous(), scores = out[1].to(at::kDouble).contiguous();
  const auto labels = out[2].to(at::kLong), counts = out[3].to(at::kLong), sizes = out[5].to(at::kLong);
  const auto b = boxes.accessor<double, 3>();
  const auto s = scores.accessor<double, 2>();
  const auto l = labels.accessor<int64_t, 2>();
  const auto m = sizes.accessor<int64_t, 3>();
  const auto n = counts.accessor<int64_t, 1>();
  file << "batch_idx,label,score,y1,x1,y2,x2,mask_h,mask_w\n" << std::setprecision(9);
  for (int64_t k = 0; k < boxes.size(0); ++k) {
    for (int64_t i = 0; i < n[k]; ++i) {
      file << k << ',' << l[k][i] << ',' << s[k][i] << ',' << b[k][i][0] << ',' << b[k][i][1] << ','
           << b[k][i][2] << ',' << b[k][i][3] << ',' << m[k][i][0] << ',' << m[k][i][1] << '\n';
    }
  }
}

int run(const Options& options) {
  if (!ops_registered()) return 1;
  if (options.check_ops) {
    std::printf("ancis operators registered\n");
    return 0;
  }
  if (options.threads > 0) at::set_num_threads(options.threads);
  const torch::Device device(options.device);
  Model model(options.model, device);
  const at::Tensor x = read_input(options.input).to(device, at::kFloat);
  model.check_input(x);

  c10::InferenceMode guard;
  std::vector<at::Tensor> out;
  for (int i = 0; i < options.warmup; ++i) out = run_once(model, x);
  std::vector<double> ms;
  for (int i = 0; i < options.runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    out = run_once(model, x);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::printf("instances: %lld\n", static_cast<long long>(out[3].sum().item<int64_t>()));
  std::printf("median latency: %.3f ms over %d runs (%d warm-up, batch %lld, %d threads)\n", median(ms),
              options.runs, options.warmup, static_cast<long long>(x.size(0)), at::get_num_threads());
  if (!options.out.empty()) write_csv(options.out, out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::invalid_argument& error) {
    std::fprintf(stderr, "error: %s\n%s", error.what(), kUsage);
    return 2;
  } catch (const std::exception& error) {  // c10::Error included: bad files, shape errors, ...
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
