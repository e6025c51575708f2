/* pair_style mlmd: an mlmd packaged model (TorchScript) as a LAMMPS pair style.

   pair_style mlmd model.pt [parallel auto|layers|halo] [check_masses yes|no] [domain warn|stop|off]
                                                                                  (keywords in any order)
   pair_coeff * * O H            (one element symbol per atom type; NULL skips a type under hybrid)

   Loading checks the weights against the model card's checksum (weights_sha256) and the card against the
   module's own attributes (r_cut, n_layers, interaction_range, atomic_numbers, n_members, dtype).

   check_masses (default yes): at each run, the mass of every atom type given an element (every atom's, with
             per-atom masses) must be within the larger of 5% and 0.5 u of the element's standard atomic weight
             (mlmd_elements.cpp): a pair_coeff line in another order than the data file's types stops the run.
             `no` for isotopes or repartitioned masses. Stored by write_restart.

   domain (default warn): every step is compared with the training domain the model card records
             (mlmd_domain.h: a pair closer than 0.8 x the shortest distance of its element pair in the training
             data, a periodic cell whose volume per atom is outside [0.8 x smallest, 1.25 x largest] of the training
             cells'; the card holds the factors). warn: one warning per run naming the step and the atom IDs of the
             closest pair (then no more checks in that run); stop: an error instead; off: no check. A model file
             without the record (packaged before it) gets one line in the log and no check. compute mlmd/domain
             gives the same measure to thermo output and fix halt. Stored by write_restart.

   parallel (how MPI ranks share a message-passing model's work; the default auto chooses):
     layers  each rank computes only its own atoms' messages, layer by layer; the ghost atoms' features are
             exchanged before each layer (forward communication) and their gradients sent back to the owners
             in the backward pass (reverse communication). Ghosts out to r_cut + skin. Needs a model file
             with the layer entry points (packaged by mlmd 0.2 or later; `mlmd repackage` adds them).
     halo    every rank evaluates the model in one call on a halo of ghosts out to n_layers * r_cut + skin
             (ranks repeat the work of the halo; the only way for older model files).
     auto    one call on one rank (every ghost is then a periodic image of a local atom, so the graph is the
             periodic graph with no ghost work) and for one-shell models (n_layers 1); layers on several
             ranks; halo for older files.

   D3 dispersion: a model whose card has long_range.dispersion (two-body D3(BJ), any damping parameters, smooth
   cutoff and tail correction) and the local_dispersion entries gets its own D3 here, on a second graph out to
   the D3 cutoffs (pair_mlmd_d3.cpp): do not add pair_style dispersion/d3 (refused). Older files keep
   dispersion/d3 through hybrid/overlay (mlmd lammps-input writes the lines for either).

   Predicted charges: a model whose card's electrostatics mode is "predicted" (and that has the local_charges
   entry) gets its charges every step and their Coulomb energy by its own Ewald sum here (pair_mlmd_charges.cpp):
   no kspace_style and no coul pair style (both refused), a box periodic in x, y and z, total charge 0; the
   charges go to atom->q when the atom style has them. On several ranks such a model runs as parallel halo with
   ghosts to (n_layers + 1) * r_cut (the charge transfer reads the neighbours' electronegativities).

   write_restart stores the model path, its weights checksum and the element of each atom type, so that
   read_restart alone restores the pair style (under hybrid, LAMMPS stores the settings only: give pair_coeff
   again). A model file that is missing, changed or no longer loads at read_restart leaves the style without a
   model, with a warning; `run` then asks for pair_style/pair_coeff. check_masses, domain and parallel are stored
   (restarts written before parallel was stored give auto).

   A system with bonds whose special_bonds settings make LAMMPS leave bonded pairs of two mlmd atoms out of the
   neighbour list is refused before the first force (setup()): the model must see every pair within r_cut.

   A run stops with an error naming the time step and the atom IDs when the model gives a non-finite energy or
   force, when two atoms come closer than the model's minimum distance, when a position or velocity is not
   finite, or when an atom moves further than the model's cutoff in one time step.

   Layout of the plugin: mlmd_graph.* builds the rank's graph from the neighbour list (ghost walk, image
   folding, edge mirroring), mlmd_model.* loads the model and its card and evaluates it (one call or layer by
   layer), this file is the LAMMPS side (settings, restarts, scattering forces and virials), and
   pair_mlmd_layers.cpp the per-layer communication. This header keeps libtorch out of its interface, so the
   plugin registration compiles without the torch headers. */

#ifndef LMP_PAIR_MLMD_H
#define LMP_PAIR_MLMD_H

#include "pair.h"

#include "mlmd_ewald.h"
#include "mlmd_graph.h"

#include <memory>
#include <string>
#include <vector>

namespace mlmd {
class Model;
struct Evaluation;
}    // namespace mlmd

