/* The training domain of a model card (mlmd/deploy/domain.py writes it as "training_domain"), as the LAMMPS
   plugin reads and checks it: no LAMMPS classes and no torch here.

   A configuration is outside the domain when a pair of atoms is closer than close_factor times the shortest
   distance of its element pair in the training data (a pair the record lacks was never seen within r_cut: its
   limit is close_factor * r_cut), or when a fully periodic cell's volume per atom is outside
   [volume_factors[0] * smallest, volume_factors[1] * largest] of the training cells'. */

#ifndef MLMD_DOMAIN_H
#define MLMD_DOMAIN_H

#include "mlmd_graph.h"

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlmd {

struct DomainError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TrainingDomain {
  bool present = false;                       // false: the card has no record (older files): no signal
  std::map<std::string, double> pair_min_distance;    // "A-B" (species order) -> Å
  bool has_volume = false;
  double volume_min = 0.0, volume_max = 0.0;    // Å^3 per atom of the periodic training cells
  double close_factor = 0.8;
  double volume_low = 0.8, volume_high = 1.25;

  // parse the card's JSON text of the record (the value of "training_domain") and check it against the model's
  // elements and cutoff, as mlmd.deploy.domain.TrainingDomain.validate does; throws DomainError naming the field
  static TrainingDomain parse(const std::string &json_text, const std::vector<std::string> &elements, double r_cut);

  // limit (Å) of each species pair, [a * n + b]
  std::vector<double> pair_limits(const std::vector<std::string> &elements, double r_cut) const;
  // the shortest training distance of a species pair (Å), or -1 when the record lacks the pair
  double seen(const std::string &a, const std::string &b, const std::vector<std::string> &elements) const;
  std::string summary(const std::vector<std::string> &elements, double r_cut) const;    // for the log
};

// the edge (centre a local node) whose length is smallest relative to its pair's limit: q = |r|^2 / limit^2
// (q < 1: the pair is closer than allowed); edge -1 and q = +inf when there is none
struct ClosestEdge {
  double q;
  long edge;
};
ClosestEdge closest_edge(const LocalGraph &g, const std::vector<int64_t> &node_species,
                         const std::vector<double> &inv_limit_sq, int n_species);

}    // namespace mlmd

#endif
