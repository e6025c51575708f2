/* D3 dispersion inside pair_style mlmd: the model's own D3 (its local_dispersion entries, so any damping
   parameters, the smooth cutoff and the tail correction, as the model file computes them in ASE and OpenMM),
   evaluated on a second graph out to the D3 cutoffs, exact on any number of MPI ranks.

   Why a second graph, and what it holds. The two-body energy of a pair (i, j) within the two-body cutoff
   needs C6_ij, which depends on the coordination numbers of both atoms, each a sum over that atom's own
   neighbours within cutoff_cn. Each rank gives its local atoms half of each of their pairs' energies (the
   other half is counted by the rank that owns the other end, from its own copy of the pair), so it needs the
   exact CN of every ghost within the two-body cutoff of a local atom. Two ways, chosen in init_dispersion():
   - exchange (several ranks, model files with local_dispersion_cn): ghosts to max(cutoff, cutoff_cn) + skin,
     the local atoms are the only centres; each rank computes its local atoms' CN, LAMMPS's forward
     communication copies them to every ghost copy, the pairs with a local end are evaluated given those CN, and
     the gradients with respect to the ghosts' CN go back to their owners (reverse communication), which take
     them through dCN/dr of their own edges (mlmd_dispersion.cpp). Three model calls and two exchanges of one
     number per atom, on the smallest halo; measured the cheapest on 4 ranks (benchmarks/RESULTS.md, D3).
     Files with local_dispersion_by_hand return the derivatives as values (each edge's dCN/d(r^2) and dE/d(r^2),
     every node's dE/dCN) and the plugin chains them onto the edges: no autograd graph (D3 on 4 ranks a third
     less CPU than through autograd); one rank keeps its one call, cheaper there;
   - halo (several ranks, older files): the ghosts within the two-body cutoff are centres of the graph with all
     their edges (a breadth-first walk of two hops over a full neighbour list that includes the ghosts' own
     neighbours), and the ghost shell reaches cutoff + cutoff_cn + skin; one call;
   - one rank with atom IDs: every ghost is a periodic image of a local atom and folds onto it
     (mlmd_graph.cpp), so one hop is the periodic graph and one call does it all.

   Forces and virial come from the edge-vector gradients as for the short-range part (accumulate()): ghost
   forces go back to their owners by LAMMPS's reverse communication (newton on).

   Tail correction (3D-periodic cells): E_tail = -(1/2V) sum_ij C6_ij I_{s_i s_j} is a double sum over every atom
   of the cell; it is quadratic in the per-species sums of the CN weights, which each rank computes for its own
   atoms and MPI_Allreduce adds up (S x R numbers). Each local atom gets its share (the same split as in ASE),
   the model doubles the slope through the atom's own weights so the forces are exact, and E_tail's 1/V
   dependence adds -dE/d(strain_aa) = E_tail to each diagonal virial component (per atom: its own share). */

#include "pair_mlmd.h"

#include "mlmd_graph.h"
#include "mlmd_model.h"
#include "pair_mlmd_layers.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>

using namespace LAMMPS_NS;
using mlmd::first_line;

