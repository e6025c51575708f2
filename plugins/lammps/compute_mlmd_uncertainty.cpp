/* compute mlmd/uncertainty: see compute_mlmd_uncertainty.h.

   Exact on any number of MPI ranks: member forces on ghost atoms are sent back to their owners (reverse
   communication of 3K values per atom) before the per-atom spread is taken, and the members' energies are
   summed over ranks before the energy spread is. This file needs no torch headers: the model is the pair
   style's. */

#include "compute_mlmd_uncertainty.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "pair_mlmd.h"
#include "update.h"

#include <cmath>
#include <vector>

using namespace LAMMPS_NS;

ComputeMLMDUncertainty::ComputeMLMDUncertainty(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), pair(nullptr), n_members(0), evaluated_serial(-1), evaluated_step(-1), nmax(0),
    member_force(nullptr), member_energy(nullptr), peratom(nullptr)
{
  if (narg != 3)
    error->all(FLERR, "Illegal compute mlmd/uncertainty command: expected 'compute ID group mlmd/uncertainty', "
                      "got {} argument(s) after the style", narg - 3);
  scalar_flag = 1;
  extscalar = 0;
  vector_flag = 1;
  size_vector = 3;
  extvector = -1;
  extlist = new int[3]{1, 0, 0};
  peratom_flag = 1;
  size_peratom_cols = 2;
  for (double &v : values) v = 0.0;
  vector = values;
}

ComputeMLMDUncertainty::~ComputeMLMDUncertainty()
{
  delete[] extlist;
  memory->destroy(member_force);
  memory->destroy(member_energy);
  memory->destroy(peratom);
}

void ComputeMLMDUncertainty::init()
{
  pair = dynamic_cast<PairMLMD *>(force->pair_match("mlmd", 1, 0));
  if (pair == nullptr)
    error->all(FLERR, "compute mlmd/uncertainty requires pair_style mlmd (alone or once under hybrid/overlay)");
  n_members = pair->committee_size();
  if (n_members < 2)
    error->all(FLERR,
               "compute mlmd/uncertainty: {} is not a committee model (it has one member, so no spread): train "
               "one with `mlmd train --ensemble K` and package it with `mlmd package`",
               pair->model_file());
  comm_reverse = 3 * n_members;    // per-member ghost forces; Comm::init() (after this) sizes its buffers
  if (nmax > 0) {                  // the member count may differ from the last run's model
    memory->destroy(member_force);
    memory->destroy(member_energy);
    memory->destroy(peratom);
    nmax = 0;
  }
  evaluated_serial = -1;
}

void ComputeMLMDUncertainty::grow()
{
  if (atom->nmax <= nmax) return;
  nmax = atom->nmax;
  memory->destroy(member_force);
  memory->destroy(member_energy);
  memory->destroy(peratom);
  memory->create(member_force, nmax, 3 * n_members, "mlmd/uncertainty:member_force");
  memory->create(member_energy, nmax, n_members, "mlmd/uncertainty:member_energy");
  memory->create(peratom, nmax, 2, "mlmd/uncertainty:peratom");
}

/* one evaluation per graph of the pair style, shared by the scalar, vector and per-atom values */

void ComputeMLMDUncertainty::evaluate()
{
  // the serial is the same on every rank (each runs the pair's compute() as often), so all ranks return or
  // all go on to the collective calls below
  if (evaluated_serial == pair->graph_serial() && evaluated_step == update->ntimestep) return;
  if (!pair->graph_is_current())
    error->all(FLERR,
               "compute mlmd/uncertainty: pair_style mlmd has not computed forces on step {}: the compute can "
               "only be used on steps on which forces were computed",
               update->ntimestep);
  grow();
  const int K = n_members;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  for (int i = 0; i < nall; i++)
    for (int c = 0; c < 3 * K; c++) member_force[i][c] = 0.0;
  for (int i = 0; i < nlocal; i++)
    for (int k = 0; k < K; k++) member_energy[i][k] = 0.0;

  pair->evaluate_members(member_energy, member_force);
  comm->reverse_comm(this);

  const int *mask = atom->mask;
  std::vector<double> energy_sum(K, 0.0);
  double local_max = 0.0;
  double local_sums[2] = {0.0, 0.0};    // sum of force std, number of group atoms
  for (int i = 0; i < nlocal; i++) {
    peratom[i][0] = peratom[i][1] = 0.0;
    if (!(mask[i] & groupbit)) continue;
    double mean[3] = {0.0, 0.0, 0.0};
    double e_mean = 0.0;
    for (int k = 0; k < K; k++) {
      for (int d = 0; d < 3; d++) mean[d] += member_force[i][3 * k + d] / K;
      e_mean += member_energy[i][k] / K;
      energy_sum[k] += member_energy[i][k];
    }
    double f_var = 0.0, e_var = 0.0;
    for (int k = 0; k < K; k++) {
      for (int d = 0; d < 3; d++) {
        const double dev = member_force[i][3 * k + d] - mean[d];
        f_var += dev * dev / K;
      }
      const double dev = member_energy[i][k] - e_mean;
      e_var += dev * dev / K;
    }
    peratom[i][0] = std::sqrt(f_var);
    peratom[i][1] = std::sqrt(e_var);
    if (peratom[i][0] > local_max) local_max = peratom[i][0];
    local_sums[0] += peratom[i][0];
    local_sums[1] += 1.0;
  }

  std::vector<double> energy_total(K, 0.0);
  MPI_Allreduce(energy_sum.data(), energy_total.data(), K, MPI_DOUBLE, MPI_SUM, world);
  double global_max = 0.0, global_sums[2] = {0.0, 0.0};
  MPI_Allreduce(&local_max, &global_max, 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(local_sums, global_sums, 2, MPI_DOUBLE, MPI_SUM, world);

  double e_mean = 0.0;
  for (int k = 0; k < K; k++) e_mean += energy_total[k] / K;
  double e_var = 0.0;
  for (int k = 0; k < K; k++) e_var += (energy_total[k] - e_mean) * (energy_total[k] - e_mean) / K;
  values[0] = std::sqrt(e_var);
  values[1] = global_max;
  values[2] = global_sums[1] > 0.0 ? global_sums[0] / global_sums[1] : 0.0;

  evaluated_serial = pair->graph_serial();
  evaluated_step = update->ntimestep;
}

double ComputeMLMDUncertainty::compute_scalar()
{
  invoked_scalar = update->ntimestep;
  evaluate();
  scalar = values[1];
  return scalar;
}

void ComputeMLMDUncertainty::compute_vector()
{
  invoked_vector = update->ntimestep;
  evaluate();
}

void ComputeMLMDUncertainty::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  evaluate();
  array_atom = peratom;
}

int ComputeMLMDUncertainty::pack_reverse_comm(int n, int first, double *buf)
{
  const int width = 3 * n_members;
  int m = 0;
  for (int i = first; i < first + n; i++)
    for (int c = 0; c < width; c++) buf[m++] = member_force[i][c];
  return m;
}

void ComputeMLMDUncertainty::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int width = 3 * n_members;
  int m = 0;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < width; c++) member_force[list[i]][c] += buf[m++];
}

double ComputeMLMDUncertainty::memory_usage()
{
  return static_cast<double>(nmax) * (4 * n_members + 2) * sizeof(double);
}
