/* The tensors of a LocalGraph for a model call and the conversions back, shared by the plugin's evaluations
   (mlmd_model.cpp: the short-range model; mlmd_dispersion.cpp: D3). Defined in mlmd_model.cpp. */

#ifndef MLMD_TENSORS_H
#define MLMD_TENSORS_H

#include "mlmd_graph.h"
#include "mlmd_model.h"

#include <torch/script.h>

#include <cstdint>
#include <vector>

namespace mlmd {

struct GraphTensors {
  torch::Tensor species, edge_index, vectors;    // vectors: a leaf that requires grad, in the model's dtype
};

GraphTensors graph_tensors(const LocalGraph &g, const std::vector<int64_t> &species, torch::Dtype dtype);
// energies and dE/d(edge vector) as an Evaluation (grad undefined: zeros)
Evaluation finish(const torch::Tensor &energies, const torch::Tensor &grad, int64_t n_edges);
std::vector<double> to_vector(const torch::Tensor &t);    // float64 copy

}    // namespace mlmd

#endif
