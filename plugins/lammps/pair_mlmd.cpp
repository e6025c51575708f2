/* pair_style mlmd: see pair_mlmd.h.

   How a step works
   ----------------
   1. Graph. Nodes are the local atoms handled by this style (first, so that the model's first n_local
      outputs are theirs), then the ghost atoms their energies depend on. A model with L message-passing
      layers gives atom i an energy that depends on every atom reachable in L hops of length < r_cut, i.e.
      on atoms up to L * r_cut away. We therefore
        - ask LAMMPS for ghost atoms out to L * r_cut + skin (comm cutoff, set in init_style), so every atom
          that can reach a local energy is present on this rank: the result is exact on any number of ranks
          with no communication between layers (the alternative, exchanging node features between layers,
          would need a model split into per-layer calls; the ghost shell keeps the model one call);
        - ask for a full neighbour list that includes the ghosts' own neighbours (REQ_GHOST);
        - walk the list breadth-first from the local atoms: the edges of atoms at hop 0..L-1 and the nodes at
          hop 0..L are all that can influence a local energy, so the far ghost shell, which is most of the
          ghosts, costs neither model time nor memory;
      - map a ghost that is a periodic image of a local atom onto that atom (edge vectors keep the image's
          position): on one rank the graph is then exactly the periodic graph, with no ghost nodes at all,
          and on many ranks only ghosts owned by other ranks become extra nodes.
   2. Model. local_energies(species, edge_index, edge_vectors, n_local) gives the local atoms' energies;
      E = their sum. One backward pass gives g_e = dE/dr_e for every edge vector r_e = x_j - x_i.
   3. Forces and virial. f_i += g_e, f_j -= g_e (j may be a ghost: newton on, LAMMPS sends ghost forces back
      to their owners). Virial W = sum_e -r_e (x) g_e (the same as sum_n x_n (x) f_n over local + ghost
      nodes); the per-atom virial gives half of each edge's term to each of its two atoms.
   Energies of ghost atoms are never counted, so nothing is double counted across ranks. */

#include "pair_mlmd.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "platform.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <unordered_map>

#ifndef MLMD_MODEL_FORMAT_VERSION
#error "build with -DMLMD_MODEL_FORMAT_VERSION=<mlmd.MODEL_FORMAT_VERSION> (plugins/lammps/build.sh does)"
#endif

using namespace LAMMPS_NS;

namespace LAMMPS_NS {
struct MLMDModel {
  torch::jit::Module module;
  torch::Dtype dtype = torch::kFloat64;
};
}    // namespace LAMMPS_NS

namespace {
// value of Pair::centroidstressflag meaning "per-atom centroid virial implemented" (LAMMPS's CENTROID_AVAIL;
// the enum is not in the headers the wheel ships)
constexpr int CENTROID_AVAIL_FLAG = 1;
constexpr double DEFAULT_MIN_DISTANCE = 0.1;    // Å: closer atoms are an error (the model's min_distance if set)
const char *META_FILE = "mlmd_metadata.json";
constexpr int RESTART_LAYOUT = 1;    // layout of what write_restart stores (bumped if it changes)
constexpr int MAX_NAMED_ATOMS = 8;   // atom IDs listed in an error message

// "3 7 12 (and 5 more)"
std::string id_list(std::vector<tagint> ids)
{
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string text;
  const size_t shown = std::min(ids.size(), static_cast<size_t>(MAX_NAMED_ATOMS));
  for (size_t k = 0; k < shown; k++) text += (k ? " " : "") + std::to_string(ids[k]);
  if (ids.size() > shown) text += " (and " + std::to_string(ids.size() - shown) + " more)";
  return text;
}

std::string first_line(const std::string &text)
{
  auto pos = text.find('\n');
  return pos == std::string::npos ? text : text.substr(0, pos);
}

double seconds_since(std::chrono::steady_clock::time_point t0)
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}    // namespace

/* ---------------------------------------------------------------------- */

