/* pair_style mlmd: the training-domain check (the domain keyword, and the values compute mlmd/domain reads).

   Per step: the closest edge relative to its pair's limit among this rank's local centres (one pass over the
   graph's edge vectors, mlmd::closest_edge), one MPI_Allreduce (MINLOC) for the closest over all ranks, and the
   volume per atom from the box. Only when a pair is below its limit does the rank that has it broadcast the two
   atom IDs, so every rank holds the same message (a stop is then an error->all). */

#include "pair_mlmd.h"

#include "mlmd_graph.h"
#include "mlmd_model.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cmath>
#include <ctime>

using namespace LAMMPS_NS;

bool PairMLMD::has_training_domain() const
{
  return model && model->card().domain.present;
}

void PairMLMD::use_domain()
{
  domain_serial = -1;
  domain_warned = false;
  domain_inv_limit_sq.clear();
  const mlmd::Card &card = model->card();
  if (!card.domain.present) {
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style mlmd: the model card records no training domain (packaged before mlmd "
                          "recorded it, or without its training data): no out-of-domain check\n");
    return;
  }
  for (double limit : card.domain.pair_limits(card.elements, card.r_cut))
    domain_inv_limit_sq.push_back(1.0 / (limit * limit));
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style mlmd: training domain: {} are outside it; domain {}\n",
                   card.domain.summary(card.elements, card.r_cut),
                   domain_mode == DomainMode::WARN ? "warn (once per run)"
                                                   : (domain_mode == DomainMode::STOP ? "stop" : "off"));
}

void PairMLMD::count_domain_atoms()
{
  domain_warned = false;    // once per run
  domain_serial = -1;
  bigint mine = 0;
  for (int i = 0; i < atom->nlocal; i++)
    if (species_of_type[atom->type[i]] >= 0) mine++;
  MPI_Allreduce(&mine, &domain_atoms, 1, MPI_LMP_BIGINT, MPI_SUM, world);
}

void PairMLMD::reduce_domain()
{
  if (domain_serial == graph_count) return;
  domain_serial = graph_count;
  // its cost, for `compute pair mlmd` [8] (CPU time: what the check adds to a step whatever the machine's load)
  struct Timer {
    double &total;
    std::clock_t t0 = std::clock();
    ~Timer() { total += static_cast<double>(std::clock() - t0) / CLOCKS_PER_SEC; }
  } timer{cpu_domain};
  const mlmd::Card &card = model->card();
  const int n_species = static_cast<int>(card.elements.size());
  const mlmd::ClosestEdge best = mlmd::closest_edge(*graph, node_species, domain_inv_limit_sq, n_species);
  struct {
    double q;
    int rank;
  } in{best.q, comm->me}, out{0.0, 0};
  MPI_Allreduce(&in, &out, 1, MPI_DOUBLE_INT, MPI_MINLOC, world);
  domain_vals[0] = (std::isfinite(out.q) && out.q > 0.0) ? 1.0 / std::sqrt(out.q) : 0.0;

  const mlmd::TrainingDomain &dom = card.domain;
  double volume = 0.0, ratio = 0.0;
  if (domain->xperiodic && domain->yperiodic && domain->zperiodic && domain_atoms > 0)
    volume = domain->xprd * domain->yprd * domain->zprd / static_cast<double>(domain_atoms);
  // other atoms in the box (another style's): the volume per atom says nothing about this style's atoms
  if (dom.has_volume && volume > 0.0 && domain_atoms == atom->natoms)
    ratio = std::max(dom.volume_low * dom.volume_min / volume, volume / (dom.volume_high * dom.volume_max));
  domain_vals[1] = ratio;
  domain_vals[2] = volume;

  domain_pair.clear();
  if (!(out.q < 1.0)) return;
  double buf[5] = {0.0, 0.0, 0.0, 0.0, 0.0};    // atom IDs, distance, species of the closest pair
  if (comm->me == out.rank) {
    const long e = best.edge;
    const int i = graph->atom_of_node[graph->edge_src[e]], j = graph->atom_of_node[graph->edge_dst[e]];
    const double *r = &graph->edge_vec[3 * e];
    buf[0] = static_cast<double>(atom->tag ? atom->tag[i] : i);
    buf[1] = static_cast<double>(atom->tag ? atom->tag[j] : j);
    buf[2] = std::sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
    buf[3] = static_cast<double>(node_species[graph->edge_src[e]]);
    buf[4] = static_cast<double>(node_species[graph->edge_dst[e]]);
  }
  MPI_Bcast(buf, 5, MPI_DOUBLE, out.rank, world);
  const int a = static_cast<int>(buf[3]), b = static_cast<int>(buf[4]);
  const std::string &ea = card.elements[a], &eb = card.elements[b];
  const double limit = 1.0 / std::sqrt(domain_inv_limit_sq[a * n_species + b]);
  const double seen = dom.seen(ea, eb, card.elements);
  const std::string why = seen > 0.0 ? fmt::format("the shortest {}-{} distance in the training data, {:.3f} Å",
                                                   ea, eb, seen)
                                     : fmt::format("the cutoff: the training data has no {}-{} pair within it", ea, eb);
  const tagint id_a = static_cast<tagint>(buf[0]), id_b = static_cast<tagint>(buf[1]);
  domain_pair = fmt::format("atom IDs {} ({}) and {} ({}) are {:.3f} Å apart, closer than {:.3f} Å ({} x {})",
                            std::min(id_a, id_b), id_a < id_b ? ea : eb, std::max(id_a, id_b),
                            id_a < id_b ? eb : ea, buf[2], limit, dom.close_factor, why);
}

const double *PairMLMD::domain_values()
{
  reduce_domain();
  return domain_vals;
}

void PairMLMD::check_domain()
{
  if (domain_mode == DomainMode::OFF || domain_warned || !has_training_domain()) return;
  reduce_domain();
  std::string problem = domain_pair;
  if (problem.empty() && domain_vals[1] > 1.0) {
    const mlmd::TrainingDomain &dom = model->card().domain;
    problem = fmt::format("the cell's volume per atom is {:.4g} Å^3, outside [{:.4g}, {:.4g}] (the training cells had "
                          "{:.4g} to {:.4g} Å^3 per atom; limits [{}, {}] times those)",
                          domain_vals[2], dom.volume_low * dom.volume_min, dom.volume_high * dom.volume_max,
                          dom.volume_min, dom.volume_max, dom.volume_low, dom.volume_high);
  }
  if (problem.empty()) return;
  const std::string what =
      fmt::format("pair_style mlmd: step {}: the configuration left the model's training domain: {}",
                  update->ntimestep, problem);
  if (domain_mode == DomainMode::STOP)
    error->all(FLERR, "{} (stopped: pair_style mlmd ... domain stop; 'domain warn' warns once and goes on)", what);
  domain_warned = true;
  if (comm->me == 0)
    error->warning(FLERR, "{}; its energies and forces are extrapolations (warned once per run; 'domain stop' "
                   "stops instead)", what);
}
