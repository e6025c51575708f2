/* compute ID group mlmd/domain: how far the configuration is from the training domain of the model that
   pair_style mlmd runs (the record on its card; see pair_mlmd.h, keyword domain).

   compute         dom all mlmd/domain
   variable        outside equal c_dom
   fix             stop all halt 1 v_outside > 0.0 error soft     # end the run when it leaves the domain
   thermo_style    custom step pe c_dom c_dom[1] c_dom[3]

     global scalar  0 inside the domain; outside, max(ratio) - 1 over [1] and [2] (0.25: 25% past a limit)
     global vector  [1] the largest ratio limit / distance over the pairs within the cutoff (> 1: a pair closer
                        than 0.8 x the shortest training distance of its elements, or the card's factor)
                    [2] max(low / v, v / high) for the volume per atom v and the limits [low, high] from the
                        training cells (> 1: outside; 0 when not checked: not periodic in x, y and z, no periodic
                        training data, or other styles' atoms in the box)
                    [3] the volume per atom v (Å^3; 0 unless periodic in x, y and z)
   All intensive. The group is ignored (the whole configuration is measured). Needs a model card with the
   record (models packaged from their checkpoint by an mlmd that writes it); the values are those of the step's
   graph, so the compute can be used on steps on which forces were computed. Cost: one pass over the edges and
   one MPI_Allreduce per invocation (shared with the pair style's own check on the same step). */

#ifndef LMP_COMPUTE_MLMD_DOMAIN_H
#define LMP_COMPUTE_MLMD_DOMAIN_H

#include "compute.h"

namespace LAMMPS_NS {

class PairMLMD;

class ComputeMLMDDomain : public Compute {
 public:
  ComputeMLMDDomain(class LAMMPS *, int, char **);
  ~ComputeMLMDDomain() override;
  void init() override;
  double compute_scalar() override;
  void compute_vector() override;

 private:
  void evaluate();
  PairMLMD *pair;
  double values[3];
};

}    // namespace LAMMPS_NS

#endif
