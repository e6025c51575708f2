/* A predicted-charge model's short-range energies and charge head on the rank's graph: see mlmd_model.h
   (charges_forward, charges_backward) and pair_mlmd_charges.cpp (what the engine does in between). */

#include "mlmd_model.h"
#include "mlmd_tensors.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

namespace mlmd {

namespace {
std::vector<double> to_doubles(const torch::Tensor &t)
{
  const torch::Tensor c = t.detach().to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}
}    // namespace

void Model::charges_forward(const LocalGraph &g, const std::vector<int64_t> &species, std::vector<double> &energies,
                            std::vector<double> &raw, std::vector<double> &softness)
{
  if (!charges_) throw ModelError("this model does not predict charges");
  ch_vectors_ = ch_energies_ = ch_raw_ = ch_softness_ = torch::Tensor();
  ch_edges_ = g.n_edges();
  const int64_t n_local = g.n_local;
  energies.clear();
  raw.clear();
  softness.clear();
  if (n_local == 0) return;    // an empty subdomain: nothing to evaluate (the engine's sums are collective)
  GraphTensors t = graph_tensors(g, species, dtype_);
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()
  const auto out = module_.get_method("local_charges")(
      {t.species, t.edge_index, t.vectors, n_local, static_cast<int64_t>(g.n_mirrored)}).toTuple();
  ch_energies_ = out->elements()[0].toTensor();
  ch_raw_ = out->elements()[1].toTensor();
  ch_softness_ = out->elements()[2].toTensor();
  for (const torch::Tensor *x : {&ch_energies_, &ch_raw_, &ch_softness_})
    if (x->dim() != 1 || x->size(0) != n_local)
      throw ModelError("local_charges returned " + std::to_string(x->dim() == 1 ? x->size(0) : -1) +
                       " values for " + std::to_string(n_local) + " local atoms");
  ch_vectors_ = t.vectors;
  energies = to_doubles(ch_energies_);
  raw = to_doubles(ch_raw_);
  softness = to_doubles(ch_softness_);
}

Evaluation Model::charges_backward(const std::vector<double> &a, const std::vector<double> &b)
{
  Evaluation out;
  if (!ch_energies_.defined()) return out;    // charges_forward had no local atoms
  const int64_t n_local = ch_energies_.size(0);
  if (static_cast<int64_t>(a.size()) != n_local || static_cast<int64_t>(b.size()) != n_local)
    throw ModelError("charges_backward: weights for " + std::to_string(a.size()) + " atoms, " +
                     std::to_string(n_local) + " local atoms");
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor wa = torch::from_blob(const_cast<double *>(a.data()), {n_local}, f64).to(dtype_, false, true);
  const torch::Tensor wb = torch::from_blob(const_cast<double *>(b.data()), {n_local}, f64).to(dtype_, false, true);
  torch::AutoGradMode enable_grad(true);
  // one backward pass for the short-range energy and the charge response (a, b are constants here)
  const torch::Tensor total = ch_energies_.sum() + (wa * ch_raw_).sum() + (wb * ch_softness_).sum();
  out.energies = to_doubles(ch_energies_);
  torch::Tensor grad;
  if (total.requires_grad() && ch_edges_ > 0)
    grad = torch::autograd::grad({total}, {ch_vectors_}, {}, false, false, true)[0];
  if (grad.defined())
    out.grad = to_doubles(grad);
  else
    out.grad.assign(3 * ch_edges_, 0.0);
  ch_vectors_ = ch_energies_ = ch_raw_ = ch_softness_ = torch::Tensor();
  return out;
}

}    // namespace mlmd