PairMLMD::PairMLMD(LAMMPS *lmp) :
    Pair(lmp), r_cut(0.0), n_layers(0), interaction_range(0.0), min_distance(DEFAULT_MIN_DISTANCE),
    time_model(0.0), time_bridge(0.0)
{
  single_enable = 0;
  restartinfo = 1;    // write_restart stores the model and the element of each type
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from the edge gradients (also per atom)
  centroidstressflag = CENTROID_AVAIL_FLAG;
  nextra = 4;
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
   pair_style mlmd model.pt
------------------------------------------------------------------------- */

void PairMLMD::settings(int narg, char **arg)
{
  if (narg != 1)
    error->all(FLERR, "Illegal pair_style mlmd command: expected 'pair_style mlmd model.pt', got {} argument(s)",
               narg);
  check_units();
  load_model(arg[0]);
  restart_problem.clear();
  // a new model may have other elements: pair_coeff must be given again
  type_element.clear();
  if (allocated)
    for (int i = 0; i <= atom->ntypes; i++)
      for (int j = 0; j <= atom->ntypes; j++) setflag[i][j] = 0;
}

void PairMLMD::load_model(const std::string &path)
{
  if (!platform::file_is_readable(path))
    error->all(FLERR, "pair_style mlmd: model file '{}' not found (or not readable)", path);

  auto m = std::make_unique<MLMDModel>();
  torch::jit::ExtraFilesMap extra{{META_FILE, ""}};
  try {
    m->module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const c10::Error &e) {
    error->all(FLERR,
               "pair_style mlmd: cannot read model file '{}': not a valid mlmd TorchScript archive "
               "(corrupt or truncated?): {}",
               path, first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->all(FLERR,
               "pair_style mlmd: cannot read model file '{}': not a valid mlmd TorchScript archive "
               "(corrupt or truncated?): {}",
               path, first_line(e.what()));
  }
  if (extra[META_FILE].empty())
    error->all(FLERR, "pair_style mlmd: '{}' is a TorchScript file but not an mlmd model (no {})", path,
               META_FILE);

  json meta;
  try {
    meta = json::parse(extra[META_FILE]);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style mlmd: model card of '{}' is not valid JSON: {}", path, first_line(e.what()));
  }
  try {
    const int fmt = meta.at("format_version").get<int>();
    const std::string made_by = meta.value("mlmd_version", std::string("?"));
    if (fmt < MLMD_MODEL_FORMAT_VERSION)
      error->all(FLERR,
                 "pair_style mlmd: '{}' was packaged by mlmd {} (model format {}); this plugin reads model format "
                 "{} only. Repackage its training checkpoint with the installed mlmd (mlmd package CHECKPOINT -o "
                 "{}), or run it with mlmd {}",
                 path, made_by, fmt, MLMD_MODEL_FORMAT_VERSION, path, made_by);
    if (fmt > MLMD_MODEL_FORMAT_VERSION)
      error->all(FLERR,
                 "pair_style mlmd: '{}' was packaged by mlmd {} (model format {}), newer than this plugin (model "
                 "format {}): install mlmd {} or later and rebuild the plugin (bash plugins/lammps/build.sh)",
                 path, made_by, fmt, MLMD_MODEL_FORMAT_VERSION, made_by);
    model_sha256 = meta.value("weights_sha256", std::string());
    elements = meta.at("elements").get<std::vector<std::string>>();
    r_cut = meta.at("r_cut").get<double>();
    n_layers = meta.at("n_layers").get<int>();
    interaction_range = meta.at("interaction_range").get<double>();
    const std::string dtype = meta.at("dtype").get<std::string>();
    if (dtype == "float64")
      m->dtype = torch::kFloat64;
    else if (dtype == "float32")
      m->dtype = torch::kFloat32;
    else
      error->all(FLERR, "pair_style mlmd: model '{}' has dtype '{}'; supported: float32, float64", path, dtype);
    // predicted charges change every step; coul/long + kspace read each atom's charge as a fixed property
    if (meta.value("charges_mode", std::string("none")) == "predicted")
      error->all(FLERR,
                 "pair_style mlmd: model '{}' predicts its charges from the atoms' environments, and LAMMPS's "
                 "coul/long + kspace need fixed per-atom charges, so its electrostatics cannot run here. Run it in "
                 "ASE or OpenMM (electrostatics inside the model), or train with long_range.electrostatics: fixed",
                 path);
  } catch (const json::exception &e) {
    error->all(FLERR, "pair_style mlmd: model card of '{}' lacks a field this plugin needs: {}", path,
               first_line(e.what()));
  }
  if (!(r_cut > 0.0) || n_layers < 1 || elements.empty())
    error->all(FLERR, "pair_style mlmd: model '{}' has an invalid card (r_cut {}, n_layers {}, {} elements)", path,
               r_cut, n_layers, elements.size());
  if (std::fabs(interaction_range - r_cut * n_layers) > 1e-9 * interaction_range)
    error->all(FLERR, "pair_style mlmd: model '{}': interaction_range {} is not n_layers * r_cut = {}", path,
               interaction_range, r_cut * n_layers);
  if (!m->module.find_method("local_energies"))
    error->all(FLERR, "pair_style mlmd: model '{}' has no local_energies() entry point (not an mlmd model?)",
               path);
  // self, species, edge_index, edge_vectors, n_local[, n_mirrored]
  model_takes_mirrored = m->module.get_method("local_energies").function().getSchema().arguments().size() >= 6;
  m->module.eval();
  // a served model is not trained: no weight gradients beside the forces (older model files ask for them)
  for (auto p : m->module.parameters()) p.set_requires_grad(false);
  min_distance = DEFAULT_MIN_DISTANCE;
  if (m->module.hasattr("min_distance")) {
    const auto value = m->module.attr("min_distance");
    if (value.isDouble()) min_distance = value.toDouble();
  }

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
    for (const auto &e : elements) els += " " + e;
    utils::logmesg(lmp,
                   "pair_style mlmd: {} (elements{}, r_cut {} Å, {} layers, interaction range {} Å, {})\n",
                   path, els, r_cut, n_layers, interaction_range,
                   model->dtype == torch::kFloat64 ? "float64" : "float32");
  }
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
   Settings: layout, absolute model path, weights checksum. Coefficients: ntypes, then one element per type.
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
}

void PairMLMD::read_restart_settings(FILE *fp)
{
  int layout = 0;
  if (comm->me == 0) utils::sfread(FLERR, &layout, sizeof(int), 1, fp, nullptr, error);
  MPI_Bcast(&layout, 1, MPI_INT, 0, world);
  if (layout != RESTART_LAYOUT)
    error->all(FLERR,
               "pair_style mlmd: the restart file stores pair_style mlmd in layout {}, this plugin reads layout {} "
               "(written by another mlmd version): write the restart again with this one, or read it with the "
               "version that wrote it",
               layout, RESTART_LAYOUT);
  const std::string path = read_string(fp);
  const std::string sha = read_string(fp);
  check_units();
  model.reset();
  type_element.clear();
  restart_problem.clear();
  if (!platform::file_is_readable(path)) {
    restart_problem = fmt::format("the restart file's model '{}' is not readable", path);
  } else {
    load_model(path);
    if (!sha.empty() && model_sha256 != sha) {
      restart_problem = fmt::format("the restart file's model '{}' has changed since the restart was written "
                                    "(weights checksum {}... then, {}... now)",
                                    path, sha.substr(0, 12), model_sha256.substr(0, 12));
      model.reset();
    }
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
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // Ghost shell: every atom within n_layers * r_cut of a local atom must be present on this rank (see the
  // top of this file), plus the skin for the motion between neighbour-list builds. LAMMPS sizes the shell
  // from the pair cutoff (r_cut) by default, so raise the user ghost cutoff; a larger user value is kept.
  const double needed = interaction_range + neighbor->skin;
  if (comm->cutghostuser < needed) {
    comm->cutghostuser = needed;
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style mlmd: ghost cutoff set to {:.4g} Å ({} layers x r_cut {} Å + skin {} Å) so that "
                     "energies are exact on any number of MPI ranks\n",
                     needed, n_layers, r_cut, neighbor->skin);
  }
}

double PairMLMD::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR,
               "pair_style mlmd: atom types {} and {} have no element (NULL in pair_coeff): NULL types need "
               "pair_style hybrid/overlay with another style for them",
               i, j);
  cutghost[i][j] = cutghost[j][i] = r_cut;
  return r_cut;
}

