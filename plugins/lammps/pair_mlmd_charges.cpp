/* Predicted charges inside pair_style mlmd: the model's charges every step and their Coulomb energy by the
   model's own Ewald sum (its card's splitting, real-space cutoff and k-vectors), exact on any number of MPI ranks.

   Why not coul/long + kspace. The force needs the term -sum_i phi_i dq_i/dR, with phi_i = dE_coul/dq_i the
   electrostatic potential at atom i. LAMMPS's styles give no potential at the atoms: their per-atom energies
   (eatom of coul/long and of ewald/pppm) are q_i phi_i / 2 with the self term, so phi_i would be 2 e_i / q_i,
   undefined where a predicted charge crosses zero and inaccurate near it, and per-atom tallies would have to
   be asked for on every step, after kspace has run (a fix with post_force). Summing Ewald here gives phi_i
   exactly, the energy is the model's own (the same k-vectors and cutoff as in ASE and OpenMM), and no
   kspace_style is needed (one is refused: it would count the Coulomb energy twice).

   A step (collective: every rank takes part in each sum, an empty subdomain too):
   1. the model on the short-range graph (a halo of (n_layers + 1) * r_cut on several ranks: the charge transfer
      reads the neighbours' electronegativities): short-range energies, raw charges q~_i and softnesses w_i of
      the local atoms; Q~ = sum q~ and W = sum w over every rank (MPI_Allreduce), then
      q_i = q~_i - w_i (Q~ - Q) / W with total charge Q = 0 (as PredictedCoulombTerm.conserve);
   2. the charges go to atom->q (atom_style charge: dump them) and to the ghost atoms (forward communication);
   3. real space on a graph out to the Ewald cutoff, reciprocal space from the structure factor summed over
      ranks, and the self term (mlmd_ewald.cpp): energies, forces and virial at fixed charges, and phi_i;
   4. the charge response: with phibar = sum_i phi_i w_i / W (over every rank),
      sum_i phi_i dq_i = sum_i (phi_i - phibar) dq~_i - (Q~ - Q) / W (phi_i - phibar) dw_i, so one backward pass
      of the model through sum_i E_short,i + a_i q~_i + b_i w_i with a_i = phi_i - phibar, b_i = -(Q~ - Q) a_i / W
      gives the short-range forces and the charge-response forces together, as edge gradients (their virial
      too: the charges depend on the edge vectors only). Ghost forces go to their owners by LAMMPS's reverse
      communication (newton on).
   The Coulomb energy is tallied as ecoul (thermo keyword), the short-range energy as evdwl.

   Accuracy (prepare_ewald, once per run with the first step's charges, summed over ranks): the card's parameters
   were chosen for a reference charge density; the Kolafa-Perram estimate of their force error for these charges
   (mlmd_ewald_params.h, the formulas of mlmd/ewald_params.py) is logged, with a warning when it exceeds the card's
   accuracy. 'pair_style mlmd ... ewald tune' instead chooses sigma and the k-space cutoff for these charges at the
   first step (the real-space cutoff kept), as Electrostatics.tune does in ASE and OpenMM, and keeps them while
   the pair style lives (later runs too; a restart chooses them again). */

#include "pair_mlmd.h"

#include "mlmd_ewald.h"
#include "mlmd_ewald_params.h"
#include "mlmd_graph.h"
#include "mlmd_model.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <chrono>
#include <cmath>
#include <ctime>

using namespace LAMMPS_NS;
using mlmd::first_line;

namespace {
double cpu_now()
{
  return static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
}
}    // namespace