namespace LAMMPS_NS {

class PairMLMD : public Pair {
 public:
  PairMLMD(class LAMMPS *);
  ~PairMLMD() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  void setup() override;
  double init_one(int, int) override;
  void write_restart(FILE *) override;
  void read_restart(FILE *) override;
  void write_restart_settings(FILE *) override;
  void read_restart_settings(FILE *) override;
  // the per-layer exchange of node features (parallel layers)
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // committee models, for compute mlmd/uncertainty
  int committee_size() const;    // members of the loaded model: 1 for a single model, 0 with no model
  const std::string &model_file() const { return model_path; }
  bool graph_is_current() const;                      // compute() ran on this time step
  long graph_serial() const { return graph_count; }    // changes with every compute()
  void evaluate_members(double **member_energy, double **member_force);    // collective

  // the training domain, for compute mlmd/domain (pair_mlmd_domain.cpp)
  bool has_training_domain() const;
  // collective, on a step compute() ran: [0] the largest ratio limit / distance over pairs within the cutoff (> 1:
  // a pair closer than its limit), [1] volume ratio max(low / v, v / high) (> 1: outside; 0: not checked),
  // [2] the volume per atom v (Å^3; 0 unless periodic in x, y and z)
  const double *domain_values();

 protected:
  enum class Parallel { AUTO, LAYERS, HALO };    // what the user asked for
  enum class Mode { LOCAL, LAYERS, HALO };       // what init_style chose (LOCAL: one call, ghosts to r_cut)
  enum class DomainMode { WARN = 0, STOP = 1, OFF = 2 };    // the domain keyword (values stored in restarts)

  void allocate();
  void check_units();
  std::unique_ptr<mlmd::Model> open_model(const std::string &path, std::string &problem);
  void use_model(std::unique_ptr<mlmd::Model> m, const std::string &path);
  void check_type_masses();
  void check_special_bonds();
  void check_exclusions();    // neigh_modify exclude that could remove pairs of this style's atoms
  void map_types(const std::vector<std::string> &names);
  std::string read_string(FILE *fp);
  void check_motion();
  void choose_mode();
  void build_graph();
  // the short-range part's, D3's or the real-space Coulomb's evaluation on graph g: energies (coulomb: tallied as
  // ecoul, else evdwl), forces and virials (pair_mlmd.cpp)
  void accumulate(const mlmd::LocalGraph &g, const mlmd::Evaluation &ev, bool coulomb = false);
  // D3 inside the pair style (pair_mlmd_d3.cpp): the ghost cutoff and neighbour list it needs, and its step
  void init_dispersion(bool &ghost_list, double &ghost_cut);
  double compute_dispersion();    // returns its wall time (s)
  void compute_three_body();      // D3's ATM term, inside compute_dispersion()
  void add_ghost_energies(const mlmd::LocalGraph &g, const mlmd::Evaluation &ev);    // D3's ghost nodes' shares
  // predicted charges and their Ewald sum inside the pair style (pair_mlmd_charges.cpp): the checks at init, and
  // the step (ev: the short-range graph's evaluation with the charge response; returns the Ewald part's wall time)
  void init_charges();
  double compute_charges(mlmd::Evaluation &ev);
  // once per run, with the first step's charges: tune the Ewald parameters to them (ewald tune, the first run
  // only) or check the promised force accuracy (a warning naming the estimate, the target and the fix)
  void prepare_ewald(const std::vector<double> &q);
  mlmd::Evaluation evaluate(int member);    // member -1: what MD runs on; collective in mode LAYERS
  [[noreturn]] void fail_non_finite(const mlmd::Evaluation &ev);