/* ----------------------------------------------------------------------
   Reorder the edges as [pairs i->j, their reverses j->i in the same order, the rest] and return the number
   of pairs (the model's n_mirrored: it computes what depends on the distance alone once per pair). A
   reverse exists when both ends are centres (nodes [0, n_centers)): for each centre m, the edges n -> m
   with n <= m are matched against m's own edges to n by their negated vectors (images of one atom are a
   lattice vector apart, far beyond the tolerance), in time linear in the number of edges.
   Forces and virial are unchanged: the reverse's distance is the same function of the positions.
------------------------------------------------------------------------- */

long PairMLMD::mirror_edges(long n_centers, long n_nodes)
{
  const long n_edges = static_cast<long>(edge_src.size());
  constexpr double tol2 = 1e-16;    // Å^2: the two vectors differ by round-off only
  pair_of.assign(n_edges, -1);
  // edges n -> m with n <= m < n_centers, grouped by m (counting sort)
  in_start.assign(n_centers + 1, 0);
  for (long e = 0; e < n_edges; e++)
    if (edge_dst[e] < n_centers && edge_src[e] <= edge_dst[e]) in_start[edge_dst[e] + 1]++;
  for (long m = 0; m < n_centers; m++) in_start[m + 1] += in_start[m];
  in_list.resize(in_start[n_centers]);
  next_same.assign(in_start.begin(), in_start.end() - 1);    // fill cursors
  for (long e = 0; e < n_edges; e++)
    if (edge_dst[e] < n_centers && edge_src[e] <= edge_dst[e]) in_list[next_same[edge_dst[e]]++] = e;
  slot.assign(n_nodes, -1);    // node -> one of m's edges to it (chained through next_same)
  next_same.assign(n_edges, -1);
  long n_pairs = 0;
  for (long m = 0; m < n_centers; m++) {
    for (long f = first_edge[m]; f < first_edge[m + 1]; f++) {
      next_same[f] = slot[edge_dst[f]];
      slot[edge_dst[f]] = f;
    }
    for (long k = in_start[m]; k < in_start[m + 1]; k++) {
      const long e = in_list[k];
      if (pair_of[e] >= 0) continue;
      const double *v = &edge_vec[3 * e];
      for (long f = slot[edge_src[e]]; f >= 0; f = next_same[f]) {
        if (f == e || pair_of[f] >= 0) continue;
        const double *w = &edge_vec[3 * f];
        const double dx = v[0] + w[0], dy = v[1] + w[1], dz = v[2] + w[2];
        if (dx * dx + dy * dy + dz * dz < tol2) {
          pair_of[e] = f;
          pair_of[f] = e;
          n_pairs++;
          break;
        }
      }
    }
    for (long f = first_edge[m]; f < first_edge[m + 1]; f++) slot[edge_dst[f]] = -1;
  }
  if (n_pairs == 0) return 0;
  new_src.resize(n_edges);
  new_dst.resize(n_edges);
  new_vec.resize(3 * static_cast<size_t>(n_edges));
  long first = 0, second = n_pairs, rest = 2 * n_pairs;
  auto put = [&](long to, long from) {
    new_src[to] = edge_src[from];
    new_dst[to] = edge_dst[from];
    for (int k = 0; k < 3; k++) new_vec[3 * to + k] = edge_vec[3 * from + k];
  };
  for (long e = 0; e < n_edges; e++) {
    if (pair_of[e] < 0)
      put(rest++, e);
    else if (pair_of[e] > e) {    // the first of its pair: the reverse goes to the same place in the second block
      put(first++, e);
      put(second++, pair_of[e]);
    }
  }
  edge_src.swap(new_src);
  edge_dst.swap(new_dst);
  edge_vec.swap(new_vec);
  return n_pairs;
}