void PairMLMD::init_charges()
{
  if (!model->predicts_charges()) return;
  const mlmd::Card &c = model->card();
  if (force->kspace)
    error->all(FLERR, "pair_style mlmd: model {} predicts its charges and sums their Ewald energy inside pair_style "
               "mlmd; remove kspace_style (it would count the Coulomb energy twice). mlmd lammps-input writes the "
               "lines", model_path);
  if (force->pair_match("coul", 0))
    error->all(FLERR, "pair_style mlmd: model {} predicts its charges and sums their Coulomb energy inside "
               "pair_style mlmd; remove the coul pair style (it would count the Coulomb energy twice)", model_path);
  if (!(domain->xperiodic && domain->yperiodic && domain->zperiodic))
    error->all(FLERR, "pair_style mlmd: model {} predicts its charges, and pair_style mlmd sums their Ewald energy "
               "in a box periodic in x, y and z only (run non-periodic systems in ASE or OpenMM)", model_path);
  if (!ewald_tuned) {    // tuned parameters stay (ewald tune)
    ewald.coulomb_constant = c.elec_coulomb_constant;
    ewald.smearing = c.elec_smearing;
    ewald.lr_wavelength = c.elec_lr_wavelength;
    ewald.r_cut = c.elec_r_cut;
  }
  ewald_pending = true;
  comm_forward = std::max(comm_forward, 1);    // the charges of ghost atoms (Comm::init sizes its buffers after this)
  if (comm->me == 0) {
    const bool pme = c.elec_method == "pme" || (c.elec_method == "auto" && atom->natoms > c.elec_ewald_max_atoms);
    utils::logmesg(lmp, "pair_style mlmd: predicted charges every step (written to atom->q{}); their Coulomb energy "
                   "by the model's Ewald sum inside pair_style mlmd (real-space cutoff {} Å, alpha {:.8g} 1/Å, "
                   "k-vectors to lr_wavelength {:.8g} Å{}), total charge 0\n",
                   atom->q_flag ? "" : ": none, atom_style has no charge", ewald.r_cut, ewald.alpha(),
                   ewald.lr_wavelength,
                   ewald_tuned ? ": tuned to the charges" : (ewald_tune ? ": tuned at the first step" : ""));
    if (pme)
      error->warning(FLERR, "pair_style mlmd: model {} sums {} atoms with PME in ASE and OpenMM; LAMMPS sums Ewald "
                     "with the same splitting and k-space cutoff, so the two agree to the model's accuracy, not to "
                     "rounding, and the cost of the reciprocal part grows as N^2", model_path, atom->natoms);
  }
}

void PairMLMD::prepare_ewald(const std::vector<double> &q)
{
  ewald_pending = false;
  double sums[2] = {0.0, static_cast<double>(q.size())};    // sum q^2 and N over every rank (collective)
  for (double x : q) sums[0] += x * x;
  MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, world);
  const double volume = domain->xprd * domain->yprd * domain->zprd;    // triclinic too: the product of h's diagonal
  if (!(sums[1] > 0.0 && volume > 0.0)) return;
  const double accuracy = model->card().elec_accuracy;
  if (ewald_tune && !ewald_tuned) {
    mlmd::tune(ewald, accuracy, sums[0], sums[1], volume);
    ewald_tuned = true;
  }
  const mlmd::EwaldEstimate e = mlmd::estimate(ewald, accuracy, sums[0], sums[1], volume);
  if (comm->me != 0) return;
  // full precision: tests compare these numbers with mlmd/ewald_params.py's
  utils::logmesg(lmp, "pair_style mlmd: Ewald of the predicted charges at step {} (sum q^2 {:.17g} e^2, {} atoms, "
                 "volume {:.17g} Å^3): {}sigma {:.17g} Å, k-space cutoff {:.17g} 1/Å, real-space cutoff {:.17g} Å; "
                 "estimated RMS force error {:.17g} eV/Å (real space {:.17g}, reciprocal {:.17g}), target {:.17g} "
                 "eV/Å (accuracy {:.17g})\n",
                 update->ntimestep, sums[0], static_cast<bigint>(sums[1]), volume, ewald_tuned ? "tuned " : "",
                 ewald.smearing, M_PI / ewald.lr_wavelength, ewald.r_cut, e.total, e.real, e.kspace, e.target,
                 accuracy);
  if (e.exceeds())
    error->warning(FLERR, "pair_style mlmd: model {}: estimated electrostatic force error {:.3g} eV/Å exceeds the "
                   "target {:.3g} eV/Å (accuracy {:g} x k_e) for these predicted charges: their charge density is "
                   "above the one the Ewald parameters were chosen for. Fix: add 'ewald tune' to pair_style mlmd "
                   "(sigma and the k-space cutoff chosen for these charges at the first step)",
                   model_path, e.total, e.target, accuracy);
}

