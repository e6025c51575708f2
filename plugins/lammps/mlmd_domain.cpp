/* The training domain: see mlmd_domain.h. */

#include "mlmd_domain.h"

#include "json.h"    // LAMMPS's bundled nlohmann::json

#include <cmath>
#include <cstdio>
#include <limits>

namespace mlmd {

namespace {
using json = LAMMPS_NS::json;

std::string num(double x)
{
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", x);
  return buf;
}

int index_of(const std::vector<std::string> &elements, const std::string &e)
{
  for (size_t k = 0; k < elements.size(); k++)
    if (elements[k] == e) return static_cast<int>(k);
  return -1;
}

[[noreturn]] void fail(const std::string &field, const std::string &problem)
{
  throw DomainError("model card field 'training_domain." + field + "': " + problem);
}

double number_of(const json &v, const std::string &field)
{
  if (!v.is_number()) fail(field, "expected a finite number, got " + v.dump());
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(field, "expected a finite number, got " + v.dump());
  return x;
}

void pair_of(const json &v, const std::string &field, double &lo, double &hi)
{
  if (!v.is_array() || v.size() != 2) fail(field, "expected [low, high], got " + v.dump());
  lo = number_of(v[0], field);
  hi = number_of(v[1], field);
}
}    // namespace

TrainingDomain TrainingDomain::parse(const std::string &text, const std::vector<std::string> &elements,
                                     double r_cut)
{
  json raw;
  try {
    raw = json::parse(text);
  } catch (const std::exception &e) {
    throw DomainError(std::string("model card field 'training_domain' is not valid JSON: ") + e.what());
  }
  TrainingDomain d;
  if (raw.is_null()) return d;
  if (!raw.is_object()) fail("", "expected a JSON object, got " + raw.dump());
  d.present = true;
  if (raw.contains("pair_min_distance")) {
    const json &pairs = raw["pair_min_distance"];
    if (!pairs.is_object()) fail("pair_min_distance", "expected a JSON object, got " + pairs.dump());
    for (auto it = pairs.begin(); it != pairs.end(); ++it) {
      const std::string key = it.key();
      const auto dash = key.find('-');
      const int a = dash == std::string::npos ? -1 : index_of(elements, key.substr(0, dash));
      const int b = dash == std::string::npos ? -1 : index_of(elements, key.substr(dash + 1));
      if (a < 0 || b < 0 || a > b)
        fail("pair_min_distance", "'" + key + "' is not a pair 'A-B' of the model's elements in their order");
      const double dist = number_of(it.value(), "pair_min_distance[" + key + "]");
      if (!(dist > 0.0 && dist <= r_cut))
        fail("pair_min_distance[" + key + "]", num(dist) + " is not in (0, r_cut = " + num(r_cut) + "]");
      d.pair_min_distance[key] = dist;
    }
  }
  if (raw.contains("volume_per_atom") && !raw["volume_per_atom"].is_null()) {
    pair_of(raw["volume_per_atom"], "volume_per_atom", d.volume_min, d.volume_max);
    if (!(d.volume_min > 0.0 && d.volume_min <= d.volume_max))
      fail("volume_per_atom", "[" + num(d.volume_min) + ", " + num(d.volume_max) + "] is not [smallest, largest] > 0");
    d.has_volume = true;
  }
  // recorded for the user only, but checked as the Python reader does: a card is accepted or refused alike
  if (raw.contains("max_force_component") && !raw["max_force_component"].is_null() &&
      !(number_of(raw["max_force_component"], "max_force_component") >= 0.0))
    fail("max_force_component", "must be >= 0, got " + raw["max_force_component"].dump());
  if (raw.contains("n_structures")) {
    const json &n = raw["n_structures"];
    if (!n.is_number_integer()) fail("n_structures", "expected an integer, got " + n.dump());
    if (n.is_number_unsigned() ? false : n.get<long long>() < 0)
      fail("n_structures", "must be >= 0, got " + n.dump());
  }
  if (raw.contains("close_factor")) d.close_factor = number_of(raw["close_factor"], "close_factor");
  if (!(d.close_factor > 0.0 && d.close_factor <= 1.0))
    fail("close_factor", "must be in (0, 1], got " + num(d.close_factor));
  if (raw.contains("volume_factors")) pair_of(raw["volume_factors"], "volume_factors", d.volume_low, d.volume_high);
  if (!(d.volume_low > 0.0 && d.volume_low <= 1.0 && d.volume_high >= 1.0))
    fail("volume_factors", "must be [low <= 1, high >= 1] > 0, got [" + num(d.volume_low) + ", " +
                               num(d.volume_high) + "]");
  return d;
}

double TrainingDomain::seen(const std::string &a, const std::string &b, const std::vector<std::string> &elements) const
{
  const bool in_order = index_of(elements, a) <= index_of(elements, b);
  const auto it = pair_min_distance.find(in_order ? a + "-" + b : b + "-" + a);
  return it == pair_min_distance.end() ? -1.0 : it->second;
}

std::vector<double> TrainingDomain::pair_limits(const std::vector<std::string> &elements, double r_cut) const
{
  const size_t n = elements.size();
  std::vector<double> out(n * n);
  for (size_t a = 0; a < n; a++)
    for (size_t b = 0; b < n; b++) {
      const double s = seen(elements[a], elements[b], elements);
      out[a * n + b] = close_factor * (s > 0.0 ? s : r_cut);
    }
  return out;
}

std::string TrainingDomain::summary(const std::vector<std::string> &elements, double r_cut) const
{
  const std::vector<double> limits = pair_limits(elements, r_cut);
  const size_t n = elements.size();
  std::string text = "pairs closer than";
  for (size_t a = 0; a < n; a++)
    for (size_t b = a; b < n; b++)
      text += (a + b ? ", " : " ") + elements[a] + "-" + elements[b] + " " + num(limits[a * n + b]) + " Å";
  if (has_volume)
    text += "; a periodic cell with a volume per atom outside [" + num(volume_low * volume_min) + ", " +
        num(volume_high * volume_max) + "] Å^3";
  return text;
}

ClosestEdge closest_edge(const LocalGraph &g, const std::vector<int64_t> &node_species,
                         const std::vector<double> &inv_limit_sq, int n_species)
{
  ClosestEdge best{std::numeric_limits<double>::infinity(), -1};
  const long n_edges = g.n_edges();
  const double *r = g.edge_vec.data();
  for (long e = 0; e < n_edges; e++) {
    const long i = g.edge_src[e];
    if (i >= g.n_local) continue;    // ghost centres (halo mode): their owners check them
    const double rsq = r[3 * e] * r[3 * e] + r[3 * e + 1] * r[3 * e + 1] + r[3 * e + 2] * r[3 * e + 2];
    const double q = rsq * inv_limit_sq[node_species[i] * n_species + node_species[g.edge_dst[e]]];
    if (q < best.q) best = {q, e};
  }
  return best;
}

}    // namespace mlmd