/* ---------------------------------------------------------------------- */

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

[[noreturn]] void PairMLMD::fail_non_finite(const double *energies, int n_local, const double *grad, int64_t n_edges)
{
  const tagint *tag = atom->tag;
  std::vector<tagint> bad;
  for (int n = 0; n < n_local; n++)
    if (!std::isfinite(energies[n])) bad.push_back(tag ? tag[atom_of_node[n]] : atom_of_node[n]);
  if (!bad.empty())
    error->one(FLERR,
               "pair_style mlmd: step {}: the model gave a non-finite energy for atom ID(s) {} ({} local atoms, {} "
               "edges): the configuration is broken or far outside what the model can describe",
               update->ntimestep, id_list(bad), n_local, n_edges);
  for (int64_t e = 0; grad && e < n_edges; e++)
    if (!std::isfinite(grad[3 * e]) || !std::isfinite(grad[3 * e + 1]) || !std::isfinite(grad[3 * e + 2])) {
      const int i = atom_of_node[edge_src[e]], j = atom_of_node[edge_dst[e]];
      bad.push_back(tag ? tag[i] : i);
      bad.push_back(tag ? tag[j] : j);
    }
  error->one(FLERR,
             "pair_style mlmd: step {}: the model gave non-finite forces between atom ID(s) {} ({} local atoms, {} "
             "edges): the configuration is broken or far outside what the model can describe",
             update->ntimestep, id_list(bad), n_local, n_edges);
}

