/* An mlmd packaged model as the LAMMPS plugin sees it: the TorchScript module, its model card (parsed in one
   place, parse_card) and what it can do, and the calls that evaluate it on a LocalGraph. No LAMMPS classes
   here: errors are thrown as ModelError with a message for the user, the pair style adds its prefix.

   Two ways to evaluate a message-passing model on a rank's graph:
   - one call (local_energies): the graph must hold every atom within n_layers * r_cut of a local atom (a halo
     of ghosts), or be the periodic graph itself (one rank, images folded);
   - layer by layer (layer_embed / layer_interaction / layer_readout): the graph holds only the local atoms'
     neighbours; between layers the caller fills the ghost nodes' features (forward communication), and in the
     backward pass sends the ghosts' feature gradients to their owners (reverse communication), through an
     Exchange it provides. */

#ifndef MLMD_MODEL_H
#define MLMD_MODEL_H

#include "mlmd_compiled.h"
#include "mlmd_domain.h"
#include "mlmd_graph.h"
#include "mlmd_text.h"

#include <torch/script.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlmd {

struct ModelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr double DEFAULT_MIN_DISTANCE = 0.1;    // Å, for cards without min_distance (the Python default)

// what the plugin reads of the model card (mlmd/deploy/card.py writes it; key names as there)
struct Card {
  int format_version = 0;
  std::string mlmd_version;
  std::string weights_sha256;
  std::vector<std::string> elements;
  std::vector<int> atomic_numbers;    // empty: not on the card (the elements say it)
  double r_cut = 0.0;
  int n_layers = 0;
  double interaction_range = 0.0;
  std::string dtype;
  std::string charges_mode = "none";
  double min_distance = DEFAULT_MIN_DISTANCE;
  bool min_distance_listed = false;    // on the card (older cards: the module's value, else the default)
  std::vector<std::string> entry_points;    // the methods the card lists (an older card's: the module's)
  bool entry_points_listed = false;          // the card has the list (older cards do not)
  int n_members = 1;                        // older cards lack it: a single model
  CompiledCard compiled;                    // a compiled copy beside the file (kind empty: none)
  std::string training_domain_json;         // the record as JSON ("": not on the card)
  TrainingDomain domain;                    // parsed and checked by load() (present false: no record)
  // long_range.dispersion (D3): present on the card, its cutoffs (Å), tail correction, three-body term
  bool dispersion = false;
  double d3_cutoff = 0.0, d3_cutoff_cn = 0.0, d3_cutoff_three_body = 0.0;
  bool d3_tail = false, d3_three_body = false;
  // long_range.electrostatics (read for predicted charges, which the plugin sums itself: pair_mlmd_charges.cpp)
  std::string elec_mode, elec_method;
  double elec_r_cut = 0.0, elec_smearing = 0.0, elec_lr_wavelength = 0.0, elec_coulomb_constant = 0.0;
  double elec_accuracy = 1e-4;    // the promised RMS force error / (k_e e^2/Å^2) (the card's default when absent)
  bool elec_background = false;    // neutralizing_background
  int elec_ewald_max_atoms = 0;
};

// the per-layer exchange of ghost features, provided by the engine
class Exchange {
 public:
  virtual ~Exchange() = default;
  // y: the local nodes' features [n_local, width]; returns the ghost nodes' [n_ghost, width]. float64 or float32
  // (then the values travel as float32: half the bytes, no conversions), the result in y's dtype; every rank must
  // pass the same dtype to an exchange (LAMMPS's buffers are sized by it)
  virtual torch::Tensor forward(const torch::Tensor &y, int width) = 0;
  // g: gradients of every node's features [n_nodes, width]; returns, for each local node, its own row plus the
  // gradients of its ghost copies on every other rank [n_local, width] (dtypes as forward)
  virtual torch::Tensor reverse(const torch::Tensor &g, int width) = 0;
};

// per-local-node energies and dE/d(edge vector) of a graph
struct Evaluation {
  std::vector<double> energies;    // [n_local]
  std::vector<double> grad;        // [3 * n_edges] (zeros where the energy does not depend on an edge)
  std::vector<double> ghost_energies;    // D3 only (three-body, whole pairs): the ghost nodes' shares [n_nodes - n_local]
  std::vector<double> tail;        // D3 only: the tail-correction part of energies (empty without it), whose
                                   // 1/V dependence the engine adds to the virial
};