double PairMLMD::compute_charges(mlmd::Evaluation &ev)
{
  // 1. the model: short-range energies and the charge head's outputs of the local atoms
  std::vector<double> e_short, raw, soft;
  try {
    model->charges_forward(*graph, node_species, e_short, raw, soft);
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what()));
  }
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_now();
  const int n_local = graph->n_local;
  const auto &atom_of_node = graph->atom_of_node;
  double sums[2] = {0.0, 0.0};
  for (int n = 0; n < n_local; n++) {
    sums[0] += raw[n];
    sums[1] += soft[n];
  }
  MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, world);
  const double excess = sums[0], wsum = sums[1];    // total charge Q = 0
  if (atom->natoms > 0 && !(wsum > 0.0 && std::isfinite(excess)))
    error->all(FLERR, "pair_style mlmd: step {}: the model's charge head gave softnesses summing to {} and raw "
               "charges summing to {}", update->ntimestep, wsum, excess);
  std::vector<double> q(n_local);
  for (int n = 0; n < n_local; n++) q[n] = raw[n] - soft[n] * excess / wsum;
  if (ewald_pending) prepare_ewald(q);

  // 2. charges of the ghost atoms (and atom->q for dumps)
  const int nall = atom->nlocal + atom->nghost;
  comm_width = comm_forward = 1;
  comm_float32 = false;
  comm_buf.assign(nall, 0.0);
  for (int n = 0; n < n_local; n++) comm_buf[atom_of_node[n]] = q[n];
  comm->forward_comm(this);
  if (atom->q_flag)
    for (int i = 0; i < nall; i++)
      if (species_of_type[atom->type[i]] >= 0) atom->q[i] = comm_buf[i];

  // 3. real space on its own graph (local centres, every image within the Ewald cutoff) ...
  mlmd::NeighbourInput in{atom->x,    atom->type,  atom->tag,      atom->nlocal,     nall,
                          list->inum, list->ilist, list->numneigh, list->firstneigh, NEIGHMASK};
  try {
    qgraph->build(in, species_of_type, ewald.r_cut, model->card().min_distance, 1);
  } catch (const mlmd::GraphError &e) {
    error->one(FLERR, "pair_style mlmd: step {}: {}", update->ntimestep, e.what());
  }
  std::vector<double> q_nodes(qgraph->n_nodes());
  for (int n = 0; n < qgraph->n_nodes(); n++)
    q_nodes[n] = n < n_local ? q[n] : comm_buf[qgraph->atom_of_node[n]];
  mlmd::RealSpace rs = mlmd::real_space(ewald, *qgraph, q_nodes);
  mlmd::Evaluation ev_real;
  ev_real.energies = std::move(rs.energies);
  ev_real.grad = std::move(rs.grad);
  accumulate(*qgraph, ev_real, true);

  // ... reciprocal space over every rank, and the self term
  const double *h = domain->h;    // xprd yprd zprd yz xz xy
  const double cell[3][3] = {{h[0], 0.0, 0.0}, {h[5], h[1], 0.0}, {h[4], h[3], h[2]}};
  std::vector<double> xs(3 * n_local);
  for (int n = 0; n < n_local; n++)
    for (int c = 0; c < 3; c++) xs[3 * n + c] = atom->x[atom_of_node[n]][c];
  auto sum_over_ranks = [this](std::vector<double> &v) {
    MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM, world);
  };
  const mlmd::Reciprocal rc = mlmd::reciprocal(ewald, cell, xs, q, vflag_atom || cvflag_atom, sum_over_ranks);
  double **f = atom->f;
  double e_rest = 0.0;
  for (int n = 0; n < n_local; n++) {
    const int i = atom_of_node[n];
    for (int c = 0; c < 3; c++) f[i][c] += rc.forces[3 * n + c];
    const double e = rc.energies[n] + mlmd::self_energy(ewald, q[n]);
    e_rest += e;
    if (eflag_atom) eatom[i] += e;
    if (vflag_atom)
      for (int c = 0; c < 6; c++) vatom[i][c] += rc.atom_virial[6 * n + c];
    if (cvflag_atom) {    // symmetric: yx zx zy repeat xy xz yz
      const double *w = &rc.atom_virial[6 * n];
      const double cv[9] = {w[0], w[1], w[2], w[3], w[4], w[5], w[3], w[4], w[5]};
      for (int c = 0; c < 9; c++) cvatom[i][c] += cv[c];
    }
  }
  if (eflag_global) eng_coul += e_rest;
  if (vflag_global)
    for (int c = 0; c < 6; c++) virial[c] += rc.virial[c];

  // 4. the charge response through the model's backward pass
  std::vector<double> phi(n_local), a(n_local), b(n_local);
  double pw = 0.0;
  for (int n = 0; n < n_local; n++) {
    phi[n] = rs.phi[n] + rc.phi[n] + mlmd::self_potential(ewald, q[n]);
    pw += phi[n] * soft[n];
  }
  MPI_Allreduce(MPI_IN_PLACE, &pw, 1, MPI_DOUBLE, MPI_SUM, world);
  const double phibar = atom->natoms > 0 ? pw / wsum : 0.0;
  for (int n = 0; n < n_local; n++) {
    a[n] = phi[n] - phibar;
    b[n] = -excess / wsum * a[n];
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  cpu_ewald += cpu_now() - cpu0;
  n_kvectors = rc.n_kvectors;
  try {
    ev = model->charges_backward(a, b);
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what()));
  }
  return dt;
}
