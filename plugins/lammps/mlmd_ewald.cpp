/* The Ewald sum of a predicted-charge model: see mlmd_ewald.h. */

#include "mlmd_ewald.h"

#include <cmath>

namespace mlmd {

namespace {
constexpr double PI = 3.14159265358979323846;

void invert(const double a[3][3], double inv[3][3])
{
  const double det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
      a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  inv[0][0] = (a[1][1] * a[2][2] - a[1][2] * a[2][1]) / det;
  inv[0][1] = (a[0][2] * a[2][1] - a[0][1] * a[2][2]) / det;
  inv[0][2] = (a[0][1] * a[1][2] - a[0][2] * a[1][1]) / det;
  inv[1][0] = (a[1][2] * a[2][0] - a[1][0] * a[2][2]) / det;
  inv[1][1] = (a[0][0] * a[2][2] - a[0][2] * a[2][0]) / det;
  inv[1][2] = (a[0][2] * a[1][0] - a[0][0] * a[1][2]) / det;
  inv[2][0] = (a[1][0] * a[2][1] - a[1][1] * a[2][0]) / det;
  inv[2][1] = (a[0][1] * a[2][0] - a[0][0] * a[2][1]) / det;
  inv[2][2] = (a[0][0] * a[1][1] - a[0][1] * a[1][0]) / det;
}

// the k-vectors of one step: a box of reciprocal-lattice indices, G(k) and the virial factor of each
struct KGrid {
  int lo[3], n[3];
  long size = 0;
  std::vector<double> k;     // [3 size]
  std::vector<double> g;     // [size] G(k) (0 at k = 0)
  std::vector<double> t;     // [6 size] delta_ab - 2 k_a k_b (1/k^2 + sigma^2/2)
};

KGrid make_grid(const EwaldParameters &p, const double cell[3][3], const double inv[3][3])
{
  KGrid kg;
  for (int a = 0; a < 3; a++) {
    const double norm = std::sqrt(cell[a][0] * cell[a][0] + cell[a][1] * cell[a][1] + cell[a][2] * cell[a][2]);
    // as torch-pme: n_a = ceil(k_cut |a_a| / 2 pi) with k_cut = 2 pi / lr_wavelength (same rounding)
    kg.n[a] = static_cast<int>(std::ceil(2.0 * PI / p.lr_wavelength * norm / 2.0 / PI));
    kg.lo[a] = -(kg.n[a] / 2);    // FFT frequencies: -floor(n/2) .. ceil(n/2) - 1
  }
  kg.size = static_cast<long>(kg.n[0]) * kg.n[1] * kg.n[2];
  kg.k.assign(3 * kg.size, 0.0);
  kg.g.assign(kg.size, 0.0);
  kg.t.assign(6 * kg.size, 0.0);
  const double s2 = p.smearing * p.smearing;
  long idx = 0;
  for (int i1 = 0; i1 < kg.n[0]; i1++)
    for (int i2 = 0; i2 < kg.n[1]; i2++)
      for (int i3 = 0; i3 < kg.n[2]; i3++, idx++) {
        const int m[3] = {kg.lo[0] + i1, kg.lo[1] + i2, kg.lo[2] + i3};
        double kv[3];
        for (int c = 0; c < 3; c++)    // b_a = 2 pi (cell^-1)^T rows
          kv[c] = 2.0 * PI * (m[0] * inv[c][0] + m[1] * inv[c][1] + m[2] * inv[c][2]);
        const double k2 = kv[0] * kv[0] + kv[1] * kv[1] + kv[2] * kv[2];
        for (int c = 0; c < 3; c++) kg.k[3 * idx + c] = kv[c];
        if (m[0] == 0 && m[1] == 0 && m[2] == 0) continue;    // neutral cell: no k = 0 term
        kg.g[idx] = 4.0 * PI * p.coulomb_constant * std::exp(-0.5 * s2 * k2) / k2;
        const double c = 2.0 * (1.0 / k2 + 0.5 * s2);
        double *t = &kg.t[6 * idx];
        t[0] = 1.0 - c * kv[0] * kv[0];
        t[1] = 1.0 - c * kv[1] * kv[1];
        t[2] = 1.0 - c * kv[2] * kv[2];
        t[3] = -c * kv[0] * kv[1];
        t[4] = -c * kv[0] * kv[2];
        t[5] = -c * kv[1] * kv[2];
      }
  return kg;
}

// exp(i 2 pi m s_a) for the grid's m along each axis: [n_a] (cos, sin) pairs per axis
void phases(const KGrid &kg, const double s[3], std::vector<double> (&e)[3])
{
  for (int a = 0; a < 3; a++) {
    e[a].resize(2 * kg.n[a]);
    for (int i = 0; i < kg.n[a]; i++) {
      const double arg = 2.0 * PI * (kg.lo[a] + i) * s[a];
      e[a][2 * i] = std::cos(arg);
      e[a][2 * i + 1] = std::sin(arg);
    }
  }
}
}    // namespace

double EwaldParameters::alpha() const
{
  return 1.0 / (std::sqrt(2.0) * smearing);
}

double self_potential(const EwaldParameters &p, double q)
{
  return -2.0 * p.coulomb_constant * p.alpha() * q / std::sqrt(PI);
}

double self_energy(const EwaldParameters &p, double q)
{
  return -p.coulomb_constant * p.alpha() * q * q / std::sqrt(PI);
}

RealSpace real_space(const EwaldParameters &p, const LocalGraph &g, const std::vector<double> &q)
{
  RealSpace out;
  const int n_local = g.n_local;
  const long n_edges = g.n_edges();
  out.phi.assign(n_local, 0.0);
  out.energies.assign(n_local, 0.0);
  out.grad.assign(3 * n_edges, 0.0);
  const double alpha = p.alpha(), k_e = p.coulomb_constant, cutsq = p.r_cut * p.r_cut;
  const double two_alpha_over_sqrt_pi = 2.0 * alpha / std::sqrt(PI);
  for (long e = 0; e < n_edges; e++) {
    const long i = g.edge_src[e], j = g.edge_dst[e];
    if (i >= n_local) continue;
    const double *v = &g.edge_vec[3 * e];
    const double rsq = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    if (!(rsq < cutsq)) continue;
    const double r = std::sqrt(rsq);
    const double erfc_r = std::erfc(alpha * r) / r;
    out.phi[i] += k_e * q[j] * erfc_r;
    // d/dr of erfc(alpha r) / r, times (k_e / 2) q_i q_j: this edge carries half of the pair's energy
    const double dfdr = -(erfc_r + two_alpha_over_sqrt_pi * std::exp(-alpha * alpha * rsq)) / r;
    const double s = 0.5 * k_e * q[i] * q[j] * dfdr / r;
    for (int c = 0; c < 3; c++) out.grad[3 * e + c] = s * v[c];
  }
  for (int i = 0; i < n_local; i++) out.energies[i] = 0.5 * q[i] * out.phi[i];
  return out;
}

Reciprocal reciprocal(const EwaldParameters &p, const double cell[3][3], const std::vector<double> &x,
                      const std::vector<double> &q, bool per_atom_virial,
                      const std::function<void(std::vector<double> &)> &sum_over_ranks)
{
  double inv[3][3];
  invert(cell, inv);
  const double volume = std::fabs(cell[0][0] * (cell[1][1] * cell[2][2] - cell[1][2] * cell[2][1]) -
                                  cell[0][1] * (cell[1][0] * cell[2][2] - cell[1][2] * cell[2][0]) +
                                  cell[0][2] * (cell[1][0] * cell[2][1] - cell[1][1] * cell[2][0]));
  const KGrid kg = make_grid(p, cell, inv);
  const long nk = kg.size;
  const int n = static_cast<int>(q.size());
  Reciprocal out;
  out.n_kvectors = nk - 1;
  out.phi.assign(n, 0.0);
  out.energies.assign(n, 0.0);
  out.forces.assign(3 * n, 0.0);
  if (per_atom_virial) out.atom_virial.assign(6 * n, 0.0);

  // every atom's phases along each axis, reused by both passes (3 (n_1 + n_2 + n_3) numbers per atom)
  std::vector<std::vector<double>> table(n);
  std::vector<double> e[3];
  const int row = 2 * (kg.n[0] + kg.n[1] + kg.n[2]);
  for (int i = 0; i < n; i++) {
    double s[3];
    for (int a = 0; a < 3; a++) s[a] = x[3 * i] * inv[0][a] + x[3 * i + 1] * inv[1][a] + x[3 * i + 2] * inv[2][a];
    phases(kg, s, e);
    table[i].reserve(row);
    for (int a = 0; a < 3; a++) table[i].insert(table[i].end(), e[a].begin(), e[a].end());
  }
  // visits every k of atom i with its phase (re, im) = exp(i k.r_i)
  auto for_each_k = [&kg, &table](int i, auto &&visit) {
    const double *e1 = table[i].data(), *e2 = e1 + 2 * kg.n[0], *e3 = e2 + 2 * kg.n[1];
    long idx = 0;
    for (int i1 = 0; i1 < kg.n[0]; i1++)
      for (int i2 = 0; i2 < kg.n[1]; i2++) {
        const double re12 = e1[2 * i1] * e2[2 * i2] - e1[2 * i1 + 1] * e2[2 * i2 + 1];
        const double im12 = e1[2 * i1] * e2[2 * i2 + 1] + e1[2 * i1 + 1] * e2[2 * i2];
        for (int i3 = 0; i3 < kg.n[2]; i3++, idx++)
          visit(idx, re12 * e3[2 * i3] - im12 * e3[2 * i3 + 1], re12 * e3[2 * i3 + 1] + im12 * e3[2 * i3]);
      }
  };

  // this rank's structure factor, then every rank's
  std::vector<double> local(2 * nk, 0.0);
  for (int i = 0; i < n; i++) {
    const double qi = q[i];
    for_each_k(i, [&local, qi](long k, double re, double im) {
      local[2 * k] += qi * re;
      local[2 * k + 1] += qi * im;
    });
  }
  std::vector<double> total(local);
  sum_over_ranks(total);

  for (int i = 0; i < n; i++) {
    double phi = 0.0, d[3] = {0.0, 0.0, 0.0}, w[6] = {0, 0, 0, 0, 0, 0};
    for_each_k(i, [&](long k, double re, double im) {
      const double g = kg.g[k];
      const double cr = total[2 * k], ci = total[2 * k + 1];
      const double t = g * (cr * re + ci * im);    // G Re(conj(S) exp(i k.r_i))
      const double s = g * (ci * re - cr * im);    // G Re(conj(S) i exp(i k.r_i))
      phi += t;
      d[0] += s * kg.k[3 * k];
      d[1] += s * kg.k[3 * k + 1];
      d[2] += s * kg.k[3 * k + 2];
      if (per_atom_virial)
        for (int c = 0; c < 6; c++) w[c] += t * kg.t[6 * k + c];
    });
    out.phi[i] = phi / volume;
    out.energies[i] = 0.5 * q[i] * out.phi[i];
    for (int c = 0; c < 3; c++) out.forces[3 * i + c] = -q[i] * d[c] / volume;
    if (per_atom_virial)
      for (int c = 0; c < 6; c++) out.atom_virial[6 * i + c] = 0.5 * q[i] * w[c] / volume;
  }
  // this rank's share of the virial: sum_k G/(2V) Re(conj(S) S_rank) T_k (the shares add up to G |S|^2 / (2V) T_k)
  for (long k = 0; k < nk; k++) {
    const double share = kg.g[k] * (total[2 * k] * local[2 * k] + total[2 * k + 1] * local[2 * k + 1]) /
        (2.0 * volume);
    for (int c = 0; c < 6; c++) out.virial[c] += share * kg.t[6 * k + c];
  }
  return out;
}

}    // namespace mlmd
