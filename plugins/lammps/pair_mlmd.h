/* pair_style mlmd: an mlmd packaged model (TorchScript) as a LAMMPS pair style.

   pair_style mlmd model.pt
   pair_coeff * * O H            (one element symbol per atom type; NULL skips a type under hybrid)

   write_restart stores the model path, its weights checksum and the element of each atom type, so that
   read_restart alone restores the pair style (under hybrid, LAMMPS stores the settings only: give pair_coeff
   again). A model file that is missing or changed at read_restart leaves the style without a model, with a
   warning; `run` then asks for pair_style/pair_coeff.

   A run stops with an error naming the time step and the atom IDs when the model gives a non-finite energy or
   force, when two atoms come closer than the model's minimum distance, when a position or velocity is not
   finite, or when an atom moves further than the model's cutoff in one time step (see compute()).

   The model is called on the local graph (local atoms first, then the ghosts they need) through its
   `local_energies(species, edge_index, edge_vectors, n_local)` entry; forces and the virial are the
   gradient of the summed local energies with respect to the edge vectors. This header keeps libtorch
   out of its interface (the model lives behind an opaque pointer), so the plugin registration compiles
   without the torch headers. */

#ifndef LMP_PAIR_MLMD_H
#define LMP_PAIR_MLMD_H

#include "pair.h"

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace LAMMPS_NS {

struct MLMDModel;    // defined in pair_mlmd.cpp (holds the torch::jit::Module)

class PairMLMD : public Pair {
 public:
  PairMLMD(class LAMMPS *);
  ~PairMLMD() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void write_restart(FILE *) override;
  void read_restart(FILE *) override;
  void write_restart_settings(FILE *) override;
  void read_restart_settings(FILE *) override;

  // committee models, for compute mlmd/uncertainty (see the end of pair_mlmd.cpp)
  int committee_size() const;    // members of the loaded model: 1 for a single model, 0 with no model
  const std::string &model_file() const { return model_path; }
  bool graph_is_current() const;                   // compute() ran on this time step
  long graph_serial() const { return graph_count; }    // changes with every compute()
  void evaluate_members(double **member_energy, double **member_force);

 protected:
  void allocate();
  void check_units();
  void load_model(const std::string &path);
  void map_types(const std::vector<std::string> &names);
  std::string read_string(FILE *fp);
  void check_motion();
  [[noreturn]] void fail_non_finite(const double *energies, int n_local, const double *grad, int64_t n_edges);

  std::unique_ptr<MLMDModel> model;
  std::string model_path;                // as given to pair_style
  std::string model_abspath;             // what write_restart stores
  std::string model_sha256;              // the card's weights checksum: read_restart checks the file is the same
  std::string restart_problem;           // why read_restart could not restore the model (empty: it could)
  std::vector<std::string> type_element;    // element given to each atom type by pair_coeff ("NULL": none)
  std::vector<std::string> elements;    // the model's elements, species order
  double r_cut;                         // model cutoff (Å)
  int n_layers;                         // message-passing layers
  double interaction_range;             // n_layers * r_cut: how far a local energy sees
  double min_distance;                  // Å: closer pairs are an error (the model's own limit)
  std::vector<int> species_of_type;     // LAMMPS type (1..ntypes) -> model species, -1 = not mine

  // work arrays reused between steps
  std::vector<int> node_of_atom;    // LAMMPS atom index -> graph node, -1 if not in the graph
  std::vector<int> atom_of_node;    // graph node -> LAMMPS atom index
  std::unordered_map<tagint, int> local_of_tag;    // atom ID -> local index, for ghost images
  std::vector<long> edge_src, edge_dst;    // graph nodes of each edge (centre, neighbour)
  std::vector<double> edge_vec;
  std::vector<long> first_edge;    // centre node -> its first edge (edges of a centre are contiguous)
  std::vector<long> pair_of;       // edge -> its reverse edge, -1 if the reverse is not in the graph
  std::vector<long> in_start, in_list, slot, next_same;    // scratch for finding the reverses
  std::vector<long> new_src, new_dst;                      // scratch for reordering
  std::vector<double> new_vec;
  bool model_takes_mirrored = false;    // local_energies accepts n_mirrored (models packaged since it exists)

  long mirror_edges(long n_centers, long n_nodes);

  // cumulative timings exposed through `compute pair mlmd` (pvector):
  // [0] s in the model (forward + backward), [1] s in the bridge (graph build, tensor copies, scatter),
  // [2] nodes and [3] edges of the last graph
  double time_model, time_bridge;

  // the graph of the last compute(): evaluate_members() reuses it on the same step
  void remember_graph(int n_local);
  long graph_count = 0;
  bigint graph_step = -1;
  int graph_n_local = 0;
};

}    // namespace LAMMPS_NS

#endif