class Model {
 public:
  // load, read and check the card, verify the weights against the card's checksum and the card against the
  // module's own attributes (throws ModelError)
  static std::unique_ptr<Model> load(const std::string &path, int plugin_format_version);

  const Card &card() const { return card_; }
  const std::vector<int> &atomic_numbers() const { return atomic_numbers_; }    // of each species
  torch::Dtype dtype() const { return dtype_; }
  int n_members() const { return n_members_; }
  bool layered() const { return layered_; }
  bool takes_mirrored() const { return takes_mirrored_; }                    // has the layer-by-layer entries
  // layer_interaction in two halves (layer_messages, layer_update): layers(..., split = true) may then run each
  // pair of atoms on one rank only, with the graph from LocalGraph::split_ghost_pairs()
  bool split_layers() const { return split_layers_; }
  int max_feature_width() const { return max_width_; }        // largest width exchanged (over members, layers)
  bool runs_compiled() const { return compiled_ != nullptr; }  // one_call runs the compiled copy
  const std::string &compiled_note() const { return compiled_note_; }    // why not, if not
  bool runs_compiled_layers() const { return compiled_layers_ != nullptr; }    // layers() runs compiled programs
  const std::string &compiled_layers_note() const { return compiled_layers_note_; }    // why not, if not

  // One call on a graph that holds every atom a local energy depends on. member -1: what MD runs on (the
  // committee mean for a committee).
  Evaluation one_call(const LocalGraph &g, const std::vector<int64_t> &species, int member);
  // Layer by layer, exchanging ghost features through ex; member -1: the committee mean. Collective: every
  // rank calls it the same number of times with the same member and split (an empty graph too).
  // split (needs split_layers()): the graph's edges are all pairs, those with a ghost end computed on this rank
  // only (split_ghost_pairs); the summed messages into ghost nodes go to their owners before each update, and
  // the owners' message gradients come back to the ghost copies in the backward pass.
  Evaluation layers(const LocalGraph &g, const std::vector<int64_t> &species, int member, Exchange &ex,
                    bool split = false);

  // The model's own D3 runs on the rank's graph (card: long_range.dispersion and the local_dispersion entries;
  // with the three-body term also local_dispersion_atm): energies of the local nodes and dE/d(edge vector). The
  // graph is a full list out to d3_reach() in which every node within d3_cutoff of a local node is a centre with
  // all its edges.
  bool has_dispersion() const { return dispersion_; }
  bool has_three_body() const { return dispersion_ && card_.d3_three_body; }
  double d3_reach() const
  {
    return std::max({card_.d3_cutoff, card_.d3_cutoff_cn, has_three_body() ? card_.d3_cutoff_three_body : 0.0});
  }
  // volume > 0: add the tail correction (3D-periodic cell of that volume, Å^3); sum_over_ranks adds a vector
  // over every MPI rank in place and makes the call collective (every rank calls it once, an empty graph too)
  Evaluation dispersion(const LocalGraph &g, const std::vector<int64_t> &species, double volume,
                        const std::function<void(std::vector<double> &)> &sum_over_ranks);
  // The same D3 split at the coordination numbers (card: local_dispersion_cn / local_dispersion_given_cn): the
  // graph holds only the local nodes' edges out to d3_reach(); the local atoms' CN go to their ghost copies and
  // the gradients of the ghosts' CN back to their owners through ex (width 1). Collective as dispersion(), and
  // the exchanges too (mlmd_dispersion.cpp). With ghost_pairs (card: local_dispersion_whole_pairs, see
  // has_dispersion_whole_pairs), each pair across ranks on one rank: ghost_pairs lists the unpaired edges whose
  // pairs this rank computes (LocalGraph::ghost_pairs), counted whole with the local pairs; ghost_energies then
  // holds the ghost nodes' halves, for their owners
  bool has_dispersion_cn() const;
  bool has_dispersion_whole_pairs() const;
  // The whole-pairs split with the model's derivatives as values (card: local_dispersion_cn_slopes and
  // local_dispersion_by_hand): no autograd graph; the plugin chains dE/dCN onto the edges (mlmd_dispersion.cpp)
  bool has_dispersion_by_hand() const;
  Evaluation dispersion_by_hand(const LocalGraph &g, const std::vector<int64_t> &species, double volume,
                                const std::function<void(std::vector<double> &)> &sum_over_ranks, Exchange &ex,
                                const std::vector<int64_t> &ghost_pairs);
  Evaluation dispersion_exchanged(const LocalGraph &g, const std::vector<int64_t> &species, double volume,
                                  const std::function<void(std::vector<double> &)> &sum_over_ranks, Exchange &ex,
                                  const std::vector<int64_t> *ghost_pairs = nullptr);
  // D3's three-body (ATM) term (mlmd_dispersion.cpp): the triples at the local nodes of a graph whose local
  // nodes have every edge out to d3_reach(), given every node's CN (the ghosts' through ex, which may be null
  // when the graph has no ghost node) and atom ID; energies of the local nodes and ghost_energies (their owners').
  // Collective when ex is given (every rank calls it, an empty graph too)
  Evaluation dispersion_three_body(const LocalGraph &g, const std::vector<int64_t> &species,
                                   const std::vector<int64_t> &atom_ids, Exchange *ex);