  std::unique_ptr<mlmd::Model> model;
  std::unique_ptr<mlmd::LocalGraph> graph;
  // the neighbour list cut to r_cut + skin for `graph` when the list reaches further (D3, real-space Coulomb), kept
  // from one LAMMPS rebuild (neighbor->ncalls) to the next; not in the halo mode (its walk reads the ghosts' lists)
  mlmd::TrimmedNeighbours short_list;
  bool trim_short = false;
  bigint short_list_calls = -1;
  double list_cutoff() const;    // the neighbour list's cutoff without the skin (init_one's)
  std::unique_ptr<mlmd::LocalGraph> d3graph;    // D3's graph, out to its own cutoffs (pair_mlmd_d3.cpp)
  std::vector<int64_t> d3_ghost_pairs;    // d3graph's edges to ghosts whose pairs this rank computes (d3_whole_pairs)
  std::vector<int64_t> d3_species;
  std::vector<int64_t> d3_ids;    // atom IDs of the D3 graph's nodes (the three-body term)
  std::unique_ptr<mlmd::LocalGraph> qgraph;    // real-space Coulomb graph of predicted charges, to the Ewald cutoff
  mlmd::EwaldParameters ewald;                 // from the card (predicted charges), or tuned (ewald tune)
  bool ewald_tune = false;                     // the ewald keyword: tune (true) or model
  bool ewald_tuned = false;                    // ewald tune: done (parameters kept from then on)
  bool ewald_pending = false;                  // prepare_ewald due at the next step (set at every init)
  long n_kvectors = 0;                         // of the last Ewald sum
  bool d3_halo = false;    // D3's graph holds the ghosts within its two-body cutoff as centres (MPI)
  bool d3_exchange = false;    // D3 split at the CN: ghosts' CN and their gradients exchanged (MPI)
  bool d3_whole_pairs = false;    // and each pair across ranks on one of its ranks (d3_ghost_pairs)
  bool d3_by_hand = false;    // the model's D3 derivatives as values, chained here (Model::dispersion_by_hand)
  std::vector<int64_t> node_species;    // species of each graph node
  std::string model_path;                // as given to pair_style
  std::string model_abspath;             // what write_restart stores
  std::string model_sha256;              // the card's weights checksum: read_restart checks the file is the same
  std::string restart_problem;           // why read_restart could not restore the model (empty: it could)
  std::vector<std::string> type_element;    // element given to each atom type by pair_coeff ("NULL": none)
  std::vector<int> species_of_type;         // LAMMPS type (1..ntypes) -> model species, -1 = not mine
  double r_cut;                             // model cutoff (Å)
  Parallel parallel = Parallel::AUTO;
  bool check_masses = true;            // init_style compares each type's mass with its element's
  bool specials_checked = false;       // check_special_bonds() ran since the last init_style
  Mode mode = Mode::HALO;
  bool split_pairs = false;    // LAYERS: each pair across subdomains on one rank (Model::layers split)

  // the training domain (pair_mlmd_domain.cpp)
  void use_domain();              // the limits of a newly loaded model
  void count_domain_atoms();      // init_style: are all atoms this style's (then the volume per atom is checked)
  void reduce_domain();           // collective: domain_vals and domain_pair for this step's graph
  void check_domain();            // compute(): warn once or stop
  DomainMode domain_mode = DomainMode::WARN;
  bool domain_warned = false;                 // this run has warned: no more checks until the next init
  std::vector<double> domain_inv_limit_sq;    // 1 / limit^2 per species pair
  bigint domain_atoms = 0;                    // atoms this style handles, counted at init
  long domain_serial = -1;                    // graph the values below belong to
  double domain_vals[3] = {0.0, 0.0, 0.0};
  std::string domain_pair;                    // the closest pair when it is below its limit (every rank)

  // per-atom buffer of the exchange (see pair_mlmd_layers.cpp): comm_width doubles per LAMMPS atom, holding
  // float32 values two to a double when comm_float32 (the last half of an odd row: padding)
  std::vector<double> comm_buf;
  int comm_width = 0;
  bool comm_float32 = false;
  // which rows the short-range graph's exchanges move (LammpsExchange::mark_needed_rows): per LAMMPS atom, whether
  // this rank reads its row (a ghost node, or a ghost it passes on to a rank that reads it); per swap, keyed by its
  // send list, which of the atoms sent the receiving rank reads. ALL: every row (D3's exchanges, comm tiled)
  enum class CommRows { ALL, NEEDED, NEED_FLAGS };
  CommRows comm_rows = CommRows::ALL;
  std::vector<char> comm_need;
  std::vector<std::pair<const int *, std::vector<char>>> comm_swap_need;
  const std::vector<char> &swap_need(const int *list) const;
  bool rows_logged = false;    // the first marking of a run says how many ghost rows the exchanges move
  friend class LammpsExchange;

  // cumulative timings exposed through `compute pair mlmd` (pvector):
  // [0] s in the model (forward + backward, with the exchanges between layers), [1] s in the bridge (graph
  // build, tensor copies, scatter), [2] nodes and [3] edges of the last graph, [4] the mode (0 local, 1
  // layers, 2 halo), [5] s in the exchanges between layers (part of [0]), [6] CPU s of this rank in the
  // model, exchanges excluded (MD steps only; a loaded machine does not change it), [7] CPU s of this rank in
  // D3 (graph and model; 0 without D3), [8] CPU s of this rank in the training-domain check
  // (pair_mlmd_domain.cpp; part of [1]), [9] CPU s of this rank in the Ewald sum of predicted charges
  // (pair_mlmd_charges.cpp; 0 without them)
  double time_model, time_bridge;
  double cpu_d3 = 0.0, cpu_domain = 0.0, cpu_ewald = 0.0;
  double time_exchange = 0.0, cpu_exchange = 0.0, cpu_model = 0.0;

  // the graph of the last compute(): evaluate_members() reuses it on the same step
  void remember_graph();
  long graph_count = 0;
  bigint graph_step = -1;
};

}    // namespace LAMMPS_NS

#endif
