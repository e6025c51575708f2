/* The packaged model in the LAMMPS plugin, evaluation: one call on a rank's graph, or layer by layer with the
   ghost atoms' features exchanged (see mlmd_model.h). Loading and the card are in mlmd_model.cpp. */

#include "mlmd_model.h"

#include "mlmd_tensors.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace mlmd {

namespace {
torch::Tensor grad_or_zeros(const torch::Tensor &g, const torch::Tensor &like)
{
  return g.defined() ? g : torch::zeros_like(like);
}
}    // namespace

std::vector<double> to_vector(const torch::Tensor &t)
{
  const torch::Tensor c = t.detach().to(torch::kFloat64).contiguous();
  const double *p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

GraphTensors graph_tensors(const LocalGraph &g, const std::vector<int64_t> &species, torch::Dtype dtype)
{
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);
  const int64_t n_edges = g.n_edges();
  GraphTensors t;
  t.species = torch::from_blob(const_cast<int64_t *>(species.data()), {static_cast<int64_t>(species.size())},
                               long_opts).clone();
  t.edge_index = torch::empty({2, n_edges}, long_opts);
  int64_t *ei = t.edge_index.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; e++) {
    ei[e] = g.edge_src[e];
    ei[n_edges + e] = g.edge_dst[e];
  }
  t.vectors = torch::from_blob(const_cast<double *>(g.edge_vec.data()), {n_edges, 3},
                               torch::TensorOptions().dtype(torch::kFloat64))
                  .to(dtype, /*non_blocking=*/false, /*copy=*/true)
                  .requires_grad_(true);
  return t;
}

Evaluation finish(const torch::Tensor &energies, const torch::Tensor &grad, int64_t n_edges)
{
  Evaluation out;
  out.energies = to_vector(energies);
  if (grad.defined() && n_edges > 0)
    out.grad = to_vector(grad);
  else
    out.grad.assign(3 * n_edges, 0.0);
  return out;
}

namespace {
void add_scaled(Evaluation &into, const Evaluation &part, double w)
{
  if (into.energies.empty()) into.energies.assign(part.energies.size(), 0.0);
  if (into.grad.empty()) into.grad.assign(part.grad.size(), 0.0);
  for (size_t k = 0; k < part.energies.size(); k++) into.energies[k] += w * part.energies[k];
  for (size_t k = 0; k < part.grad.size(); k++) into.grad[k] += w * part.grad[k];
}
}    // namespace

Evaluation Model::one_call(const LocalGraph &g, const std::vector<int64_t> &species, int member)
{
  const int64_t n_local = g.n_local;
  if (member < 0 && compiled_) {
    Evaluation out;
    compiled_->run(g, species, out.energies, out.grad);
    return out;
  }
  GraphTensors t = graph_tensors(g, species, dtype_);
  torch::AutoGradMode enable_grad(true);
  // TorchScript's profiling executor re-specialises the graph as the graph sizes change from step to step;
  // the plain executor measured 25-40% faster on small systems and the same on 3,000 atoms (scoped: the
  // process-wide setting is restored afterwards, e.g. for a Python process that also runs the model)
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);
  torch::Tensor energies;
  if (member < 0) {
    std::vector<torch::jit::IValue> in{t.species, t.edge_index, t.vectors, n_local};
    if (takes_mirrored_) in.emplace_back(static_cast<int64_t>(g.n_mirrored));
    energies = module_.get_method("local_energies")(in).toTensor();
  } else if (member_entry_) {
    energies = module_.get_method("local_energies_of_member")(
        {static_cast<int64_t>(member), t.species, t.edge_index, t.vectors, n_local}).toTensor();
  } else {    // committees packaged before local_energies_of_member: every row shares one graph
    energies = module_.get_method("local_member_energies")({t.species, t.edge_index, t.vectors, n_local})
                   .toTensor()[member];
  }
  if (energies.dim() != 1 || energies.size(0) != n_local)
    throw ModelError("the model returned " + std::to_string(energies.dim() == 1 ? energies.size(0) : -1) +
                     " energies for " + std::to_string(n_local) + " local atoms");
  torch::Tensor grad;
  if (energies.requires_grad())
    grad = torch::autograd::grad({energies.sum()}, {t.vectors}, {}, /*retain_graph=*/false,
                                 /*create_graph=*/false, /*allow_unused=*/true)[0];
  return finish(energies, grad, g.n_edges());
}

