/* Ewald parameters from an accuracy, as mlmd/ewald_params.py: see mlmd_ewald_params.h. */

#include "mlmd_ewald_params.h"

#include <algorithm>
#include <cmath>

namespace mlmd {

namespace {
constexpr double PI = 3.14159265358979323846;
}

double q_factor(double sum_q2, double n_atoms, double volume)
{
  return sum_q2 / std::sqrt(n_atoms * volume);
}

double error_real(double q_factor, double smearing, double r_cut)
{
  return 2.0 * q_factor / std::sqrt(r_cut) * std::exp(-(r_cut * r_cut) / (2.0 * (smearing * smearing)));
}

double error_ewald_kspace(double q_factor, double smearing, double k_cut)
{
  const double alpha = 1.0 / (std::sqrt(2.0) * smearing);
  return 2.0 * q_factor * alpha * std::sqrt(2.0 / k_cut) * std::exp(-(smearing * smearing) * (k_cut * k_cut) / 2.0);
}

double smearing_for(double q_factor, double target, double r_cut)
{
  const double arg = 2.0 * q_factor / (target * std::sqrt(r_cut));
  if (arg <= std::exp(1.0)) return r_cut / 2.0;
  return r_cut / std::sqrt(2.0 * std::log(arg));
}

double k_cutoff_for(double q_factor, double target, double smearing)
{
  // bisection, as Python's: the same 200 halvings give the same number
  double lo = 1e-3 / smearing, hi = 50.0 / smearing;
  for (int i = 0; i < 200; i++) {
    const double mid = 0.5 * (lo + hi);
    if (error_ewald_kspace(q_factor, smearing, mid) <= target)
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

EwaldEstimate estimate(const EwaldParameters &p, double accuracy, double sum_q2, double n_atoms, double volume)
{
  const double qf = q_factor(sum_q2, n_atoms, volume);
  EwaldEstimate e;
  e.real = p.coulomb_constant * error_real(qf, p.smearing, p.r_cut);
  e.kspace = p.coulomb_constant * error_ewald_kspace(qf, p.smearing, PI / p.lr_wavelength);
  e.total = std::hypot(e.real, e.kspace);
  e.target = accuracy * p.coulomb_constant;
  return e;
}

void tune(EwaldParameters &p, double accuracy, double sum_q2, double n_atoms, double volume)
{
  const double qf = q_factor(std::max(sum_q2, 1e-12), n_atoms, volume);
  const double part = accuracy / std::sqrt(2.0);
  p.smearing = smearing_for(qf, part, p.r_cut);
  p.lr_wavelength = PI / k_cutoff_for(qf, part, p.smearing);
}

}    // namespace mlmd