namespace {
/* mirror() for a graph whose centres are the local nodes only: the one-rank periodic graph (every node local) and
   the exchange path's graph (local centres, ghosts as neighbours only). Every edge between two local nodes has its
   reverse in the graph, so each such pair's first copy is known without searching (n -> m with n < m; for an atom
   and its own image, the copy whose vector is first positive in x, then y, then z), and the reverses are written
   from it (m -> n, -v); the edges to ghost nodes follow unpaired, in their order. The model does not read the
   reverses, and their zero gradient adds nothing to forces or virial. Sequential passes instead of mirror()'s
   matching of vectors (17 of D3's ~60 ms per step at 3,072 water atoms on one rank). False (graph untouched) when a
   centre is a ghost or the local copies do not come in pairs, e.g. a pair at the cutoff to round-off. */
bool mirror_by_index(mlmd::LocalGraph &g)
{
  static std::vector<long> first, rest, src, dst;    // kept between steps: no fresh pages every step
  static std::vector<double> vec;
  const long n = g.n_edges(), n_local = g.n_local;
  first.clear();
  rest.clear();
  long n_pairable = 0;
  for (long e = 0; e < n; e++) {
    const long a = g.edge_src[e], b = g.edge_dst[e];
    if (a >= n_local) return false;
    if (b >= n_local) {
      rest.push_back(e);
      continue;
    }
    n_pairable++;
    if (a < b || (a == b && mlmd::points_up(&g.edge_vec[3 * e]))) first.push_back(e);
  }
  const long h = static_cast<long>(first.size());
  if (2 * h != n_pairable) return false;
  src.resize(n);
  dst.resize(n);
  vec.resize(3 * static_cast<size_t>(n));
  for (long k = 0; k < h; k++) {
    const long e = first[k];
    src[k] = dst[h + k] = g.edge_src[e];
    dst[k] = src[h + k] = g.edge_dst[e];
    for (int c = 0; c < 3; c++) {
      vec[3 * k + c] = g.edge_vec[3 * e + c];
      vec[3 * (h + k) + c] = -g.edge_vec[3 * e + c];
    }
  }
  for (size_t k = 0; k < rest.size(); k++) {
    const long e = rest[k], to = 2 * h + static_cast<long>(k);
    src[to] = g.edge_src[e];
    dst[to] = g.edge_dst[e];
    for (int c = 0; c < 3; c++) vec[3 * to + c] = g.edge_vec[3 * e + c];
  }
  g.edge_src.swap(src);
  g.edge_dst.swap(dst);
  g.edge_vec.swap(vec);
  g.n_mirrored = h;
  return true;
}

// a D3 evaluation's energies (ghost nodes' shares included) and gradients are all finite
bool all_finite(const mlmd::Evaluation &ev)
{
  for (const auto *values : {&ev.energies, &ev.grad, &ev.ghost_energies})
    for (double v : *values)
      if (!std::isfinite(v)) return false;
  return true;
}
}    // namespace