namespace {
// What every layer reads of the edges, computed once (layer_edges); the layers see leaf copies (sh_in,
// radial_in), whose gradients backward() sums over the layers and vector_gradient() takes back to the edge
// vectors at the end.
class EdgeAttributes {
 public:
  torch::Tensor sh, radial, sh_in, radial_in, g_sh, g_radial;

  EdgeAttributes(const torch::jit::Module &module, int64_t member, const torch::Tensor &vectors, int64_t n_mirrored)
  {
    const auto edges = module.get_method("layer_edges")({member, vectors, n_mirrored}).toTuple();
    sh = edges->elements()[0].toTensor();
    radial = edges->elements()[1].toTensor();
    sh_in = sh.detach().requires_grad_(true);
    radial_in = radial.detach().requires_grad_(true);
  }

  // the backward pass of a layer's output `out` (gradient grad_out) into the edge attributes and, when it is
  // defined, into `input`: returns that gradient (undefined otherwise)
  torch::Tensor backward(const torch::Tensor &out, const torch::Tensor &grad_out, const torch::Tensor &input)
  {
    if (!out.requires_grad()) return torch::Tensor();
    std::vector<torch::Tensor> wrt{sh_in, radial_in};
    if (input.defined()) wrt.push_back(input);
    auto gs = torch::autograd::grad({out}, wrt, {grad_out}, false, false, true);
    accumulate(g_sh, gs[0]);
    accumulate(g_radial, gs[1]);
    return input.defined() ? gs[2] : torch::Tensor();
  }

  // dE/d(edge vector) from the summed gradients (undefined without edges or without a path to them)
  torch::Tensor vector_gradient(const torch::Tensor &vectors, int64_t n_edges) const
  {
    if (n_edges == 0 || !(sh.requires_grad() || radial.requires_grad())) return torch::Tensor();
    return torch::autograd::grad({sh, radial}, {vectors}, {grad_or_zeros(g_sh, sh), grad_or_zeros(g_radial, radial)},
                                 false, false, true)[0];
  }

 private:
  // sum += part (the first part taken as it is: no zero-filled start, no extra pass over the edges)
  static void accumulate(torch::Tensor &sum, const torch::Tensor &part)
  {
    if (!part.defined()) return;
    sum = sum.defined() ? sum + part : part;
  }
};
}    // namespace

Evaluation Model::layers(const LocalGraph &g, const std::vector<int64_t> &species, int member, Exchange &ex,
                         bool split)
{
  if (!layered_) throw ModelError("this model file has no layer-by-layer entry points");
  if (split && !split_layers_) throw ModelError("this model file has no layer_messages/layer_update entry points");
  // the compiled programs take the graph with every edge into a local atom (split = false: the pair style does
  // not split the graph when they run); a rank without local atoms takes the TorchScript path's exchanges
  if (!split && member < 0 && compiled_layers_ && g.n_local > 0) {
    Evaluation out;
    compiled_layers_->run(g, species, ex, out.energies, out.grad);
    return out;
  }
  // the graph's tensors once for every member: each member's backward pass runs through its own graph from the
  // same edge-vector leaf
  const GraphTensors t = graph_tensors(g, species, dtype_);
  auto one = [&](int k) {
    return split ? split_layers_of_member(g, t.species, t.edge_index, t.vectors, k, ex)
                 : layers_of_member(g, t.species, t.edge_index, t.vectors, k, ex);
  };
  if (member >= 0) return one(member);
  if (n_members_ == 1) return one(0);
  Evaluation mean;    // the committee mean, member by member (each backward pass runs through one member)
  for (int k = 0; k < n_members_; k++) add_scaled(mean, one(k), 1.0 / n_members_);
  return mean;
}

