/* The compiled (AOTInductor) copy of a packaged model, beside its TorchScript file (mlmd/deploy/compiled.py):
   one function of the graph, derivative included, 1.7-2.2x less CPU than the TorchScript call on one thread.

   Its inputs are the graph's edges in three blocks (mlmd_graph.cpp's mirror() order): species [N], pair_index
   [2, P], pair_vectors [P, 3], reverse_vectors [P, 3], rest_index [2, R], rest_vectors [R, 3]; its outputs the
   energies of every node [N] and dE/d(edge vector) [2P + R, 3]. The program takes N, P, R >= 2: smaller graphs
   are padded with edges longer than the cutoff (exactly zero messages and gradients) and unconnected nodes.
   For several ranks (parallel layers), CompiledLayers runs the same model layer by layer. */

#ifndef MLMD_COMPILED_H
#define MLMD_COMPILED_H

#include "mlmd_graph.h"

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace mlmd {

class Exchange;    // mlmd_model.h

// the model card's "compiled" entry (kind empty: none)
struct CompiledCard {
  std::string kind, file, sha256, torch_version;
  int interface = 0;
  // compiled.layers: the layer-by-layer programs (layers_file empty: none; mlmd_compiled_layers.cpp)
  std::string layers_file, layers_sha256;
  int layers_interface = 0;
};

// "" if this plugin can run the card's compiled code (kind, interface, torch version, MLMD_COMPILED), else why not
std::string compiled_unusable(const CompiledCard &card);
// the path of `file` beside the model if its SHA-256 is `sha256`; "" with why_not set otherwise (what: its name)
std::string checked_file(const std::string &model_path, const std::string &file, const std::string &sha256,
                         const std::string &what, std::string &why_not);

// The graph's edges as the compiled programs take them: pairs, their reverses and the rest (mlmd_graph.cpp's
// mirror() order), each block padded to at least 2 rows with edges 2 r_cut long from node 0 to itself (exact zero
// messages and gradients). Node indices from shift_from up are moved by shift (the layer programs' padding rows
// of local nodes); shift 0 keeps them.
struct EdgeBlocks {
  torch::Tensor pair_index, pair_vectors, reverse_vectors, rest_index, rest_vectors;    // vectors in the dtype
  int64_t pairs = 0, rest = 0;                // the graph's own rows
  int64_t padded_pairs = 0, padded_rest = 0;  // the programs' rows
};
EdgeBlocks padded_edge_blocks(const LocalGraph &g, double r_cut, torch::Dtype dtype, int64_t shift_from = 0,
                              int64_t shift = 0);
// dE/d(edge vector) of the graph's edges from a program's rows [2 padded_pairs + padded_rest, 3] (float64)
void unpadded_edge_gradients(const EdgeBlocks &b, const torch::Tensor &rows, std::vector<double> &grad);

class CompiledProgram {
 public:
  // the program of a model file's card, or nullptr with why_not set (wrong torch, missing or changed file...);
  // MLMD_COMPILED=0 in the environment keeps the TorchScript model
  static std::unique_ptr<CompiledProgram> open(const std::string &model_path, const CompiledCard &card,
                                               double r_cut, torch::Dtype dtype, std::string &why_not);
  ~CompiledProgram();

  // energies of the first n_local nodes and dE/d(edge vector) of every edge, as local_energies + autograd give
  void run(const LocalGraph &g, const std::vector<int64_t> &species, std::vector<double> &energies,
           std::vector<double> &grad);

 private:
  CompiledProgram() = default;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  double r_cut_ = 0.0;
  torch::Dtype dtype_ = torch::kFloat64;
};

// The layer-by-layer programs (mlmd/deploy/compiled_layers.py) for `parallel layers`: per layer a forward and a
// backward program (the last layer: one program with the readout and the gradients), ghost features exchanged
// between them as in Model::layers (mlmd_compiled_layers.cpp).
class CompiledLayers {
 public:
  // the programs of the card's compiled.layers entry, or nullptr with why_not set
  static std::unique_ptr<CompiledLayers> open(const std::string &model_path, const CompiledCard &card, int n_layers,
                                              double r_cut, torch::Dtype dtype, std::string &why_not);
  ~CompiledLayers();

  // energies of the local nodes and dE/d(edge vector) of every edge (g.n_local > 0); collective like
  // Model::layers: the exchanges go through ex
  void run(const LocalGraph &g, const std::vector<int64_t> &species, Exchange &ex, std::vector<double> &energies,
           std::vector<double> &grad);

 private:
  CompiledLayers() = default;
  // program name -> its loader: layer{k}_forward, layer{k}_backward (k < n_layers - 1), layer{n_layers-1}_last
  std::vector<std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> forward_, backward_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> last_;
  double r_cut_ = 0.0;
  torch::Dtype dtype_ = torch::kFloat64;
  bool saves_ = false;    // interface 2: forward programs return saved tensors, backward programs read them
};

}    // namespace mlmd

#endif
