/* The local graph: see mlmd_graph.h. */

#include "mlmd_graph.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace mlmd {

namespace {
constexpr size_t MAX_NAMED_ATOMS = 8;    // atom IDs listed in an error message

std::string fmt4(double v)
{
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}
}    // namespace

std::string id_list(std::vector<tagint> ids)
{
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string text;
  const size_t shown = std::min(ids.size(), MAX_NAMED_ATOMS);
  for (size_t k = 0; k < shown; k++) text += (k ? " " : "") + std::to_string(ids[k]);
  if (ids.size() > shown) text += " (and " + std::to_string(ids.size() - shown) + " more)";
  return text;
}

void LocalGraph::build(const NeighbourInput &in, const std::vector<int> &species_of_type, double r_cut,
                       double min_distance, int n_hops)
{
  const double cutsq = r_cut * r_cut;
  node_of_atom.assign(in.nall, -1);
  atom_of_node.clear();
  edge_src.clear();
  edge_dst.clear();
  edge_vec.clear();
  first_edge.clear();
  local_of_tag.clear();
  n_mirrored = 0;
  if (in.tag)
    for (int i = 0; i < in.nlocal; i++) local_of_tag[in.tag[i]] = i;
  auto id = [&](int i) { return in.tag ? in.tag[i] : static_cast<tagint>(i); };

  for (int ii = 0; ii < in.inum; ii++) {
    const int i = in.ilist[ii];
    node_of_atom[i] = static_cast<int>(atom_of_node.size());
    atom_of_node.push_back(i);
  }
  n_local = static_cast<int>(atom_of_node.size());

  // Edges are written for every neighbour entry and kept by advancing the count (no branch on the distance: the
  // cutoff keeps an unpredictable ~40-70% of the entries, and the mispredicted branch cost more than the stores);
  // a centre with a non-finite or too short distance is scanned again by the checking loop, which throws
  size_t used = 0;
  auto room = [&](size_t need) {
    if (edge_src.size() >= need) return;
    const size_t cap = std::max(need, 2 * edge_src.size());
    edge_src.resize(cap);
    edge_dst.resize(cap);
    edge_vec.resize(3 * cap);
  };
  size_t first_hop = 0;
  for (int n = 0; n < n_local; n++) first_hop += static_cast<size_t>(in.numneigh[atom_of_node[n]]);
  room(first_hop);
  const double min_sq = min_distance * min_distance;

  // breadth-first over the neighbour list: nodes [begin, end) are at hop `hop`
  int begin = 0;
  for (int hop = 0; hop < n_hops; hop++) {
    const int end = static_cast<int>(atom_of_node.size());
    for (int n = begin; n < end; n++) {
      first_edge.push_back(static_cast<long>(used));
      const int i = atom_of_node[n];
      const double xi = in.x[i][0], yi = in.x[i][1], zi = in.x[i][2];
      const int *jlist = in.firstneigh[i];
      const int jnum = in.numneigh[i];
      room(used + static_cast<size_t>(jnum));
      long *dst = edge_dst.data() + used;
      double *vec = edge_vec.data() + 3 * used;
      size_t kept = 0;
      bool suspect = false;
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & in.neighmask;
        const double dx = in.x[j][0] - xi, dy = in.x[j][1] - yi, dz = in.x[j][2] - zi;
        const double rsq = dx * dx + dy * dy + dz * dz;
        const bool mine = species_of_type[in.type[j]] >= 0;
        suspect |= mine & !(rsq >= min_sq);    // too close, or NaN
        dst[kept] = j;    // the atom for now; its node below
        vec[3 * kept] = dx;
        vec[3 * kept + 1] = dy;
        vec[3 * kept + 2] = dz;
        kept += static_cast<size_t>(mine & (rsq < cutsq));
      }
      if (suspect) {
        for (int jj = 0; jj < jnum; jj++) {
          const int j = jlist[jj] & in.neighmask;
          if (species_of_type[in.type[j]] < 0) continue;
          const double dx = in.x[j][0] - xi, dy = in.x[j][1] - yi, dz = in.x[j][2] - zi;
          const double rsq = dx * dx + dy * dy + dz * dz;
          if (std::isnan(rsq))
            throw GraphError("atom ID " + std::to_string(id(i)) + " or " + std::to_string(id(j)) +
                             " has a non-finite position");
          if (rsq < min_sq)
            throw GraphError("atoms " + std::to_string(id(i)) + " and " + std::to_string(id(j)) + " are " +
                             fmt4(std::sqrt(rsq)) + " Å apart (closer than " + fmt4(min_distance) + " Å)");
        }
      }
      for (size_t e = 0; e < kept; e++) {
        const int j = static_cast<int>(dst[e]);
        if (node_of_atom[j] < 0) {
          // a ghost that is a periodic image of one of our own atoms is that atom: same species, same
          // environment, so the same features at every layer (and its force belongs to it anyway)
          int owner = -1;
          if (j >= in.nlocal && in.tag) {
            auto it = local_of_tag.find(in.tag[j]);
            if (it != local_of_tag.end()) owner = it->second;
          }
          if (owner >= 0 && node_of_atom[owner] >= 0) {
            node_of_atom[j] = node_of_atom[owner];
          } else {
            node_of_atom[j] = static_cast<int>(atom_of_node.size());
            atom_of_node.push_back(j);
          }
        }
        dst[e] = node_of_atom[j];
        edge_src[used + e] = n;
      }
      used += kept;
    }
    begin = end;
  }
  edge_src.resize(used);
  edge_dst.resize(used);
  edge_vec.resize(3 * used);
  first_edge.push_back(static_cast<long>(edge_src.size()));
  n_centres = begin;
}

