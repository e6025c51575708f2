/* The Ewald parameter mathematics of mlmd/ewald_params.py for the plugin's own Ewald sum (predicted charges,
   mlmd_ewald.h): the Kolafa-Perram RMS force error estimates, and the splitting and reciprocal cutoff chosen from
   a target accuracy, for a structure given by sum q^2, N and V. The same formulas in the same order of operations,
   so the numbers agree with Python's to rounding (tests/engines/lammps/test_lammps_ewald.py compares them).

   accuracy: the RMS force error relative to k_e * 1 e^2 / (1 Å)^2 (LAMMPS's kspace convention);
   Q = sum q^2 / sqrt(N V);
   real space:  2 Q / sqrt(r_cut) exp(-r_cut^2 / (2 sigma^2));
   reciprocal:  2 Q alpha sqrt(2 / k_cut) exp(-sigma^2 k_cut^2 / 2), alpha = 1 / (sqrt(2) sigma), k_cut = pi /
                lr_wavelength (k_e factored out of both). Each part gets accuracy / sqrt(2). */

#ifndef MLMD_EWALD_PARAMS_H
#define MLMD_EWALD_PARAMS_H

#include "mlmd_ewald.h"

namespace mlmd {

// relative slack when comparing an estimate with its target (ewald_params.ROUNDING)
constexpr double ESTIMATE_ROUNDING = 1e-9;

double q_factor(double sum_q2, double n_atoms, double volume);
double error_real(double q_factor, double smearing, double r_cut);
double error_ewald_kspace(double q_factor, double smearing, double k_cut);
double smearing_for(double q_factor, double target, double r_cut);
double k_cutoff_for(double q_factor, double target, double smearing);

struct EwaldEstimate {
  double real = 0.0, kspace = 0.0, total = 0.0;    // eV/Å (k_e included); total: the two in quadrature
  double target = 0.0;                             // accuracy * k_e
  bool exceeds() const { return total > target * (1.0 + ESTIMATE_ROUNDING); }
};
// the estimate of these parameters (the Ewald sum the plugin does) for a structure with accuracy as the target
EwaldEstimate estimate(const EwaldParameters &p, double accuracy, double sum_q2, double n_atoms, double volume);
// sigma and the k-space cutoff (lr_wavelength) chosen for the structure, r_cut kept (Electrostatics.tune)
void tune(EwaldParameters &p, double accuracy, double sum_q2, double n_atoms, double volume);

}    // namespace mlmd

#endif
