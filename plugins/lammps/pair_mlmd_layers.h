/* The per-layer exchange of node features between MPI ranks (pair_style mlmd parallel layers), through
   LAMMPS's forward and reverse communication of the pair style (see pair_mlmd_layers.cpp). */

#ifndef LMP_PAIR_MLMD_LAYERS_H
#define LMP_PAIR_MLMD_LAYERS_H

#include "mlmd_model.h"
#include "pair_mlmd.h"

namespace LAMMPS_NS {

class LammpsExchange : public mlmd::Exchange {
 public:
  explicit LammpsExchange(PairMLMD *pair) : pair(pair) {}
  torch::Tensor forward(const torch::Tensor &y, int width) override;
  torch::Tensor reverse(const torch::Tensor &g, int width) override;

 private:
  void resize(int width);
  PairMLMD *pair;
};

}    // namespace LAMMPS_NS

#endif