/* Reorder the edges as [pairs i->j, their reverses j->i in the same order, the rest] and set n_mirrored to the
   number of pairs (the model computes what depends on the distance alone once per pair). A reverse exists when
   both ends are centres: for each centre m, the edges n -> m with n <= m are matched against m's own edges to
   n by their negated vectors (images of one atom are a lattice vector apart, far beyond the tolerance), in time
   linear in the number of edges. Forces and virial are unchanged: the reverse's distance is the same function
   of the positions. */
void LocalGraph::mirror()
{
  const long n_edges = this->n_edges();
  const long n_nodes = this->n_nodes();
  const long nc = n_centres;
  constexpr double tol2 = 1e-16;    // Å^2: the two vectors differ by round-off only
  n_mirrored = 0;
  pair_of.assign(n_edges, -1);
  // edges n -> m with n <= m < n_centres, grouped by m (counting sort)
  in_start.assign(nc + 1, 0);
  for (long e = 0; e < n_edges; e++)
    if (edge_dst[e] < nc && edge_src[e] <= edge_dst[e]) in_start[edge_dst[e] + 1]++;
  for (long m = 0; m < nc; m++) in_start[m + 1] += in_start[m];
  in_list.resize(in_start[nc]);
  next_same.assign(in_start.begin(), in_start.end() - 1);    // fill cursors
  for (long e = 0; e < n_edges; e++)
    if (edge_dst[e] < nc && edge_src[e] <= edge_dst[e]) in_list[next_same[edge_dst[e]]++] = e;
  slot.assign(n_nodes, -1);    // node -> one of m's edges to it (chained through next_same)
  next_same.assign(n_edges, -1);
  long n_pairs = 0;
  for (long m = 0; m < nc; m++) {
    for (long f = first_edge[m]; f < first_edge[m + 1]; f++) {
      next_same[f] = slot[edge_dst[f]];
      slot[edge_dst[f]] = f;
    }
    for (long k = in_start[m]; k < in_start[m + 1]; k++) {
      const long e = in_list[k];
      if (pair_of[e] >= 0) continue;
      const double *v = &edge_vec[3 * e];
      for (long f = slot[edge_src[e]]; f >= 0; f = next_same[f]) {
        if (f == e || pair_of[f] >= 0) continue;
        const double *w = &edge_vec[3 * f];
        const double dx = v[0] + w[0], dy = v[1] + w[1], dz = v[2] + w[2];
        if (dx * dx + dy * dy + dz * dz < tol2) {
          pair_of[e] = f;
          pair_of[f] = e;
          n_pairs++;
          break;
        }
      }
    }
    for (long f = first_edge[m]; f < first_edge[m + 1]; f++) slot[edge_dst[f]] = -1;
  }
  if (n_pairs == 0) return;
  new_src.resize(n_edges);
  new_dst.resize(n_edges);
  new_vec.resize(3 * static_cast<size_t>(n_edges));
  long first = 0, second = n_pairs, rest = 2 * n_pairs;
  auto put = [&](long to, long from) {
    new_src[to] = edge_src[from];
    new_dst[to] = edge_dst[from];
    for (int k = 0; k < 3; k++) new_vec[3 * to + k] = edge_vec[3 * from + k];
  };
  for (long e = 0; e < n_edges; e++) {
    if (pair_of[e] < 0)
      put(rest++, e);
    else if (pair_of[e] > e) {    // the first of its pair: the reverse goes to the same place in the second block
      put(first++, e);
      put(second++, pair_of[e]);
    }
  }
  edge_src.swap(new_src);
  edge_dst.swap(new_dst);
  edge_vec.swap(new_vec);
  n_mirrored = n_pairs;
}

namespace {
// the pair of a local atom (ID ti) and a ghost (ID tj != ti): computed here when ti > tj and ti + tj is odd, or
// ti < tj and the sum is even; the rank that owns the ghost sees it from the other end and decides the opposite
bool computes_pair(tagint ti, tagint tj)
{
  return (ti > tj) == (((ti + tj) & 1) != 0);
}
}    // namespace

