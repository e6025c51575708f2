/* pair_style mlmd: pair_style and pair_coeff arguments, opening the model file (see pair_mlmd.cpp for how a step works). */

#include "pair_mlmd.h"

#include "mlmd_alloc.h"
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
#include <cmath>
#include <cstdlib>
#include <cstring>

#ifndef MLMD_MODEL_FORMAT_VERSION
#error "build with -DMLMD_MODEL_FORMAT_VERSION=<mlmd.MODEL_FORMAT_VERSION> (plugins/lammps/build.sh does)"
#endif

using namespace LAMMPS_NS;
using mlmd::first_line;
using mlmd::id_list;

/* ----------------------------------------------------------------------
   pair_style mlmd model.pt [parallel auto|layers|halo] [check_masses yes|no] [domain warn|stop|off]
                            [ewald model|tune]
------------------------------------------------------------------------- */

void PairMLMD::settings(int narg, char **arg)
{
  const char *usage =
      "'pair_style mlmd model.pt [parallel auto|layers|halo] [check_masses yes|no] [domain warn|stop|off] "
      "[ewald model|tune]'";
  if (narg < 1) error->all(FLERR, "Illegal pair_style mlmd command: expected {}, got no model file", usage);
  Parallel new_parallel = Parallel::AUTO;
  bool new_check_masses = true;
  DomainMode new_domain = DomainMode::WARN;
  bool new_ewald_tune = false;
  for (int k = 1; k < narg; k += 2) {
    const std::string key = arg[k];
    if (key != "parallel" && key != "check_masses" && key != "domain" && key != "ewald")
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
    } else if (key == "ewald") {
      if (value == "model" || value == "tune")
        new_ewald_tune = value == "tune";
      else
        error->all(FLERR, "pair_style mlmd: ewald '{}' is not one of model, tune", value);
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
  ewald_tune = new_ewald_tune;
  ewald_tuned = false;
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
  // glibc would hand them back to the kernel and fault them in again each time. mlmd_alloc.h: a caching
  // allocator for torch (MLMD_KEEP_MEMORY unset or 1), glibc's never-trim mallopt ("mallopt"), or nothing ("0")
  const int alloc_mode = mlmd_alloc_setup();
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style mlmd: memory: {}\n",
                   alloc_mode == MLMD_ALLOC_CACHE     ? "caching allocator (freed blocks reused)"
                   : alloc_mode == MLMD_ALLOC_MALLOPT ? "glibc never trims (mallopt)"
                                                  : "malloc as is (MLMD_KEEP_MEMORY=0)");

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
    if (model->runs_compiled_layers())
      utils::logmesg(lmp, "pair_style mlmd: layer-by-layer evaluations run the compiled programs ({})\n",
                     card.compiled.layers_file);
    else if (model->runs_compiled() && model->layered())
      utils::logmesg(lmp, "pair_style mlmd: layer-by-layer evaluations run the TorchScript model: {}\n",
                     model->compiled_layers_note());
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