  // Predicted charges (card charges_mode "predicted" and the local_charges entry; mlmd_model_charges.cpp). The graph
  // holds every atom within (n_layers + 1) * r_cut of a local node (the charge transfer reads the neighbours'
  // electronegativities). charges_forward gives the local nodes' short-range energies, raw charges and softnesses
  // and keeps the autograd graph; charges_backward(a, b) then gives those energies and the gradient with respect
  // to the edge vectors of sum_i energies_i + a_i raw_i + b_i softness_i (the engine's charge-response weights).
  bool predicts_charges() const { return charges_; }
  void charges_forward(const LocalGraph &g, const std::vector<int64_t> &species, std::vector<double> &energies,
                       std::vector<double> &raw, std::vector<double> &softness);
  Evaluation charges_backward(const std::vector<double> &a, const std::vector<double> &b);

 private:
  bool provides(const std::string &entry) const;
  void check_card_against_module(const std::string &path);
  void verify_weights(const std::string &path) const;
  Evaluation layers_of_member(const LocalGraph &g, const torch::Tensor &species, const torch::Tensor &edge_index,
                              const torch::Tensor &vectors, int member, Exchange &ex);
  Evaluation split_layers_of_member(const LocalGraph &g, const torch::Tensor &species,
                                    const torch::Tensor &edge_index, const torch::Tensor &vectors, int member,
                                    Exchange &ex);

  torch::jit::Module module_;
  std::unique_ptr<CompiledProgram> compiled_;
  std::string compiled_note_;
  std::unique_ptr<CompiledLayers> compiled_layers_;
  std::string compiled_layers_note_;
  Card card_;
  std::vector<int> atomic_numbers_;
  torch::Dtype dtype_ = torch::kFloat64;
  int n_members_ = 1;
  bool takes_mirrored_ = false;
  bool layered_ = false;
  bool split_layers_ = false;
  bool member_entry_ = false;
  bool dispersion_ = false;    // D3 inside the pair style (see has_dispersion)    // local_energies_of_member (committees packaged since it exists)
  bool charges_ = false;    // predicted charges (see predicts_charges)
  // what charges_forward keeps for charges_backward
  torch::Tensor ch_vectors_, ch_energies_, ch_raw_, ch_softness_;
  long ch_edges_ = 0;
  int max_width_ = 0;
  std::vector<std::vector<int64_t>> widths_;    // per member: widths entering each layer, then the output's
  std::vector<std::vector<int64_t>> message_widths_;    // per member: each layer's summed messages (split)
};

Card parse_card(const std::string &json_text);    // throws ModelError naming the missing or invalid field

// mlmd.deploy.export.weights_sha256 of a module: SHA-256 over its parameters and buffers (state_dict()) in name
// order, each as its name's bytes then the tensor's raw bytes (contiguous, CPU)
std::string weights_sha256(const torch::jit::Module &module);


}    // namespace mlmd

#endif
