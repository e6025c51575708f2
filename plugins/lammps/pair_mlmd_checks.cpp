/* pair_style mlmd: the checks that refuse an input or stop a run (units, masses against elements, bonded pairs left out of the neighbour list, exclusions, motion and non-finite results) (see pair_mlmd.cpp for how a step works). */

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
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

using namespace LAMMPS_NS;
using mlmd::first_line;
using mlmd::id_list;

void PairMLMD::check_units()
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "pair_style mlmd requires 'units metal' (Å, eV, ps: the units the model works in); "
               "this input uses 'units {}'",
               update->unit_style);
}

/* ----------------------------------------------------------------------
   The mass of each atom type (or of each atom, with per-atom masses) against the standard atomic weight of the
   element pair_coeff gives it: a pair_coeff line whose elements are in another order than the data file's types
   otherwise runs, on the wrong species. In init_style, since inputs often set masses after pair_coeff.
------------------------------------------------------------------------- */

void PairMLMD::check_type_masses()
{
  if (!check_masses) return;
  const int ntypes = atom->ntypes;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> lo(ntypes + 1, inf), hi(ntypes + 1, -inf);
  const bool per_atom = atom->rmass_flag && atom->rmass;
  if (per_atom) {
    std::vector<double> my_lo(lo), my_hi(hi);
    for (int i = 0; i < atom->nlocal; i++) {
      const int t = atom->type[i];
      my_lo[t] = std::min(my_lo[t], atom->rmass[i]);
      my_hi[t] = std::max(my_hi[t], atom->rmass[i]);
    }
    MPI_Allreduce(my_lo.data(), lo.data(), ntypes + 1, MPI_DOUBLE, MPI_MIN, world);
    MPI_Allreduce(my_hi.data(), hi.data(), ntypes + 1, MPI_DOUBLE, MPI_MAX, world);
  } else if (atom->mass && atom->mass_setflag) {
    for (int t = 1; t <= ntypes; t++)
      if (atom->mass_setflag[t]) lo[t] = hi[t] = atom->mass[t];    // unset: LAMMPS stops on it itself
  }
  std::vector<int> model_numbers = model->atomic_numbers();
  for (int t = 1; t <= ntypes; t++) {
    const int species = species_of_type[t];
    if (species < 0 || lo[t] > hi[t]) continue;    // not mine, or no mass (no atoms of the type)
    const int z = model_numbers.at(species);
    for (double mass : {lo[t], hi[t]}) {
      if (mlmd::mass_matches(mass, z)) continue;
      int suggested = mlmd::element_for_mass(mass, model_numbers);
      if (!mlmd::mass_matches(mass, suggested)) suggested = mlmd::element_for_mass(mass);
      const bool in_model = std::find(model_numbers.begin(), model_numbers.end(), suggested) != model_numbers.end();
      error->all(FLERR,
                 "pair_style mlmd: atom type {} {} {:.6g} but pair_coeff gives it element {} (standard atomic weight "
                 "{:.6g}): that mass suggests {}{}. Check that pair_coeff lists the elements in the order of the atom "
                 "types and the masses of the data file; for isotopes or repartitioned masses, switch this check off "
                 "with 'pair_style mlmd {} check_masses no'",
                 t, per_atom ? "has atoms of mass" : "has mass", mass, mlmd::element_symbol(z),
                 mlmd::standard_atomic_weight(z), mlmd::element_symbol(suggested),
                 in_model ? "" : " (not in this model)", model_path);
    }
  }
}

/* ----------------------------------------------------------------------
   Bonded pairs left out of the neighbour list. With bonds (a molecular atom style) LAMMPS drops the 1-2, 1-3
   and 1-4 pairs whose special_bonds factors are all zero (both lj and coul; the default) from every pair
   neighbour list, unless a KSpace style or a Coulomb pair style that needs them keeps them. The model would then
   see a graph without those pairs and give another energy, with no error. LAMMPS makes this decision in
   Neighbor::init (neighbor->special_flag: 0 = left out), which runs after the pair styles' init_style, so the
   check is made in setup(), before the first force, and on the first compute() after init_style for runs that
   have no setup (rerun). Only the pairs of two atoms this style handles count (special_bonds angle/dihedral yes
   already took out of the special lists the pairs that are not in an angle or dihedral).
------------------------------------------------------------------------- */

void PairMLMD::setup()
{
  check_special_bonds();
  check_exclusions();
}

/* neigh_modify exclude takes pairs out of every neighbour list just as special_bonds does: refused when it can
   touch a pair of two atoms of this style (type pairs: exactly; group and molecule exclusions: when atoms of
   this style are in the groups involved, which is all that can be told without walking every pair) */

