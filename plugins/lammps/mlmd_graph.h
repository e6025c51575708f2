/* The local graph pair_style mlmd hands to the model: nodes, edges, edge vectors, built from a LAMMPS
   neighbour list. No torch and no LAMMPS classes here (only LAMMPS's integer types), so that the ghost walk,
   the folding of periodic images and the edge mirroring can be read and changed on their own.

   Nodes: the local atoms handled by the style first (the model's first n_local outputs are theirs), then the
   ghost atoms reached from them. Edges i -> j for |x_j - x_i| < r_cut, centre i on hop 0..n_hops-1 of a
   breadth-first walk from the local atoms (n_hops = n_layers for one call on a halo of n_layers * r_cut;
   1 when the engine exchanges features between layers, or on one rank, where every ghost is an image).
   A ghost that is a periodic image of a local atom is that atom's node (edge vectors keep the image's
   position): on one rank the graph is then exactly the periodic graph, with no ghost nodes. */

#ifndef MLMD_GRAPH_H
#define MLMD_GRAPH_H

#include "lmptype.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace mlmd {

using LAMMPS_NS::tagint;

// a configuration the model must not be given; the message names atom IDs (the caller adds the step)
struct GraphError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// what build() reads: LAMMPS's arrays for this step
struct NeighbourInput {
  double **x;
  const int *type;
  const tagint *tag;    // nullptr without atom IDs (then no image folding)
  int nlocal;
  int nall;
  int inum;
  const int *ilist;
  const int *numneigh;
  int **firstneigh;
  int neighmask;
};

// the first nonzero component of v is positive: which of the two edges between an atom and its own periodic image
// counts as the pair's first copy (mirroring, and which rank computes a pair)
inline bool points_up(const double *v)
{
  return v[0] > 0.0 || (v[0] == 0.0 && (v[1] > 0.0 || (v[1] == 0.0 && v[2] > 0.0)));
}

class LocalGraph {
 public:
  std::vector<int> node_of_atom;    // LAMMPS atom index -> graph node, -1 if not in the graph
  std::vector<int> atom_of_node;    // graph node -> LAMMPS atom index (a folded image: its local atom)
  std::vector<long> edge_src, edge_dst;    // nodes of each edge (centre, neighbour)
  std::vector<double> edge_vec;            // x_dst - x_src, 3 per edge
  int n_local = 0;                         // nodes [0, n_local) are local atoms
  long n_mirrored = 0;                     // edges [0, n_mirrored) have their reverses at [n_mirrored, 2 n_mirrored)

  // species_of_type[type] >= 0 for the types the model handles; throws GraphError on a non-finite position or
  // two atoms closer than min_distance
  void build(const NeighbourInput &in, const std::vector<int> &species_of_type, double r_cut, double min_distance,
             int n_hops);
  // reorder the edges as [pairs, their reverses, the rest] (see mlmd_graph.cpp); sets n_mirrored
  void mirror();
  // after mirror(): each edge between a local node and a ghost node either becomes a pair with its reverse
  // (the ghost as centre), when this rank computes that pair, or is dropped, when the ghost's owner does (LAMMPS's
  // rule for pairs across subdomains, by the parity of the two atom IDs, so that exactly one rank keeps it)
  void split_ghost_pairs(const tagint *tag);
  // after mirror(): the unpaired edges whose pair this rank computes, into `out` (cleared first): those to ghost
  // nodes by split_ghost_pairs()'s rule (the ghost's owner computes the others), and one edge of each local pair
  // mirror() could not pair
  void ghost_pairs(const tagint *tag, std::vector<int64_t> &out) const;

  int n_nodes() const { return static_cast<int>(atom_of_node.size()); }
  long n_edges() const { return static_cast<long>(edge_src.size()); }
  int n_ghost_nodes() const { return n_nodes() - n_local; }

 private:
  std::vector<long> first_edge;    // centre node -> its first edge (edges of a centre are contiguous)
  int n_centres = 0;
  std::unordered_map<tagint, int> local_of_tag;    // atom ID -> local index, for ghost images
  // scratch for mirror()
  std::vector<long> pair_of, in_start, in_list, slot, next_same, new_src, new_dst;
  std::vector<double> new_vec;
};

// A neighbour list cut down to a shorter cutoff, kept between LAMMPS's rebuilds: when the list reaches further than
// the short-range graph needs (D3's or the real-space Coulomb's pairs share it), the short-range graph is built from
// the pairs within r_cut + skin of the last rebuild (every pair within r_cut until the next one, as LAMMPS's own
// trimmed lists), so that each step reads those instead of every pair out to the longest cutoff. Local centres only
// (one hop): not for the halo walk, which reads the ghosts' lists too.
class TrimmedNeighbours {
 public:
  // the pairs of `in`'s local centres within `cut` (Å, skin included) at the positions given; the neighbour
  // entries keep LAMMPS's special bits
  void trim(const NeighbourInput &in, double cut);
  // `in` with this list's centres, counts and neighbours (valid until the next trim)
  NeighbourInput view(const NeighbourInput &in) const;

 private:
  std::vector<int> neighbours, counts;
  std::vector<long> offsets;
  std::vector<int *> first;
};

// "3 7 12 (and 5 more)": atom IDs for an error message
std::string id_list(std::vector<tagint> ids);

}    // namespace mlmd

#endif