void PairMLMD::init_dispersion(bool &ghost_list, double &ghost_cut)
{
  ghost_cut = 0.0;
  const mlmd::Card &c = model->card();
  if (c.dispersion && c.d3_three_body && !model->has_dispersion())
    error->all(FLERR, "pair_style mlmd: model {} has a D3 three-body (ATM) term but was packaged before pair_style "
               "mlmd could compute it (no local_dispersion_atm entry): repackage it with this mlmd (mlmd package {} "
               "-o NEW.pt)", model_path, model_path);
  if (!model->has_dispersion()) return;
  if (model->has_three_body() && !atom->tag_enable)
    error->all(FLERR, "pair_style mlmd: the D3 three-body (ATM) term of model {} counts each triple at its atom of "
               "lowest ID: it needs atom IDs (atom_modify id yes)", model_path);
  if (force->pair_match("dispersion/d3", 0))
    error->all(FLERR, "pair_style mlmd: model {} computes its own D3 dispersion inside pair_style mlmd; remove "
               "pair_style dispersion/d3 (it would count dispersion twice). mlmd lammps-input writes the lines",
               model_path);
  const bool one_rank = comm->nprocs == 1 && atom->tag_enable;    // images fold: the periodic graph
  d3_exchange = !one_rank && model->has_dispersion_cn();
  d3_whole_pairs = d3_exchange && atom->tag_enable && model->has_dispersion_whole_pairs();
  d3_halo = !one_rank && !d3_exchange;
  // one rank keeps the one call (local_dispersion): it shares the pair terms between the CN and the energies,
  // measured 15% cheaper there than the two calls by hand
  d3_by_hand = d3_whole_pairs && model->has_dispersion_by_hand();
  if (d3_exchange) {
    // Comm::init (after this) sizes its buffers from these: one number per atom each way, or the layer mode's
    // widest features (the last exchange of a run may have left a smaller width here)
    comm_forward = comm_reverse = std::max(model->layered() ? model->max_feature_width() : 0, 1);
  }
  if (d3_halo) {
    ghost_list = true;
    ghost_cut = c.d3_cutoff + c.d3_cutoff_cn + neighbor->skin;
    if (comm->cutghostuser < ghost_cut) {
      comm->cutghostuser = ghost_cut;
      if (comm->me == 0)
        utils::logmesg(lmp, "pair_style mlmd: ghost cutoff set to {:.4g} Å (D3 cutoff {} Å + CN cutoff {} Å + skin "
                       "{} Å) so that D3 is exact on any number of MPI ranks\n", ghost_cut, c.d3_cutoff,
                       c.d3_cutoff_cn, neighbor->skin);
    }
  }
  const bool periodic = domain->xperiodic && domain->yperiodic && domain->zperiodic;
  if (comm->me == 0 && model->has_three_body())
    utils::logmesg(lmp, "pair_style mlmd: D3 three-body (ATM) term from the model (cutoff {} Å): each triple at its "
                   "atom of lowest ID\n", c.d3_cutoff_three_body);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style mlmd: D3 dispersion from the model (cutoff {} Å, CN cutoff {} Å, tail "
                   "correction {}) on {}\n", c.d3_cutoff, c.d3_cutoff_cn,
                   c.d3_tail ? (periodic ? "on" : "off: the box is not periodic in x, y and z") : "off",
                   d3_whole_pairs ? "a halo of ghosts out to max(cutoff, CN cutoff), the ghosts' coordination "
                                    "numbers exchanged between ranks, each pair across ranks on one rank"
                   : d3_exchange ? "a halo of ghosts out to max(cutoff, CN cutoff), the ghosts' coordination numbers "
                                   "exchanged between ranks (a model file without local_dispersion_whole_pairs: "
                                   "repackage it for each pair on one rank)"
                   : d3_halo   ? "a halo of ghosts out to cutoff + CN cutoff (a model file without "
                                 "local_dispersion_cn: repackage it with mlmd package OLD -o NEW for the smaller halo)"
                               : "the periodic graph");
  if (comm->me == 0 && !d3_by_hand && d3_whole_pairs)
    utils::logmesg(lmp, "pair_style mlmd: model {} computes D3's derivatives through autograd (packaged before "
                   "local_dispersion_by_hand): repackage it (mlmd package {} -o NEW.pt) for a faster D3\n",
                   model_path, model_path);
}

/* D3's three-body term on the same graph (its reach includes the three-body cutoff), see mlmd_dispersion.cpp:
   the ghost nodes' energy thirds go to the ghost atoms' per-atom energies, which LAMMPS adds onto their owners */
void PairMLMD::compute_three_body()
{
  const int n_local = d3graph->n_local, n_nodes = d3graph->n_nodes();
  const auto &atom_of_node = d3graph->atom_of_node;
  d3_ids.resize(n_nodes);
  for (int n = 0; n < n_nodes; n++) d3_ids[n] = static_cast<int64_t>(atom->tag[atom_of_node[n]]);
  mlmd::Evaluation ev;
  try {
    if (d3_exchange) {
      double wall = 0.0, cpu = 0.0;    // part of cpu_d3
      LammpsExchange ex(this, *d3graph, wall, cpu);
      ev = model->dispersion_three_body(*d3graph, d3_species, d3_ids, &ex);
    } else {
      ev = model->dispersion_three_body(*d3graph, d3_species, d3_ids, nullptr);
    }
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: D3 three-body evaluation failed: {}", first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: D3 three-body evaluation failed: {}", first_line(e.what()));
  }
  if (!all_finite(ev))
    error->one(FLERR, "pair_style mlmd: step {}: the model's D3 three-body term gave a non-finite energy or force "
               "({} local atoms, {} edges)", update->ntimestep, n_local, d3graph->n_edges());
  accumulate(*d3graph, ev);
  add_ghost_energies(*d3graph, ev);
}

/* the ghost nodes' energy shares of a D3 evaluation (ev.ghost_energies): the total's, and the ghost atoms' per-atom
   energies, which LAMMPS adds onto their owners (newton on) */
void PairMLMD::add_ghost_energies(const mlmd::LocalGraph &g, const mlmd::Evaluation &ev)
{
  for (int n = g.n_local; n < g.n_nodes(); n++) {
    const double e = ev.ghost_energies[n - g.n_local];
    if (eflag_global) eng_vdwl += e;
    if (eflag_atom) eatom[g.atom_of_node[n]] += e;
  }
}