void PairMLMD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const auto t_start = std::chrono::steady_clock::now();
  check_motion();

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int nall = atom->nlocal + atom->nghost;
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cutsq_model = r_cut * r_cut;

  const int nlocal = atom->nlocal;
  node_of_atom.assign(nall, -1);
  atom_of_node.clear();
  edge_src.clear();
  edge_dst.clear();
  edge_vec.clear();
  local_of_tag.clear();
  if (tag)
    for (int i = 0; i < nlocal; i++) local_of_tag[tag[i]] = i;

  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    node_of_atom[i] = static_cast<int>(atom_of_node.size());
    atom_of_node.push_back(i);
  }
  const int n_local = static_cast<int>(atom_of_node.size());
  remember_graph(n_local);
  if (n_local == 0) {    // empty subdomain: no local energy, so no force on anything from this rank
    pvector[2] = pvector[3] = 0.0;
    time_bridge += seconds_since(t_start);
    pvector[0] = time_model;
    pvector[1] = time_bridge;
    return;
  }

  // breadth-first over the neighbour list: nodes [begin, end) are at hop `hop`
  int begin = 0;
  first_edge.clear();
  for (int hop = 0; hop < n_layers; hop++) {
    const int end = static_cast<int>(atom_of_node.size());
    for (int n = begin; n < end; n++) {
      first_edge.push_back(static_cast<long>(edge_src.size()));
      const int i = atom_of_node[n];
      const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
      const int *jlist = firstneigh[i];
      const int jnum = numneigh[i];
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        if (species_of_type[type[j]] < 0) continue;
        const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
        const double rsq = dx * dx + dy * dy + dz * dz;
        if (!(rsq < cutsq_model)) {
          if (std::isnan(rsq))
            error->one(FLERR, "pair_style mlmd: step {}: atom ID {} or {} has a non-finite position",
                       update->ntimestep, tag ? tag[i] : i, tag ? tag[j] : j);
          continue;
        }
        if (rsq < min_distance * min_distance)
          error->one(FLERR, "pair_style mlmd: step {}: atoms {} and {} are {:.4g} Å apart (closer than {} Å)",
                     update->ntimestep, tag ? tag[i] : i, tag ? tag[j] : j, std::sqrt(rsq), min_distance);
        if (node_of_atom[j] < 0) {
          // a ghost that is a periodic image of one of our own atoms is that atom: same species, same
          // environment, so the same features at every layer (and its force belongs to it anyway)
          int owner = -1;
          if (j >= nlocal && tag) {
            auto it = local_of_tag.find(tag[j]);
            if (it != local_of_tag.end()) owner = it->second;
          }
          if (owner >= 0 && node_of_atom[owner] >= 0) {
            node_of_atom[j] = node_of_atom[owner];
          } else {
            node_of_atom[j] = static_cast<int>(atom_of_node.size());
            atom_of_node.push_back(j);
          }
        }
        edge_src.push_back(n);
        edge_dst.push_back(node_of_atom[j]);
        edge_vec.push_back(dx);
        edge_vec.push_back(dy);
        edge_vec.push_back(dz);
      }
    }
    begin = end;
  }
  first_edge.push_back(static_cast<long>(edge_src.size()));
  const int n_nodes = static_cast<int>(atom_of_node.size());
  const int64_t n_edges = static_cast<int64_t>(edge_src.size());
  const int64_t n_mirrored = model_takes_mirrored ? mirror_edges(begin, n_nodes) : 0;

  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor species = torch::empty({n_nodes}, long_opts);
  int64_t *sp = species.data_ptr<int64_t>();
  for (int n = 0; n < n_nodes; n++) sp[n] = species_of_type[type[atom_of_node[n]]];
  torch::Tensor edge_index = torch::empty({2, n_edges}, long_opts);
  int64_t *ei = edge_index.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; e++) {
    ei[e] = edge_src[e];
    ei[n_edges + e] = edge_dst[e];
  }
  torch::Tensor vectors =
      torch::from_blob(edge_vec.data(), {n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat64))
          .to(model->dtype, /*non_blocking=*/false, /*copy=*/true)
          .requires_grad_(true);

  const auto t_model = std::chrono::steady_clock::now();
  torch::Tensor energies, grad;
  try {
    torch::AutoGradMode enable_grad(true);
    // TorchScript's profiling executor re-specialises the graph as the graph sizes change from step to step;
    // the plain executor measured 25-40% faster on small systems and the same on 3,000 atoms (scoped: the
    // process-wide setting is restored afterwards, e.g. for a Python process that also runs the model)
    torch::jit::GraphOptimizerEnabledGuard no_profiling(false);
    std::vector<torch::jit::IValue> inputs{species, edge_index, vectors, static_cast<int64_t>(n_local)};
    if (model_takes_mirrored) inputs.emplace_back(n_mirrored);
    energies = model->module.get_method("local_energies")(inputs).toTensor();
    auto grads = torch::autograd::grad({energies.sum()}, {vectors}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    grad = grads[0];
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: model evaluation failed: {}", first_line(e.what()));
  }
  const double dt_model = seconds_since(t_model);
  time_model += dt_model;

  if (energies.dim() != 1 || energies.size(0) != n_local)
    error->one(FLERR, "pair_style mlmd: model returned {} energies for {} local atoms",
               energies.dim() == 1 ? energies.size(0) : -1, n_local);
  const torch::Tensor e_local = energies.detach().to(torch::kFloat64).contiguous();
  const double *ep = e_local.data_ptr<double>();
  double sum = 0.0;
  for (int n = 0; n < n_local; n++) sum += ep[n];
  torch::Tensor g_cpu;
  const double *g = nullptr;
  if (n_edges > 0 && grad.defined()) {
    g_cpu = grad.to(torch::kFloat64).contiguous();
    g = g_cpu.data_ptr<double>();
  }
  // NaN or inf anywhere stops the run here, before it reaches the positions (one pass over the gradient)
  bool finite = std::isfinite(sum);
  for (int64_t k = 0; finite && g && k < 3 * n_edges; k++) finite = std::isfinite(g[k]);
  if (!finite) fail_non_finite(ep, n_local, g, n_edges);
  if (eflag_either) {
    if (eflag_global) eng_vdwl += sum;
    if (eflag_atom)
      for (int n = 0; n < n_local; n++) eatom[atom_of_node[n]] += ep[n];
  }

  if (g) {
    double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int64_t e = 0; e < n_edges; e++) {
      const int i = atom_of_node[edge_src[e]];
      const int j = atom_of_node[edge_dst[e]];    // for a ghost image of a local atom: that atom
      const double gx = g[3 * e], gy = g[3 * e + 1], gz = g[3 * e + 2];
      const double rx = edge_vec[3 * e], ry = edge_vec[3 * e + 1], rz = edge_vec[3 * e + 2];
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

  time_bridge += seconds_since(t_start) - dt_model;
  pvector[0] = time_model;
  pvector[1] = time_bridge;
  pvector[2] = n_nodes;
  pvector[3] = static_cast<double>(n_edges);
}

/* ----------------------------------------------------------------------
   Committee members (compute mlmd/uncertainty)

   A committee model's local_energies() is the members' mean, which is all the dynamics needs. The spread
   is asked for by compute mlmd/uncertainty on the steps it is invoked (thermo, dump, fix halt, ...), after
   compute() ran on that step: positions, ghosts and atom order are then still those of compute()'s graph,
   so the members are evaluated on that graph, and steps on which nobody asks cost nothing.
   Each member is called on its own (local_energies_of_member) so that its backward pass runs through it
   alone; files without that entry fall back to local_member_energies(), whose rows all share one graph, so
   that each of the K backward passes runs through every member (K times the cost).
------------------------------------------------------------------------- */

void PairMLMD::remember_graph(int n_local)
{
  graph_count++;
  graph_step = update->ntimestep;
  graph_n_local = n_local;
}

int PairMLMD::committee_size() const
{
  if (!model) return 0;
  if (!model->module.hasattr("n_members")) return 1;    // packaged before committees existed
  const auto value = model->module.attr("n_members");
  return value.isInt() ? static_cast<int>(value.toInt()) : 1;
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
  const int n_local = graph_n_local;
  if (n_local == 0) return;
  const int n_members = committee_size();
  const int n_nodes = static_cast<int>(atom_of_node.size());
  const int64_t n_edges = static_cast<int64_t>(edge_src.size());
  const int *type = atom->type;
  const auto t_start = std::chrono::steady_clock::now();

  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor species = torch::empty({n_nodes}, long_opts);
  int64_t *sp = species.data_ptr<int64_t>();
  for (int n = 0; n < n_nodes; n++) sp[n] = species_of_type[type[atom_of_node[n]]];
  torch::Tensor edge_index = torch::empty({2, n_edges}, long_opts);
  int64_t *ei = edge_index.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; e++) {
    ei[e] = edge_src[e];
    ei[n_edges + e] = edge_dst[e];
  }
  torch::Tensor vectors =
      torch::from_blob(edge_vec.data(), {n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat64))
          .to(model->dtype, /*non_blocking=*/false, /*copy=*/true)
          .requires_grad_(true);

  std::vector<torch::Tensor> energies(n_members), grads(n_members);
  const auto t_model = std::chrono::steady_clock::now();
  try {
    torch::AutoGradMode enable_grad(true);
    torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in compute()
    auto one_member = model->module.find_method("local_energies_of_member");
    torch::Tensor all;
    if (!one_member) {
      std::vector<torch::jit::IValue> inputs{species, edge_index, vectors, static_cast<int64_t>(n_local)};
      all = model->module.get_method("local_member_energies")(inputs).toTensor();
      if (all.dim() != 2 || all.size(0) != n_members)
        error->one(FLERR, "pair_style mlmd: local_member_energies() of {} returned {} rows for {} members",
                   model_path, all.dim() == 2 ? all.size(0) : -1, n_members);
    }
    for (int k = 0; k < n_members; k++) {
      if (one_member) {
        std::vector<torch::jit::IValue> inputs{static_cast<int64_t>(k), species, edge_index, vectors,
                                               static_cast<int64_t>(n_local)};
        energies[k] = (*one_member)(inputs).toTensor();
      } else {
        energies[k] = all[k];
      }
      const bool keep = !one_member && k < n_members - 1;    // the shared graph serves the next member
      auto g = torch::autograd::grad({energies[k].sum()}, {vectors}, /*grad_outputs=*/{}, /*retain_graph=*/keep,
                                     /*create_graph=*/false, /*allow_unused=*/true);
      grads[k] = g[0];
    }
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style mlmd: evaluation of the committee members failed: {}",
               first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style mlmd: evaluation of the committee members failed: {}", first_line(e.what()));
  }
  const double dt_model = seconds_since(t_model);
  time_model += dt_model;

  for (int k = 0; k < n_members; k++) {
    if (energies[k].dim() != 1 || energies[k].size(0) != n_local)
      error->one(FLERR, "pair_style mlmd: committee member {} returned {} energies for {} local atoms", k,
                 energies[k].dim() == 1 ? energies[k].size(0) : -1, n_local);
    const torch::Tensor e_cpu = energies[k].detach().to(torch::kFloat64).contiguous();
    const double *ep = e_cpu.data_ptr<double>();
    for (int n = 0; n < n_local; n++) {
      if (!std::isfinite(ep[n]))
        error->one(FLERR, "pair_style mlmd: committee member {} gave a non-finite energy for atom {}", k,
                   atom->tag ? atom->tag[atom_of_node[n]] : atom_of_node[n]);
      member_energy[atom_of_node[n]][k] = ep[n];
    }
    if (n_edges == 0 || !grads[k].defined()) continue;
    const torch::Tensor g_cpu = grads[k].to(torch::kFloat64).contiguous();
    const double *g = g_cpu.data_ptr<double>();
    for (int64_t e = 0; e < n_edges; e++) {
      double *fi = member_force[atom_of_node[edge_src[e]]] + 3 * k;
      double *fj = member_force[atom_of_node[edge_dst[e]]] + 3 * k;
      for (int d = 0; d < 3; d++) {
        fi[d] += g[3 * e + d];
        fj[d] -= g[3 * e + d];
      }
    }
  }
  time_bridge += seconds_since(t_start) - dt_model;
}
