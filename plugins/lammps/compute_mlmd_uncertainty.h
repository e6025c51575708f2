/* compute ID group mlmd/uncertainty: the disagreement of an mlmd committee model during a LAMMPS run.

   compute         unc all mlmd/uncertainty
   thermo_style    custom step pe c_unc[1] c_unc[2]
   variable        fmax equal c_unc[2]
   fix             stop all halt 10 v_fmax > 0.5 error soft
   dump            d all custom 100 unc.dump id type x y z c_unc[1] c_unc[2]

   Needs pair_style mlmd with a committee model (mlmd train --ensemble K; K >= 2 members). With K members
   k = 1..K, per-atom member energies e_i^k and member forces F_i^k (the dynamics runs on their means):
     global vector  [1] energy std (eV): population std over k of sum_{i in group} e_i^k (the total
                        energy's spread for group all)
                    [2] max over the group's atoms of the per-atom force std (eV/Å)
                    [3] mean over the group's atoms of the per-atom force std (eV/Å)
     global scalar  = [2], the max per-atom force std: intensive, the usual gate for active learning
     per-atom array [1] force std sqrt((1/K) sum_k |F_i^k - mean_k F_i^k|^2) (eV/Å)
                    [2] energy std of e_i^k (eV); both 0 for atoms outside the group
   [1] is extensive (thermo_modify norm yes divides it by the number of atoms), [2] and [3] are intensive.
   The same quantities as mlmd.engines.ase.MLMDCalculator's energy_std, forces_std and energies_std.

   Cost: the members are evaluated (forward and backward, one member at a time) only on steps where the
   compute is invoked, on the graph pair_style mlmd built for that step; other steps cost nothing. */

#ifndef LMP_COMPUTE_MLMD_UNCERTAINTY_H
#define LMP_COMPUTE_MLMD_UNCERTAINTY_H

#include "compute.h"

namespace LAMMPS_NS {

class PairMLMD;

class ComputeMLMDUncertainty : public Compute {
 public:
  ComputeMLMDUncertainty(class LAMMPS *, int, char **);
  ~ComputeMLMDUncertainty() override;
  void init() override;
  double compute_scalar() override;
  void compute_vector() override;
  void compute_peratom() override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

 private:
  void evaluate();
  void grow();

  PairMLMD *pair;
  int n_members;
  long evaluated_serial;    // the pair's graph the values below belong to
  bigint evaluated_step;
  int nmax;
  double **member_force;     // [atom][3 * member], local and ghost atoms
  double **member_energy;    // [atom][member], local atoms
  double **peratom;          // [atom][2]: force std, energy std
  double values[3];
};

}    // namespace LAMMPS_NS

#endif
