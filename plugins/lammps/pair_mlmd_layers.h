/* The per-layer exchange of node features between MPI ranks (pair_style mlmd parallel layers; also D3's
   coordination numbers, pair_mlmd_d3.cpp), through LAMMPS's forward and reverse communication of the pair style
   (see pair_mlmd_layers.cpp). */

#ifndef LMP_PAIR_MLMD_LAYERS_H
#define LMP_PAIR_MLMD_LAYERS_H

#include "mlmd_graph.h"
#include "mlmd_model.h"
#include "pair_mlmd.h"

namespace LAMMPS_NS {

class LammpsExchange : public mlmd::Exchange {
 public:
  // the short-range graph, timed into the pair's exchange counters; moves only the rows the other ranks read
  // (one exchange of flags here: collective)
  explicit LammpsExchange(PairMLMD *pair);
  // another graph of the same step (D3's), timed into wall and cpu
  LammpsExchange(PairMLMD *pair, const mlmd::LocalGraph &graph, double &wall, double &cpu) :
      pair(pair), graph(graph), wall(wall), cpu(cpu) {}
  torch::Tensor forward(const torch::Tensor &y, int width) override;
  torch::Tensor reverse(const torch::Tensor &g, int width) override;

 private:
  // comm buffer rows for `width` values of this dtype; returns the bytes of a row
  size_t resize(int width, torch::ScalarType dtype);
  // comm_need and comm_swap_need for this graph: its ghost nodes' rows, and the ghosts passed on to them
  void mark_needed_rows();
  bool masked = false;
  PairMLMD *pair;
  const mlmd::LocalGraph &graph;
  double &wall, &cpu;
};

}    // namespace LAMMPS_NS

#endif