void PairMLMD::check_exclusions()
{
  if (!neighbor->exclude) return;
  for (int k = 0; k < neighbor->nex_type; k++) {
    const int a = neighbor->ex1_type[k], b = neighbor->ex2_type[k];
    if (species_of_type[a] >= 0 && species_of_type[b] >= 0)
      error->all(FLERR,
                 "pair_style mlmd: 'neigh_modify exclude type {} {}' removes pairs of two atom types this style "
                 "handles ({} and {}) from the neighbour list, so the model would not see them and would compute "
                 "another energy: exclude only pairs that involve another style's types",
                 a, b, type_element[a], type_element[b]);
  }
  auto count_in = [&](int bit) {
    long n = 0;
    for (int i = 0; i < atom->nlocal; i++)
      if ((atom->mask[i] & bit) && species_of_type[atom->type[i]] >= 0) n++;
    long all = 0;
    MPI_Allreduce(&n, &all, 1, MPI_LONG, MPI_SUM, world);
    return all;
  };
  for (int k = 0; k < neighbor->nex_group; k++)
    if (count_in(neighbor->ex1_bit[k]) > 0 && count_in(neighbor->ex2_bit[k]) > 0)
      error->all(FLERR,
                 "pair_style mlmd: a 'neigh_modify exclude group' has atoms of this style in both of its groups, so "
                 "pairs the model needs may be left out of the neighbour list (another energy, no error): exclude "
                 "only groups without mlmd atoms, or give those pairs to another style by type");
  for (int k = 0; k < neighbor->nex_mol; k++)
    if (count_in(neighbor->ex_mol_bit[k]) > 0)
      error->all(FLERR,
                 "pair_style mlmd: a 'neigh_modify exclude molecule' group contains atoms of this style, so pairs the "
                 "model needs would be left out of the neighbour list (another energy, no error): exclude only "
                 "groups without mlmd atoms");
}

void PairMLMD::check_special_bonds()
{
  specials_checked = true;
  if (atom->molecular == Atom::ATOMIC) return;
  const bool left_out[4] = {false, neighbor->special_flag[1] == 0, neighbor->special_flag[2] == 0,
                            neighbor->special_flag[3] == 0};
  if (!left_out[1] && !left_out[2] && !left_out[3]) return;
  long mine[4] = {0, 0, 0, 0};    // pairs of two mlmd atoms left out, per level (1-2, 1-3, 1-4); [0]: templates
  tagint example[2] = {0, 0};
  if (atom->molecular == Atom::MOLECULAR && atom->nspecial && atom->special) {
    for (int i = 0; i < atom->nlocal; i++) {
      if (species_of_type[atom->type[i]] < 0) continue;
      int begin = 0;
      for (int level = 1; level <= 3; level++) {
        const int end = atom->nspecial[i][level - 1];    // cumulative counts
        for (int m = begin; left_out[level] && m < end; m++) {
          const int j = atom->map(atom->special[i][m]);
          if (j < 0 || species_of_type[atom->type[j]] < 0) continue;    // not on this rank: beyond the cutoff
          if (mine[1] + mine[2] + mine[3] == 0) {
            example[0] = atom->tag[i];
            example[1] = atom->special[i][m];
          }
          mine[level]++;
        }
        begin = end;
      }
    }
  } else {
    mine[0] = 1;    // molecule templates: the bonds are in the template; assume they join atoms of this style
  }
  long total[4];
  MPI_Allreduce(mine, total, 4, MPI_LONG, MPI_SUM, world);
  if (total[0] + total[1] + total[2] + total[3] == 0) return;
  // the example of the lowest rank that has one
  int has = (mine[1] + mine[2] + mine[3] > 0) ? comm->me : comm->nprocs, from = comm->nprocs;
  MPI_Allreduce(&has, &from, 1, MPI_INT, MPI_MIN, world);
  if (from < comm->nprocs) MPI_Bcast(example, 2, MPI_LMP_TAGINT, from, world);
  std::string which, counts;
  const char *names[4] = {"", "1-2", "1-3", "1-4"};
  for (int level = 1; level <= 3; level++) {
    if (!left_out[level]) continue;
    which += std::string(which.empty() ? "" : ", ") + names[level];
    // each pair was counted from both of its atoms
    if (total[level] > 0)
      counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", (total[level] + 1) / 2, names[level]);
  }
  const std::string what = total[0] > 0 ? std::string("the bonded pairs of its molecule templates")
                                        : fmt::format("{} pair(s) of bonded atoms (e.g. atom IDs {} and {})", counts,
                                                      example[0], example[1]);
  error->all(FLERR,
             "pair_style mlmd: this system has bonds, and special_bonds (lj {} {} {}, coul {} {} {}) makes LAMMPS leave "
             "its {} pairs out of the neighbour list, so the model would not see {} and would compute another "
             "energy: an mlmd model sees every pair within its cutoff. Add 'special_bonds lj/coul 1.0 1.0 1.0' before "
             "the run (or use a data file without bonds, atom_style atomic)",
             force->special_lj[1], force->special_lj[2], force->special_lj[3], force->special_coul[1],
             force->special_coul[2], force->special_coul[3], which, what);
}


