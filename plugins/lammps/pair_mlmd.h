/* pair_style mlmd: an mlmd packaged model (TorchScript) as a LAMMPS pair style.

   pair_style mlmd model.pt
   pair_coeff * * O H            (one element symbol per atom type; NULL skips a type under hybrid)

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

  std::unique_ptr<MLMDModel> model;
  std::string model_path;
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
