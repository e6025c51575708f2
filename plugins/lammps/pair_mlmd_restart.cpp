/* pair_style mlmd: restart files (settings and coefficients) (see pair_mlmd.cpp for how a step works). */

#include "pair_mlmd.h"

#include "mlmd_elements.h"
#include "mlmd_model.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "platform.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

using namespace LAMMPS_NS;
using mlmd::first_line;
using mlmd::id_list;

namespace {
constexpr int RESTART_LAYOUT = 2;    // layout of what write_restart stores (bumped if it changes; 2: check_masses)
}    // namespace

/* ----------------------------------------------------------------------
   restart files: proc 0 writes; every proc reads what proc 0 reads and broadcasts.
   Settings: layout, absolute model path, weights checksum, then (layout 2 on) flags: bit 0 = check_masses,
   bits 1-2 = the domain mode (0 warn, 1 stop, 2 off; restarts written before it have 0 there: warn), bits 3-4 =
   the parallel keyword (0 auto, 1 layers, 2 halo; 0 in restarts written before it), bit 5 = ewald tune (0 in
   restarts written before it: model). Tuned parameters are not stored: they are chosen again from the charges of
   the first step after read_restart.
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
  // layout 2 on; bits 3-4 (the parallel keyword) are 0 = auto in files written before they were stored
  const int flags = (check_masses ? 1 : 0) | (static_cast<int>(domain_mode) << 1) | (static_cast<int>(parallel) << 3) |
      (ewald_tune ? 1 << 5 : 0);
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
  const int stored_parallel = (flags >> 3) & 3;
  parallel = stored_parallel == 1 ? Parallel::LAYERS : (stored_parallel == 2 ? Parallel::HALO : Parallel::AUTO);
  check_masses = (flags & 1) != 0;
  ewald_tune = ((flags >> 5) & 1) != 0;
  ewald_tuned = false;
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