double PairMLMD::compute_dispersion()
{
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
  const mlmd::Card &c = model->card();
  mlmd::NeighbourInput in{atom->x,    atom->type,  atom->tag,      atom->nlocal,     atom->nlocal + atom->nghost,
                          list->inum, list->ilist, list->numneigh, list->firstneigh, NEIGHMASK};
  try {
    d3graph->build(in, species_of_type, model->d3_reach(), c.min_distance, d3_halo ? 2 : 1);
  } catch (const mlmd::GraphError &e) {
    error->one(FLERR, "pair_style mlmd: step {}: {}", update->ntimestep, e.what());
  }
  // each pair of centres once in the model (its reverse edge is not read)
  if (d3_halo || !mirror_by_index(*d3graph)) d3graph->mirror();
  if (d3_whole_pairs) {    // which pairs to ghosts are this rank's
    try {
      d3graph->ghost_pairs(atom->tag, d3_ghost_pairs);
    } catch (const mlmd::GraphError &e) {
      error->one(FLERR, "pair_style mlmd: step {}: {}", update->ntimestep, e.what());
    }
  }
  d3_species.resize(d3graph->n_nodes());
  for (int n = 0; n < d3graph->n_nodes(); n++)
    d3_species[n] = species_of_type[atom->type[d3graph->atom_of_node[n]]];

  const bool tail = c.d3_tail && domain->xperiodic && domain->yperiodic && domain->zperiodic;
  const double volume = tail ? domain->xprd * domain->yprd * domain->zprd : 0.0;
  auto sum_over_ranks = [this](std::vector<double> &v) {
    std::vector<double> total(v.size());
    MPI_Allreduce(v.data(), total.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM, world);
    v.swap(total);
  };
  mlmd::Evaluation ev;
  try {
    if (d3_by_hand && d3_exchange) {
      double wall = 0.0, cpu = 0.0;    // part of cpu_d3
      LammpsExchange ex(this, *d3graph, wall, cpu);
      ev = model->dispersion_by_hand(*d3graph, d3_species, volume, sum_over_ranks, ex, d3_ghost_pairs);
    } else if (d3_exchange) {
      double wall = 0.0, cpu = 0.0;    // part of cpu_d3
      LammpsExchange ex(this, *d3graph, wall, cpu);
      ev = model->dispersion_exchanged(*d3graph, d3_species, volume, sum_over_ranks, ex,
                                       d3_whole_pairs ? &d3_ghost_pairs : nullptr);
    } else {
      ev = model->dispersion(*d3graph, d3_species, volume, sum_over_ranks);
    }
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: D3 evaluation failed: {}", first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: D3 evaluation failed: {}", first_line(e.what()));
  }
  if (!all_finite(ev))
    error->one(FLERR, "pair_style mlmd: step {}: the model's D3 gave a non-finite energy or force ({} local atoms, "
               "{} edges)", update->ntimestep, d3graph->n_local, d3graph->n_edges());
  accumulate(*d3graph, ev);
  if (!ev.ghost_energies.empty()) add_ghost_energies(*d3graph, ev);
  if (model->has_three_body()) compute_three_body();

  // the tail's 1/V: -dE_tail/d(strain_aa) = E_tail on each diagonal component (each atom its own share)
  if (!ev.tail.empty() && vflag_either) {
    const auto &atom_of_node = d3graph->atom_of_node;
    double sum = 0.0;
    for (int n = 0; n < d3graph->n_local; n++) {
      const double e = ev.tail[n];
      sum += e;
      const int i = atom_of_node[n];
      for (int k = 0; k < 3; k++) {
        if (vflag_atom) vatom[i][k] += e;
        if (cvflag_atom) cvatom[i][k] += e;
      }
    }
    if (vflag_global)
      for (int k = 0; k < 3; k++) virial[k] += sum;
  }
  cpu_d3 += static_cast<double>(std::clock()) / CLOCKS_PER_SEC - cpu0;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