Evaluation Model::layers_of_member(const LocalGraph &g, const torch::Tensor &species,
                                   const torch::Tensor &edge_index, const torch::Tensor &vectors, int member,
                                   Exchange &ex)
{
  const std::vector<int64_t> &widths = widths_.at(member);
  const int n_layers = static_cast<int>(widths.size()) - 1;
  const int64_t n_local = g.n_local, n_nodes = g.n_nodes(), n_edges = g.n_edges();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  if (n_local == 0) {    // nothing of ours, but the exchanges are collective: take part in each
    for (int k = 0; k + 1 < n_layers; k++) ex.forward(torch::zeros({0, widths[k + 1]}, f64), widths[k + 1]);
    for (int k = n_layers - 1; k > 0; k--) ex.reverse(torch::zeros({0, widths[k]}, f64), widths[k]);
    return Evaluation();
  }
  const int64_t m = member, n_mirrored = g.n_mirrored;
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()

  EdgeAttributes ea(module_, m, vectors, n_mirrored);
  std::vector<torch::Tensor> inputs(n_layers), outputs(n_layers);
  torch::Tensor x = module_.get_method("layer_embed")({m, species}).toTensor();
  for (int k = 0; k < n_layers; k++) {
    if (k > 0) x = x.detach().requires_grad_(true);
    inputs[k] = x;
    outputs[k] = module_.get_method("layer_interaction")(
        {m, static_cast<int64_t>(k), x, species, edge_index, ea.sh_in, ea.radial_in, n_mirrored, n_local})
                     .toTensor();
    if (outputs[k].dim() != 2 || outputs[k].size(0) != n_local || outputs[k].size(1) != widths[k + 1])
      throw ModelError("layer " + std::to_string(k) + " returned features of the wrong shape");
    if (k + 1 < n_layers) {
      const torch::Tensor ghosts = ex.forward(outputs[k].detach().to(torch::kFloat64), widths[k + 1]);
      if (ghosts.size(0) != n_nodes - n_local) throw ModelError("feature exchange returned the wrong rows");
      x = torch::cat({outputs[k].detach(), ghosts.to(dtype_)}, 0);
    }
  }
  const torch::Tensor last = outputs[n_layers - 1].detach().requires_grad_(true);
  const torch::Tensor energies =
      module_.get_method("layer_readout")({m, last, species.slice(0, 0, n_local)}).toTensor();
  if (energies.dim() != 1 || energies.size(0) != n_local)
    throw ModelError("the readout returned " + std::to_string(energies.dim() == 1 ? energies.size(0) : -1) +
                     " energies for " + std::to_string(n_local) + " local atoms");
  torch::Tensor gy = torch::autograd::grad({energies.sum()}, {last}, {}, false, false, true)[0];
  gy = grad_or_zeros(gy, last);

  // backward, layer by layer: the edge attributes' gradients accumulate; the gradient of the layer's input
  // features goes to the owners of the ghost nodes, whose sum over ranks is the gradient of the previous
  // layer's output
  for (int k = n_layers - 1; k >= 0; k--) {
    torch::Tensor gx = ea.backward(outputs[k], gy, k > 0 ? inputs[k] : torch::Tensor());
    if (k > 0) {
      if (!gx.defined()) gx = torch::zeros({n_nodes, widths[k]}, torch::TensorOptions().dtype(dtype_));
      gy = ex.reverse(gx.detach().to(torch::kFloat64), widths[k]).to(dtype_);
    }
  }
  return finish(energies, ea.vector_gradient(vectors, n_edges), n_edges);
}

/* Each pair on one rank: every layer is messages (every node's summed messages from this rank's edges, ghost
   nodes included) then update (the local nodes' new features from their summed messages). Between the two the
   ghost nodes' message sums go to their owners (ex.reverse); in the backward pass the owners' message gradients
   come back to the ghost copies (ex.forward). The exchanges, in order: forward pass, layer k: reverse(messages
   k), then forward(features k + 1) unless last; backward pass, layer k from the last: forward(message
   gradients k), then reverse(feature gradients k) unless k = 0. */
