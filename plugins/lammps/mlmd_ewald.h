/* The Ewald sum of a predicted-charge model, as the packaged model computes it in ASE and OpenMM (torch-pme's
   EwaldCalculator with mlmd's parameters), split so that each MPI rank sums its own atoms' share. No LAMMPS and
   no torch here.

   E = k_e sum_{i<j, images} q_i q_j / r_ij with Gaussian splitting of width sigma (alpha = 1 / (sqrt(2) sigma)):
   - real space: pairs within r_cut, E_i = (k_e / 2) q_i sum_j q_j erfc(alpha r_ij) / r_ij on a graph whose local
     nodes are the centres (every image within r_cut is an edge);
   - reciprocal space: S(k) = sum_j q_j exp(i k.r_j) over every atom (each rank its own, then a sum over ranks),
     E_i = q_i / (2V) sum_k G(k) Re(conj(S(k)) exp(i k.r_i)), G(k) = 4 pi k_e exp(-sigma^2 k^2 / 2) / k^2, over
     the k-vectors torch-pme takes: k = sum_a m_a b_a with m_a in [-floor(n_a/2), ceil(n_a/2) - 1] (FFT
     frequencies), n_a = ceil(|a_a| / lr_wavelength), k = 0 left out;
   - self: E_i = -k_e alpha q_i^2 / sqrt(pi).
   phi_i = dE/dq_i (the electrostatic potential at atom i with its self term) is what the charge response needs. */

#ifndef MLMD_EWALD_H
#define MLMD_EWALD_H

#include "mlmd_graph.h"

#include <functional>
#include <vector>

namespace mlmd {

struct EwaldParameters {
  double coulomb_constant = 0.0;    // eV Å / e^2
  double smearing = 0.0;            // sigma (Å)
  double lr_wavelength = 0.0;       // Å: n_a = ceil(|a_a| / lr_wavelength) k-points along reciprocal vector a
  double r_cut = 0.0;               // real-space cutoff (Å)
  double alpha() const;
};

// One rank's share of the real-space part on graph g (centres: its local nodes). q: charge of every node.
struct RealSpace {
  std::vector<double> phi;         // [n_local] potential at each local node from its real-space pairs
  std::vector<double> energies;    // [n_local] q_i phi_i / 2
  std::vector<double> grad;        // [3 * n_edges] dE/d(edge vector) at fixed charges
};
RealSpace real_space(const EwaldParameters &p, const LocalGraph &g, const std::vector<double> &q);

// One rank's share of the reciprocal part for its n atoms at positions x (3n, Å) with charges q. cell: rows are
// the lattice vectors (Å). sum_over_ranks adds a vector over every rank in place (collective: every rank calls
// reciprocal once per step, with n = 0 too).
struct Reciprocal {
  std::vector<double> phi;            // [n]
  std::vector<double> energies;       // [n] q_i phi_i / 2
  std::vector<double> forces;         // [3n] -dE/dr_i at fixed charges
  double virial[6] = {0, 0, 0, 0, 0, 0};    // this rank's share of -dE/d(strain), xx yy zz xy xz yz
  std::vector<double> atom_virial;    // [6n] per-atom shares (only when asked)
  long n_kvectors = 0;
};
Reciprocal reciprocal(const EwaldParameters &p, const double cell[3][3], const std::vector<double> &x,
                      const std::vector<double> &q, bool per_atom_virial,
                      const std::function<void(std::vector<double> &)> &sum_over_ranks);

// d E_self / d q_i and E_self of one atom
double self_potential(const EwaldParameters &p, double q);
double self_energy(const EwaldParameters &p, double q);

}    // namespace mlmd

#endif