/* ----------------------------------------------------------------------
   What stops a run (error->one: any rank may find it; the message names the step and the atom IDs):
   - a non-finite position or velocity of an atom this style handles;
   - an atom that moves further than the model's cutoff in one time step (|v| dt > r_cut): the model then
     sees a neighbour for less than a step, so the integration no longer means anything (a time step far too
     large, or a force that has blown up). Room-temperature atoms move ~1e-2 Å per fs, a 10 keV recoil ~0.3;
   - two atoms closer than the model's minimum distance (compute());
   - a non-finite energy or force from the model (compute()).
   An atom or cluster that leaves its neighbours is not an error: an isolated atom has the model's
   free-atom energy and no force; LAMMPS itself stops a non-periodic run that loses atoms through a fixed
   boundary ("Lost atoms").
------------------------------------------------------------------------- */

void PairMLMD::check_motion()
{
  if (update->whichflag != 1) return;    // dynamics only (minimizers keep no meaningful velocities)
  double **x = atom->x;
  double **v = atom->v;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const double dt = update->dt;
  std::vector<tagint> bad_x, bad_v, fast;
  double worst = 0.0;
  for (int i = 0; i < atom->nlocal; i++) {
    if (species_of_type[type[i]] < 0) continue;
    const tagint id = tag ? tag[i] : i;
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2])) {
      bad_x.push_back(id);
      continue;
    }
    if (!v) continue;
    const double step = std::sqrt(v[i][0] * v[i][0] + v[i][1] * v[i][1] + v[i][2] * v[i][2]) * dt;
    if (!std::isfinite(step)) {
      bad_v.push_back(id);
    } else if (step > r_cut) {
      fast.push_back(id);
      worst = std::max(worst, step);
    }
  }
  if (!bad_x.empty())
    error->one(FLERR, "pair_style mlmd: step {}: atom ID(s) {} have a non-finite position: the run has blown up",
               update->ntimestep, id_list(bad_x));
  if (!bad_v.empty())
    error->one(FLERR, "pair_style mlmd: step {}: atom ID(s) {} have a non-finite velocity: the run has blown up",
               update->ntimestep, id_list(bad_v));
  if (!fast.empty())
    error->one(FLERR,
               "pair_style mlmd: step {}: atom ID(s) {} move up to {:.4g} Å per time step ({} ps), further than the "
               "model's cutoff ({} Å): the run has blown up (time step too large, or forces out of control)",
               update->ntimestep, id_list(fast), worst, dt, r_cut);
}

[[noreturn]] void PairMLMD::fail_non_finite(const mlmd::Evaluation &ev)
{
  const tagint *tag = atom->tag;
  const auto &atom_of_node = graph->atom_of_node;
  auto id = [&](int i) { return tag ? tag[i] : static_cast<tagint>(i); };
  std::vector<tagint> bad;
  for (int n = 0; n < graph->n_local; n++)
    if (!std::isfinite(ev.energies[n])) bad.push_back(id(atom_of_node[n]));
  if (!bad.empty())
    error->one(FLERR,
               "pair_style mlmd: step {}: the model gave a non-finite energy for atom ID(s) {} ({} local atoms, {} "
               "edges): the configuration is broken or far outside what the model can describe",
               update->ntimestep, id_list(bad), graph->n_local, graph->n_edges());
  for (long e = 0; e < graph->n_edges(); e++)
    if (!std::isfinite(ev.grad[3 * e]) || !std::isfinite(ev.grad[3 * e + 1]) || !std::isfinite(ev.grad[3 * e + 2])) {
      bad.push_back(id(atom_of_node[graph->edge_src[e]]));
      bad.push_back(id(atom_of_node[graph->edge_dst[e]]));
    }
  error->one(FLERR,
             "pair_style mlmd: step {}: the model gave non-finite forces between atom ID(s) {} ({} local atoms, {} "
             "edges): the configuration is broken or far outside what the model can describe",
             update->ntimestep, id_list(bad), graph->n_local, graph->n_edges());
}
