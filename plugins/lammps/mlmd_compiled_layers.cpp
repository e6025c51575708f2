/* The compiled layer-by-layer programs of a packaged model (mlmd/deploy/compiled_layers.py; see mlmd_compiled.h).

   Inputs of every program: species_local [n], species_ghost [g], (h_local [n, w], h_ghost [g, w] for layer > 0),
   pair_index [2, P], pair_vectors [P, 3], reverse_vectors [P, 3], rest_index [2, R], rest_vectors [R, 3], and for
   a backward program the tensors its forward program saved (interface 2; their number is what the forward returns
   after the features) and the gradient of its layer's output [n, w']. n, g, P, R >= 2: padding nodes (species 0, no
   edges) go after the locals and after the ghosts (ghost indices in the edges shift by the local padding);
   padding edges run from node 0 to itself, 2 r_cut long (exactly zero messages and gradients). */

#include "mlmd_compiled.h"
#include "mlmd_model.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>

namespace mlmd {

namespace {
// mlmd.deploy.compiled_layers.KNOWN_INTERFACES: 1 computed each layer's forward again in its backward program, 2
// passes the forward program's saved tensors to it
constexpr int LAYERS_INTERFACE_MIN = 1, LAYERS_INTERFACE_MAX = 2;

using Loader = torch::inductor::AOTIModelPackageLoader;

// n_out: the number of outputs, or (at_least) their least number
std::vector<torch::Tensor> call(Loader &program, const std::vector<torch::Tensor> &inputs, size_t n_out,
                                bool at_least = false)
{
  std::vector<torch::Tensor> out = program.run(inputs);
  if (out.size() < n_out || (!at_least && out.size() != n_out))
    throw std::runtime_error("a compiled layer program returned an unexpected number of outputs");
  return out;
}

// rows [0, n) of t, then zero rows up to `rows` (the padding nodes' rows)
torch::Tensor padded_rows(const torch::Tensor &t, int64_t rows)
{
  if (t.size(0) == rows) return t.contiguous();
  return torch::cat({t, torch::zeros({rows - t.size(0), t.size(1)}, t.options())}).contiguous();
}
}    // namespace

CompiledLayers::~CompiledLayers() = default;

std::unique_ptr<CompiledLayers> CompiledLayers::open(const std::string &model_path, const CompiledCard &card,
                                                     int n_layers, double r_cut, torch::Dtype dtype,
                                                     std::string &why_not)
{
  why_not = compiled_unusable(card);
  if (!why_not.empty()) return nullptr;
  if (card.layers_file.empty()) {
    why_not = "the compiled copy has no layer-by-layer programs (packaged before they existed)";
    return nullptr;
  }
  if (card.layers_interface < LAYERS_INTERFACE_MIN || card.layers_interface > LAYERS_INTERFACE_MAX) {
    why_not = "layer programs of interface " + std::to_string(card.layers_interface) + ": not known to this plugin";
    return nullptr;
  }
  const std::string path = checked_file(model_path, card.layers_file, card.layers_sha256, "compiled layer programs",
                                        why_not);
  if (path.empty()) return nullptr;
  auto p = std::unique_ptr<CompiledLayers>(new CompiledLayers());
  try {
    for (int k = 0; k + 1 < n_layers; k++) {
      const std::string layer = "layer" + std::to_string(k);
      p->forward_.push_back(std::make_unique<Loader>(path, layer + "_forward", /*single_threaded=*/true));
      p->backward_.push_back(std::make_unique<Loader>(path, layer + "_backward", /*single_threaded=*/true));
    }
    p->last_ = std::make_unique<Loader>(path, "layer" + std::to_string(n_layers - 1) + "_last", true);
  } catch (const std::exception &e) {
    why_not = "cannot load the compiled layer programs " + path + ": " + e.what();
    return nullptr;
  }
  p->r_cut_ = r_cut;
  p->dtype_ = dtype;
  p->saves_ = card.layers_interface >= 2;
  return p;
}

void CompiledLayers::run(const LocalGraph &g, const std::vector<int64_t> &species, Exchange &ex,
                         std::vector<double> &energies, std::vector<double> &grad)
{
  const int64_t n = g.n_local, n_ghost = g.n_ghost_nodes();
  const int64_t nl = std::max<int64_t>(n, 2), ng = std::max<int64_t>(n_ghost, 2);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor sl = torch::zeros({nl}, i64), sg = torch::zeros({ng}, i64);
  std::copy(species.begin(), species.begin() + n, sl.data_ptr<int64_t>());
  std::copy(species.begin() + n, species.end(), sg.data_ptr<int64_t>());
  // ghost nodes follow the local nodes' padding rows
  const EdgeBlocks b = padded_edge_blocks(g, r_cut_, dtype_, n, nl - n);
  const std::vector<torch::Tensor> edges{b.pair_index, b.pair_vectors, b.reverse_vectors, b.rest_index,
                                         b.rest_vectors};
  auto inputs = [&](const torch::Tensor *h_local, const torch::Tensor *h_ghost, const torch::Tensor *g_out,
                    const std::vector<torch::Tensor> *saved = nullptr) {
    std::vector<torch::Tensor> in{sl, sg};
    if (h_local != nullptr) {
      in.push_back(*h_local);
      in.push_back(*h_ghost);
    }
    in.insert(in.end(), edges.begin(), edges.end());
    if (saved != nullptr) in.insert(in.end(), saved->begin(), saved->end());
    if (g_out != nullptr) in.push_back(*g_out);
    return in;
  };

  // forward: the features entering layers 1..L-1 of the local nodes (padded rows included) and of the ghosts
  const int n_layers = static_cast<int>(forward_.size()) + 1;
  std::vector<torch::Tensor> h_local(n_layers), h_ghost(n_layers);
  // what each forward program keeps for its backward program (interface 2), as autograd keeps a layer's tensors
  std::vector<std::vector<torch::Tensor>> saved(n_layers);
  for (int k = 0; k + 1 < n_layers; k++) {
    std::vector<torch::Tensor> outs =
        call(*forward_[k], k == 0 ? inputs(nullptr, nullptr, nullptr) : inputs(&h_local[k], &h_ghost[k], nullptr), 1,
             saves_);
    const torch::Tensor y = outs[0];
    saved[k].assign(outs.begin() + 1, outs.end());
    const int width = static_cast<int>(y.size(1));
    const torch::Tensor ghosts = ex.forward(y.slice(0, 0, n).to(torch::kFloat64), width);
    if (ghosts.size(0) != n_ghost) throw ModelError("feature exchange returned the wrong rows");
    h_local[k + 1] = y.contiguous();
    h_ghost[k + 1] = padded_rows(ghosts.to(dtype_), ng);
  }
  std::vector<torch::Tensor> out = call(*last_, inputs(&h_local[n_layers - 1], &h_ghost[n_layers - 1], nullptr), 4);
  const torch::Tensor en = out[0].to(torch::kFloat64).contiguous();
  if (en.dim() != 1 || en.size(0) != nl || out[3].size(0) != 2 * b.padded_pairs + b.padded_rest)
    throw std::runtime_error("a compiled layer program returned outputs of unexpected shapes");
  torch::Tensor g_edges = out[3].to(torch::kFloat64);
  torch::Tensor g_local = out[1], g_ghost = out[2];
  // backward: the gradient of the features entering layer k goes to the ghosts' owners, whose sum is the
  // gradient of layer k-1's output
  for (int k = n_layers - 1; k > 0; k--) {
    const torch::Tensor gx = torch::cat({g_local.slice(0, 0, n), g_ghost.slice(0, 0, n_ghost)}).to(torch::kFloat64);
    const torch::Tensor gy = padded_rows(ex.reverse(gx, static_cast<int>(gx.size(1))).to(dtype_), nl);
    if (k - 1 > 0) {
      out = call(*backward_[k - 1], inputs(&h_local[k - 1], &h_ghost[k - 1], &gy, &saved[k - 1]), 3);
      saved[k - 1].clear();    // freed as autograd frees a layer's tensors once its backward ran
      g_local = out[0];
      g_ghost = out[1];
      g_edges = g_edges + out[2].to(torch::kFloat64);
    } else {
      g_edges = g_edges + call(*backward_[0], inputs(nullptr, nullptr, &gy, &saved[0]), 1)[0].to(torch::kFloat64);
    }
  }
  const double *ep = en.data_ptr<double>();
  energies.assign(ep, ep + n);
  unpadded_edge_gradients(b, g_edges, grad);
}

}    // namespace mlmd
