/* D3's three-body (ATM) term on a rank's graph (see mlmd_model.h and mlmd.model.dispersion_graph_atm): every
   triple once over all ranks, at its atom of lowest ID, from that atom's own edges out to the three-body cutoff.
   1. CN of the local nodes from their own edges (autograd graph kept for step 4); 2. forward exchange: the ghost
   nodes' CN from their owners; 3. the triples at the local nodes given every node's CN (a leaf) and atom ID:
   energies in thirds over the three nodes; 4. dE/d(edge vector) directly, and dE/dCN of every node: the ghosts'
   rows go onto their owners' (reverse exchange) and through dCN/d(edge vector) of the owners' own edges. The
   ghost nodes' energy thirds are returned apart: their owners' per-atom energies (LAMMPS adds ghost atoms'
   per-atom energies onto their owners with newton on). */

#include "mlmd_model.h"
#include "mlmd_tensors.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

namespace mlmd {

Evaluation Model::dispersion_three_body(const LocalGraph &g, const std::vector<int64_t> &species,
                                        const std::vector<int64_t> &atom_ids, Exchange *ex)
{
  const int64_t n_local = g.n_local, n_nodes = g.n_nodes(), n_edges = g.n_edges();
  const int64_t n_mirrored = g.n_mirrored;
  if (n_nodes > n_local && ex == nullptr) throw ModelError("D3 three-body term: ghost nodes but no exchange");
  if (static_cast<int64_t>(atom_ids.size()) != n_nodes) throw ModelError("D3 three-body term: one atom ID per node");
  GraphTensors t = graph_tensors(g, species, dtype_);
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()

  const torch::Tensor cn =
      module_.get_method("local_dispersion_cn")({t.species, t.edge_index, t.vectors, n_local, n_mirrored}).toTensor();
  if (cn.dim() != 1 || cn.size(0) != n_local)
    throw ModelError("the model's D3 returned " + std::to_string(cn.dim() == 1 ? cn.size(0) : -1) +
                     " coordination numbers for " + std::to_string(n_local) + " local atoms");
  torch::Tensor cn_all = cn.detach();
  if (ex != nullptr) {
    const torch::Tensor ghost_cn = ex->forward(cn.detach().to(torch::kFloat64).reshape({n_local, 1}), 1);
    if (ghost_cn.size(0) != n_nodes - n_local) throw ModelError("CN exchange returned the wrong rows");
    cn_all = torch::cat({cn_all, ghost_cn.reshape({-1}).to(dtype_)});
  }
  cn_all = cn_all.clone().requires_grad_(true);
  const torch::Tensor ids =
      torch::from_blob(const_cast<int64_t *>(atom_ids.data()), {n_nodes}, torch::TensorOptions().dtype(torch::kInt64))
          .clone();
  const torch::Tensor energies = module_.get_method("local_dispersion_atm")(
      {t.species, t.edge_index, t.vectors, n_local, cn_all, ids}).toTensor();
  if (energies.dim() != 1 || energies.size(0) != n_nodes)
    throw ModelError("the model's D3 three-body term returned " +
                     std::to_string(energies.dim() == 1 ? energies.size(0) : -1) + " energies for " +
                     std::to_string(n_nodes) + " nodes");

  torch::Tensor grad, grad_cn;
  if (energies.requires_grad() && n_edges > 0) {
    const auto gs = torch::autograd::grad({energies.sum()}, {t.vectors, cn_all}, {}, false, false, true);
    grad = gs[0];
    grad_cn = gs[1];
  }
  if (!grad_cn.defined()) grad_cn = torch::zeros({n_nodes}, torch::TensorOptions().dtype(dtype_));
  torch::Tensor de_dcn = grad_cn.detach().to(torch::kFloat64).reshape({n_nodes, 1});
  de_dcn = ex != nullptr ? ex->reverse(de_dcn, 1) : de_dcn;
  if (cn.requires_grad() && n_edges > 0) {
    const torch::Tensor via_cn = torch::autograd::grad({cn}, {t.vectors}, {de_dcn.reshape({n_local}).to(dtype_)},
                                                       false, false, true)[0];
    if (via_cn.defined()) grad = grad.defined() ? grad + via_cn : via_cn;
  }
  Evaluation ev = finish(energies.detach().slice(0, 0, n_local), grad, n_edges);
  ev.ghost_energies = to_vector(energies.detach().slice(0, n_local, n_nodes));
  return ev;
}

}    // namespace mlmd
