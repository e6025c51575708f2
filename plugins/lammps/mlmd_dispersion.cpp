/* The model's own D3 on a rank's graph (see mlmd_model.h and pair_mlmd_d3.cpp): in one call on a graph whose
   ghosts within the two-body cutoff are centres too (dispersion), or split at the coordination numbers with the
   ghosts' CN and their gradients exchanged between ranks (dispersion_exchanged); and the three-body term on the
   same graph (dispersion_three_body). */

#include "mlmd_model.h"
#include "mlmd_tensors.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

namespace mlmd {

namespace {
void check_energies(const torch::Tensor &energies, int64_t n_local)
{
  if (energies.dim() != 1 || energies.size(0) != n_local)
    throw ModelError("the model's D3 returned " + std::to_string(energies.dim() == 1 ? energies.size(0) : -1) +
                     " energies for " + std::to_string(n_local) + " local atoms");
}

/* Per-species CN weight sums of this rank added over every rank (collective), in the model's dtype */
torch::Tensor summed_over_ranks(const torch::Tensor &sums, torch::Dtype dtype,
                                const std::function<void(std::vector<double> &)> &sum_over_ranks)
{
  std::vector<double> all = to_vector(sums);
  sum_over_ranks(all);
  return torch::from_blob(all.data(), sums.sizes(), torch::TensorOptions().dtype(torch::kFloat64))
      .to(dtype, false, true);
}

/* Every node's CN [n_nodes]: the local nodes' (cn, without its autograd graph), then the ghost nodes' from their
   owners (forward exchange; ex may be null on a graph without ghosts) */
torch::Tensor with_ghost_cn(const torch::Tensor &cn, int64_t n_local, int64_t n_nodes, torch::Dtype dtype,
                            Exchange *ex)
{
  if (ex == nullptr) return cn.detach();
  const torch::Tensor ghost_cn = ex->forward(cn.detach().to(torch::kFloat64).reshape({n_local, 1}), 1);
  if (ghost_cn.size(0) != n_nodes - n_local) throw ModelError("CN exchange returned the wrong rows");
  return torch::cat({cn.detach(), ghost_cn.reshape({-1}).to(dtype)});
}

/* LocalGraph::ghost_pairs' list as the int64 tensor the D3 entries take (a view of it) */
torch::Tensor index_tensor(const std::vector<int64_t> &indices)
{
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  if (indices.empty()) return torch::empty({0}, i64);
  return torch::from_blob(const_cast<int64_t *>(indices.data()), {static_cast<int64_t>(indices.size())}, i64);
}

/* The tail correction's share of each local atom given local_dispersion's (energies, weights, weight_sums):
   E_tail is a double sum over every atom of the cell, so each rank's per-species sums of the CN weights are
   added over the ranks first (collective) */
torch::Tensor tail_energies(torch::jit::Module &module, const c10::ivalue::Tuple &out, const torch::Tensor &species,
                            double volume, torch::Dtype dtype,
                            const std::function<void(std::vector<double> &)> &sum_over_ranks)
{
  const torch::Tensor weights = out.elements()[1].toTensor();
  const torch::Tensor total = summed_over_ranks(out.elements()[2].toTensor(), dtype, sum_over_ranks);
  return module.get_method("local_dispersion_tail")({species, weights, total, volume}).toTensor();
}

/* The local atoms' energies of a D3 entry's output (both paths return the same tuple), checked, plus the tail's
   share when the box is periodic (volume > 0; tail is left undefined otherwise) */
torch::Tensor energies_with_tail(torch::jit::Module &module, const c10::ivalue::Tuple &out,
                                 const torch::Tensor &local_species, double volume, torch::Dtype dtype,
                                 const std::function<void(std::vector<double> &)> &sum_over_ranks, torch::Tensor &tail)
{
  torch::Tensor energies = out.elements()[0].toTensor();
  check_energies(energies, local_species.size(0));
  if (volume <= 0.0) return energies;
  tail = tail_energies(module, out, local_species, volume, dtype, sum_over_ranks);
  return energies + tail;
}

/* CN of the local nodes from their own edges (its autograd graph kept for gradients_through_cn), and every node's
   CN as a leaf: the ghost nodes' from their owners (forward exchange; ex may be null on a graph without ghosts) */
std::pair<torch::Tensor, torch::Tensor> cn_of_every_node(torch::jit::Module &module, const GraphTensors &t,
                                                         int64_t n_local, int64_t n_nodes, int64_t n_mirrored,
                                                         torch::Dtype dtype, Exchange *ex)
{
  const torch::Tensor cn =
      module.get_method("local_dispersion_cn")({t.species, t.edge_index, t.vectors, n_local, n_mirrored}).toTensor();
  if (cn.dim() != 1 || cn.size(0) != n_local)
    throw ModelError("the model's D3 returned " + std::to_string(cn.dim() == 1 ? cn.size(0) : -1) +
                     " coordination numbers for " + std::to_string(n_local) + " local atoms");
  return {cn, with_ghost_cn(cn, n_local, n_nodes, dtype, ex).clone().requires_grad_(true)};
}

/* dE/d(edge vector) of energies that depend on the edge vectors directly and on every node's CN (the leaf
   cn_all): the ghosts' CN gradients go onto their owners' rows (reverse exchange), and each local node's total
   through dCN/d(edge vector) of its own edges (cn from cn_of_every_node). Undefined: no dependence. */
torch::Tensor gradients_through_cn(const torch::Tensor &energies, const torch::Tensor &cn, const torch::Tensor &cn_all,
                                   const GraphTensors &t, int64_t n_local, int64_t n_nodes, int64_t n_edges,
                                   torch::Dtype dtype, Exchange *ex)
{
  torch::Tensor grad, grad_cn;
  if (energies.requires_grad() && n_edges > 0) {
    const auto gs = torch::autograd::grad({energies.sum()}, {t.vectors, cn_all}, {}, false, false, true);
    grad = gs[0];
    grad_cn = gs[1];
  }
  if (!grad_cn.defined()) grad_cn = torch::zeros({n_nodes}, torch::TensorOptions().dtype(torch::kFloat64));
  torch::Tensor de_dcn = grad_cn.detach().to(torch::kFloat64).reshape({n_nodes, 1});
  if (ex != nullptr) de_dcn = ex->reverse(de_dcn, 1);
  if (cn.requires_grad() && n_edges > 0) {
    const torch::Tensor via_cn = torch::autograd::grad({cn}, {t.vectors}, {de_dcn.reshape({n_local}).to(dtype)},
                                                       false, false, true)[0];
    if (via_cn.defined()) grad = grad.defined() ? grad + via_cn : via_cn;
  }
  return grad;
}
}    // namespace

bool Model::has_dispersion_cn() const
{
  return dispersion_ && provides("local_dispersion_cn") && provides("local_dispersion_given_cn");
}

Evaluation Model::dispersion(const LocalGraph &g, const std::vector<int64_t> &species, double volume,
                             const std::function<void(std::vector<double> &)> &sum_over_ranks)
{
  const int64_t n_local = g.n_local;
  GraphTensors t = graph_tensors(g, species, dtype_);
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()
  const auto out = module_.get_method("local_dispersion")(
      {t.species, t.edge_index, t.vectors, n_local, static_cast<int64_t>(g.n_mirrored)}).toTuple();
  torch::Tensor tail;
  const torch::Tensor energies =
      energies_with_tail(module_, *out, t.species.slice(0, 0, n_local), volume, dtype_, sum_over_ranks, tail);
  torch::Tensor grad;
  if (energies.requires_grad() && g.n_edges() > 0)
    grad = torch::autograd::grad({energies.sum()}, {t.vectors}, {}, false, false, true)[0];
  Evaluation ev = finish(energies, grad, g.n_edges());
  if (tail.defined()) ev.tail = to_vector(tail);
  return ev;
}

/* 1. CN of the local nodes from their own edges (its autograd graph kept for step 4); 2. forward exchange: the
   ghost nodes' CN from their owners; 3. the pairs with a local end given every node's CN (a leaf), and the tail;
   4. dE/d(edge vector) directly, and dE/dCN of every node: the ghosts' rows are added onto their owners' on every
   rank (reverse exchange), and each local node's total goes through dCN/d(edge vector) of its own edges. Without
   ghost_pairs every pair's energy is counted by the ranks of its ends only (half each); with it
   (local_dispersion_whole_pairs) the local pairs and the listed pairs to ghosts count whole, the others not at
   all (their other rank lists them), and the ghost nodes' halves come back in ghost_energies for their owners
   (LAMMPS adds ghost atoms' per-atom energies onto them). Either way E, the forces and the virial (sum over edges
   of -r (x) dE/dr) are those of the one-call path; every rank takes part in both exchanges and the tail's sum (an
   empty graph too). */
Evaluation Model::dispersion_exchanged(const LocalGraph &g, const std::vector<int64_t> &species, double volume,
                                       const std::function<void(std::vector<double> &)> &sum_over_ranks,
                                       Exchange &ex, const std::vector<int64_t> *ghost_pairs)
{
  const int64_t n_local = g.n_local, n_nodes = g.n_nodes(), n_edges = g.n_edges();
  const int64_t n_mirrored = g.n_mirrored;
  GraphTensors t = graph_tensors(g, species, dtype_);
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()

  const auto [cn, cn_all] = cn_of_every_node(module_, t, n_local, n_nodes, n_mirrored, dtype_, &ex);
  c10::intrusive_ptr<c10::ivalue::Tuple> out;
  torch::Tensor ghosts;    // whole pairs: the ghost nodes' halves
  if (ghost_pairs == nullptr) {
    out = module_.get_method("local_dispersion_given_cn")(
        {t.species, t.edge_index, t.vectors, n_local, cn_all, n_mirrored}).toTuple();
  } else {
    const auto whole = module_.get_method("local_dispersion_whole_pairs")(
        {t.species, t.edge_index, t.vectors, n_local, cn_all, n_mirrored, index_tensor(*ghost_pairs)}).toTuple();
    const torch::Tensor all = whole->elements()[0].toTensor();
    if (all.dim() != 1 || all.size(0) != n_nodes)
      throw ModelError("the model's D3 returned " + std::to_string(all.dim() == 1 ? all.size(0) : -1) +
                       " energies for " + std::to_string(n_nodes) + " nodes");
    ghosts = all.slice(0, n_local, n_nodes);
    out = c10::ivalue::Tuple::create({all.slice(0, 0, n_local), whole->elements()[1], whole->elements()[2]});
  }
  torch::Tensor tail;
  const torch::Tensor energies =
      energies_with_tail(module_, *out, t.species.slice(0, 0, n_local), volume, dtype_, sum_over_ranks, tail);
  const torch::Tensor summed = ghosts.defined() ? torch::cat({energies, ghosts}) : energies;
  const torch::Tensor grad = gradients_through_cn(summed, cn, cn_all, t, n_local, n_nodes, n_edges, dtype_, &ex);
  Evaluation ev = finish(energies.detach(), grad, n_edges);
  if (ghosts.defined()) ev.ghost_energies = to_vector(ghosts.detach());
  if (tail.defined()) ev.tail = to_vector(tail);
  return ev;
}

bool Model::has_dispersion_whole_pairs() const
{
  return has_dispersion_cn() && provides("local_dispersion_whole_pairs");
}

bool Model::has_dispersion_by_hand() const
{
  return has_dispersion_whole_pairs() && provides("local_dispersion_cn_slopes") && provides("local_dispersion_by_hand");
}

/* dispersion_exchanged with whole pairs, its derivatives returned as values by the model instead of an autograd
   graph (local_dispersion_cn_slopes, local_dispersion_by_hand): 1. the local nodes' CN, each edge's dCN/d(r^2) and
   the local CN weights summed per species; 2. the ghosts' CN from their owners (forward exchange) and, with the
   tail, the weight sums over every rank; 3. energies of every node, each edge's dE/d(r^2) at fixed CN and every
   node's dE/dCN; 4. the ghosts' dE/dCN onto their owners (reverse exchange); 5. dE/dv_e = 2 (p_e + s_e (dE/dCN_src
   + dE/dCN_dst for the first n_mirrored edges, whose pairs add to both CN)) v_e. Collective as
   dispersion_exchanged. */
Evaluation Model::dispersion_by_hand(const LocalGraph &g, const std::vector<int64_t> &species, double volume,
                                     const std::function<void(std::vector<double> &)> &sum_over_ranks, Exchange &ex,
                                     const std::vector<int64_t> &ghost_pairs)
{
  const int64_t n_local = g.n_local, n_nodes = g.n_nodes(), n_edges = g.n_edges();
  const int64_t n_mirrored = g.n_mirrored;
  GraphTensors t = graph_tensors(g, species, dtype_);
  const torch::Tensor vectors = t.vectors.detach();
  torch::NoGradGuard no_grad;
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()

  const auto first = module_.get_method("local_dispersion_cn_slopes")(
      {t.species, t.edge_index, vectors, n_local, n_mirrored}).toTuple();
  const torch::Tensor cn = first->elements()[0].toTensor();
  const torch::Tensor cn_slopes = first->elements()[1].toTensor();
  const torch::Tensor sums = first->elements()[2].toTensor();
  if (cn.dim() != 1 || cn.size(0) != n_local || cn_slopes.dim() != 1 || cn_slopes.size(0) != n_edges)
    throw ModelError("the model's D3 returned coordination numbers or slopes of the wrong shape");
  const torch::Tensor cn_all = with_ghost_cn(cn, n_local, n_nodes, dtype_, &ex);
  const torch::Tensor total_sums = volume > 0.0 ? summed_over_ranks(sums, dtype_, sum_over_ranks) : sums;
  const auto out = module_.get_method("local_dispersion_by_hand")(
      {t.species, t.edge_index, vectors, n_local, n_mirrored, cn_all, index_tensor(ghost_pairs), total_sums, volume})
                       .toTuple();
  const torch::Tensor energies = out->elements()[0].toTensor();
  const torch::Tensor pair_slopes = out->elements()[1].toTensor();
  const torch::Tensor de_dcn = out->elements()[2].toTensor();
  const torch::Tensor tail = out->elements()[3].toTensor();
  if (energies.dim() != 1 || energies.size(0) != n_nodes || de_dcn.dim() != 1 || de_dcn.size(0) != n_nodes ||
      pair_slopes.dim() != 1 || pair_slopes.size(0) != n_edges)
    throw ModelError("the model's D3 returned energies, slopes or CN derivatives of the wrong shape");

  const torch::Tensor d_local = ex.reverse(de_dcn.to(torch::kFloat64).reshape({n_nodes, 1}), 1);
  const std::vector<double> d = to_vector(d_local.reshape({-1}).slice(0, 0, n_local));
  const std::vector<double> s = to_vector(cn_slopes), p = to_vector(pair_slopes);
  Evaluation ev;
  ev.energies = to_vector(energies.slice(0, 0, n_local));
  ev.ghost_energies = to_vector(energies.slice(0, n_local, n_nodes));
  if (tail.numel() > 0) ev.tail = to_vector(tail);
  ev.grad.resize(3 * static_cast<size_t>(n_edges));
  for (int64_t e = 0; e < n_edges; e++) {
    double via_cn = 0.0;
    if (s[e] != 0.0) via_cn = s[e] * (d[g.edge_src[e]] + (e < n_mirrored ? d[g.edge_dst[e]] : 0.0));
    const double f = 2.0 * (p[e] + via_cn);
    for (int c = 0; c < 3; c++) ev.grad[3 * e + c] = f * g.edge_vec[3 * e + c];
  }
  return ev;
}

/* D3's three-body (ATM) term on a rank's graph (see mlmd_model.h and mlmd.model.dispersion_graph_atm): every
   triple once over all ranks, at its atom of lowest ID, from that atom's own edges out to the three-body cutoff.
   1. CN of the local nodes from their own edges (autograd graph kept for step 4); 2. forward exchange: the ghost
   nodes' CN from their owners; 3. the triples at the local nodes given every node's CN (a leaf) and atom ID:
   energies in thirds over the three nodes; 4. dE/d(edge vector) directly, and dE/dCN of every node: the ghosts'
   rows go onto their owners' (reverse exchange) and through dCN/d(edge vector) of the owners' own edges. The
   ghost nodes' energy thirds are returned apart: their owners' per-atom energies (LAMMPS adds ghost atoms'
   per-atom energies onto their owners with newton on). */
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

  const auto [cn, cn_all] = cn_of_every_node(module_, t, n_local, n_nodes, n_mirrored, dtype_, ex);
  const torch::Tensor ids =
      torch::from_blob(const_cast<int64_t *>(atom_ids.data()), {n_nodes}, torch::TensorOptions().dtype(torch::kInt64))
          .clone();
  const torch::Tensor energies = module_.get_method("local_dispersion_atm")(
      {t.species, t.edge_index, t.vectors, n_local, cn_all, ids}).toTensor();
  if (energies.dim() != 1 || energies.size(0) != n_nodes)
    throw ModelError("the model's D3 three-body term returned " +
                     std::to_string(energies.dim() == 1 ? energies.size(0) : -1) + " energies for " +
                     std::to_string(n_nodes) + " nodes");

  const torch::Tensor grad = gradients_through_cn(energies, cn, cn_all, t, n_local, n_nodes, n_edges, dtype_, ex);
  Evaluation ev = finish(energies.detach().slice(0, 0, n_local), grad, n_edges);
  ev.ghost_energies = to_vector(energies.detach().slice(0, n_local, n_nodes));
  return ev;
}

}    // namespace mlmd