Evaluation Model::split_layers_of_member(const LocalGraph &g, const torch::Tensor &species,
                                         const torch::Tensor &edge_index, const torch::Tensor &vectors, int member,
                                         Exchange &ex)
{
  const std::vector<int64_t> &widths = widths_.at(member), &msg_widths = message_widths_.at(member);
  const int n_layers = static_cast<int>(widths.size()) - 1;
  const int64_t n_local = g.n_local, n_nodes = g.n_nodes(), n_edges = g.n_edges();
  // the exchanges carry the model's own dtype (float32 models: half the bytes, no conversions), the same on
  // every rank
  const auto opts = torch::TensorOptions().dtype(dtype_);
  if (n_local == 0) {    // nothing of ours (then no edges either), but the exchanges are collective
    for (int k = 0; k < n_layers; k++) {
      ex.reverse(torch::zeros({n_nodes, msg_widths[k]}, opts), msg_widths[k]);
      if (k + 1 < n_layers) ex.forward(torch::zeros({0, widths[k + 1]}, opts), widths[k + 1]);
    }
    for (int k = n_layers - 1; k >= 0; k--) {
      ex.forward(torch::zeros({0, msg_widths[k]}, opts), msg_widths[k]);
      if (k > 0) ex.reverse(torch::zeros({n_nodes, widths[k]}, opts), widths[k]);
    }
    return Evaluation();
  }
  const int64_t m = member, n_mirrored = g.n_mirrored;
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()

  EdgeAttributes ea(module_, m, vectors, n_mirrored);
  const torch::Tensor local_species = species.slice(0, 0, n_local);
  std::vector<torch::Tensor> inputs(n_layers), messages(n_layers), summed(n_layers), outputs(n_layers);
  torch::Tensor x = module_.get_method("layer_embed")({m, species}).toTensor();    // no gradient: species only
  for (int k = 0; k < n_layers; k++) {
    inputs[k] = x;
    messages[k] = module_.get_method("layer_messages")(
        {m, static_cast<int64_t>(k), x, edge_index, ea.sh_in, ea.radial_in, n_mirrored, n_nodes}).toTensor();
    if (messages[k].dim() != 2 || messages[k].size(0) != n_nodes || messages[k].size(1) != msg_widths[k])
      throw ModelError("layer " + std::to_string(k) + " returned messages of the wrong shape");
    summed[k] = ex.reverse(messages[k].detach(), msg_widths[k]).requires_grad_(true);
    outputs[k] = module_.get_method("layer_update")({m, static_cast<int64_t>(k), x.slice(0, 0, n_local), summed[k],
                                                     local_species}).toTensor();
    if (outputs[k].dim() != 2 || outputs[k].size(0) != n_local || outputs[k].size(1) != widths[k + 1])
      throw ModelError("layer " + std::to_string(k) + " returned features of the wrong shape");
    if (k + 1 < n_layers) {
      const torch::Tensor ghosts = ex.forward(outputs[k].detach(), widths[k + 1]);
      if (ghosts.size(0) != n_nodes - n_local) throw ModelError("feature exchange returned the wrong rows");
      x = torch::cat({outputs[k].detach(), ghosts}, 0).requires_grad_(true);
    }
  }
  const torch::Tensor last = outputs[n_layers - 1].detach().requires_grad_(true);
  const torch::Tensor energies = module_.get_method("layer_readout")({m, last, local_species}).toTensor();
  if (energies.dim() != 1 || energies.size(0) != n_local)
    throw ModelError("the readout returned " + std::to_string(energies.dim() == 1 ? energies.size(0) : -1) +
                     " energies for " + std::to_string(n_local) + " local atoms");
  torch::Tensor gy = grad_or_zeros(torch::autograd::grad({energies.sum()}, {last}, {}, false, false, true)[0], last);

  for (int k = n_layers - 1; k >= 0; k--) {
    // the update: gradients of the summed messages and (k > 0) of the local nodes' input features
    std::vector<torch::Tensor> wrt{summed[k]};
    if (k > 0) wrt.push_back(inputs[k]);
    auto gu = torch::autograd::grad({outputs[k]}, wrt, {gy}, false, false, true);
    const torch::Tensor g_sum = grad_or_zeros(gu[0], summed[k]);
    // every node's message gradient: the local ones', and the ghosts' from their owners
    const torch::Tensor g_ghosts = ex.forward(g_sum.detach(), msg_widths[k]);
    const torch::Tensor g_msg = torch::cat({g_sum, g_ghosts}, 0);
    torch::Tensor gx = ea.backward(messages[k], g_msg, k > 0 ? inputs[k] : torch::Tensor());
    if (k > 0) {
      if (!gx.defined()) gx = torch::zeros({n_nodes, widths[k]}, torch::TensorOptions().dtype(dtype_));
      if (gu[1].defined()) gx = gx + gu[1];
      gy = ex.reverse(gx.detach(), widths[k]);
    }
  }
  return finish(energies, ea.vector_gradient(vectors, n_edges), n_edges);
}

}    // namespace mlmd