/* Pairs across subdomains on one rank only. After mirror() the edges are [local pairs, their reverses, the rest];
   the rest are a local centre's edges to ghost nodes (and, should round-off have left any unpaired, edges
   between local nodes, which stay as they are). For an edge i -> j to a ghost with another atom ID, this rank
   computes the pair when tag_i > tag_j and tag_i + tag_j is odd, or tag_i < tag_j and the sum is even: the rank
   that owns j sees the same pair from the other end and decides the opposite. Ghosts that are images of a local
   atom were folded onto it by build() (same ID): they are not in the rest. The result: [local pairs, kept ghost
   pairs, their reverses in the same order (ghost centres), the rest]. */
void LocalGraph::split_ghost_pairs(const tagint *tag)
{
  const long n_edges = this->n_edges();
  const long n_pairs = n_mirrored;
  new_src.clear();
  new_dst.clear();
  new_vec.clear();
  std::vector<long> kept, rest;
  for (long e = 2 * n_pairs; e < n_edges; e++) {
    if (edge_dst[e] < n_local) {
      rest.push_back(e);
      continue;
    }
    const tagint ti = tag[atom_of_node[edge_src[e]]], tj = tag[atom_of_node[edge_dst[e]]];
    if (ti == tj) throw GraphError("atom " + std::to_string(ti) + " meets a ghost copy of itself that was not folded");
    if (computes_pair(ti, tj)) kept.push_back(e);
  }
  const long n_kept = static_cast<long>(kept.size());
  const long n_new = 2 * (n_pairs + n_kept) + static_cast<long>(rest.size());
  new_src.resize(n_new);
  new_dst.resize(n_new);
  new_vec.resize(3 * static_cast<size_t>(n_new));
  auto put = [&](long to, long from, bool reverse) {
    new_src[to] = reverse ? edge_dst[from] : edge_src[from];
    new_dst[to] = reverse ? edge_src[from] : edge_dst[from];
    for (int k = 0; k < 3; k++) new_vec[3 * to + k] = reverse ? -edge_vec[3 * from + k] : edge_vec[3 * from + k];
  };
  const long second = n_pairs + n_kept;
  for (long p = 0; p < n_pairs; p++) {
    put(p, p, false);
    put(second + p, n_pairs + p, false);
  }
  for (long k = 0; k < n_kept; k++) {
    put(n_pairs + k, kept[k], false);
    put(second + n_pairs + k, kept[k], true);
  }
  for (size_t k = 0; k < rest.size(); k++) put(2 * second + static_cast<long>(k), rest[k], false);
  edge_src.swap(new_src);
  edge_dst.swap(new_dst);
  edge_vec.swap(new_vec);
  n_mirrored = second;
}

void LocalGraph::ghost_pairs(const tagint *tag, std::vector<int64_t> &out) const
{
  out.clear();
  for (long e = 2 * n_mirrored; e < n_edges(); e++) {
    const tagint ti = tag[atom_of_node[edge_src[e]]], tj = tag[atom_of_node[edge_dst[e]]];
    if (edge_dst[e] < n_local) {
      // a local pair left unpaired by mirror() (its two directions not within the cutoff alike, to round-off):
      // one of its edges by the same rule (an atom and its own image: the edge whose vector points up)
      if (ti == tj ? points_up(&edge_vec[3 * e]) : computes_pair(ti, tj)) out.push_back(e);
      continue;
    }
    if (ti == tj) throw GraphError("atom " + std::to_string(ti) + " meets a ghost copy of itself that was not folded");
    if (computes_pair(ti, tj)) out.push_back(e);
  }
}

void TrimmedNeighbours::trim(const NeighbourInput &in, double cut)
{
  const double cutsq = cut * cut;
  neighbours.clear();
  counts.assign(in.nall, 0);
  offsets.assign(in.nall, 0);
  for (int ii = 0; ii < in.inum; ii++) {
    const int i = in.ilist[ii];
    const double xi = in.x[i][0], yi = in.x[i][1], zi = in.x[i][2];
    const int *jlist = in.firstneigh[i];
    offsets[i] = static_cast<long>(neighbours.size());
    for (int jj = 0; jj < in.numneigh[i]; jj++) {
      const int j = jlist[jj] & in.neighmask;
      const double dx = in.x[j][0] - xi, dy = in.x[j][1] - yi, dz = in.x[j][2] - zi;
      // kept when not provably beyond (a non-finite position stays, for build() to report)
      if (!(dx * dx + dy * dy + dz * dz >= cutsq)) neighbours.push_back(jlist[jj]);
    }
    counts[i] = static_cast<int>(neighbours.size() - offsets[i]);
  }
  first.assign(in.nall, nullptr);
  for (int ii = 0; ii < in.inum; ii++) first[in.ilist[ii]] = neighbours.data() + offsets[in.ilist[ii]];
}

NeighbourInput TrimmedNeighbours::view(const NeighbourInput &in) const
{
  NeighbourInput out = in;
  out.numneigh = counts.data();
  out.firstneigh = const_cast<int **>(first.data());
  return out;
}

}    // namespace mlmd
