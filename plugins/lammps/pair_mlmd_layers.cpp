/* pair_style mlmd parallel layers: the exchange of node features between layers.

   Features travel in a per-atom buffer, comm_width doubles per LAMMPS atom (local and ghost):
   - forward: the local atoms' rows are filled from the layer's output, LAMMPS's forward communication copies
     each owner's row to all its ghost copies on every rank (periodic images included: features are invariant
     to translation, and equivariant features do not change under a pure translation either), and the graph's
     ghost nodes read their rows;
   - reverse: the ghost nodes' gradient rows are written to their atoms' rows (local rows zero), LAMMPS's
     reverse communication adds each ghost row onto its owner's row, and each local node's gradient is its own
     row of the graph's gradient plus what arrived.
   Every rank takes part in every exchange (an empty subdomain too): the model code calls them collectively. */

#include "pair_mlmd_layers.h"

#include "mlmd_graph.h"

#include "atom.h"
#include "comm.h"

#include <algorithm>
#include <chrono>
#include <ctime>

using namespace LAMMPS_NS;

namespace {
// times one exchange into the pair's counters (wall and CPU: MPI may poll while it waits)
class ExchangeTimer {
 public:
  ExchangeTimer(double &wall, double &cpu) : wall(wall), cpu(cpu), t0(std::chrono::steady_clock::now()), c0(std::clock()) {}
  ~ExchangeTimer()
  {
    wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cpu += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  }

 private:
  double &wall, &cpu;
  std::chrono::steady_clock::time_point t0;
  std::clock_t c0;
};
}    // namespace

void LammpsExchange::resize(int width)
{
  const size_t nall = static_cast<size_t>(pair->atom->nlocal + pair->atom->nghost);
  pair->comm_width = width;
  pair->comm_forward = width;
  pair->comm_reverse = width;
  if (pair->comm_buf.size() < nall * width) pair->comm_buf.resize(nall * width);
}

torch::Tensor LammpsExchange::forward(const torch::Tensor &y, int width)
{
  ExchangeTimer timer(wall, cpu);
  const mlmd::LocalGraph &g = graph;
  resize(width);
  const torch::Tensor yc = y.contiguous();
  const double *src = yc.data_ptr<double>();
  double *buf = pair->comm_buf.data();
  for (int n = 0; n < g.n_local; n++)
    std::copy(src + static_cast<size_t>(n) * width, src + static_cast<size_t>(n + 1) * width,
              buf + static_cast<size_t>(g.atom_of_node[n]) * width);
  pair->comm->forward_comm(pair);
  const int n_ghost = g.n_ghost_nodes();
  torch::Tensor out = torch::empty({n_ghost, width}, torch::TensorOptions().dtype(torch::kFloat64));
  double *dst = out.data_ptr<double>();
  for (int k = 0; k < n_ghost; k++) {
    const double *row = buf + static_cast<size_t>(g.atom_of_node[g.n_local + k]) * width;
    std::copy(row, row + width, dst + static_cast<size_t>(k) * width);
  }
  return out;
}

torch::Tensor LammpsExchange::reverse(const torch::Tensor &grad, int width)
{
  ExchangeTimer timer(wall, cpu);
  const mlmd::LocalGraph &g = graph;
  resize(width);
  const size_t nall = static_cast<size_t>(pair->atom->nlocal + pair->atom->nghost);
  double *buf = pair->comm_buf.data();
  std::fill(buf, buf + nall * width, 0.0);
  const torch::Tensor gc = grad.contiguous();
  const double *src = gc.data_ptr<double>();
  for (int n = g.n_local; n < g.n_nodes(); n++)
    std::copy(src + static_cast<size_t>(n) * width, src + static_cast<size_t>(n + 1) * width,
              buf + static_cast<size_t>(g.atom_of_node[n]) * width);
  pair->comm->reverse_comm(pair);
  torch::Tensor out = torch::empty({g.n_local, width}, torch::TensorOptions().dtype(torch::kFloat64));
  double *dst = out.data_ptr<double>();
  for (int n = 0; n < g.n_local; n++) {
    const double *own = src + static_cast<size_t>(n) * width;
    const double *got = buf + static_cast<size_t>(g.atom_of_node[n]) * width;
    for (int c = 0; c < width; c++) dst[static_cast<size_t>(n) * width + c] = own[c] + got[c];
  }
  return out;
}

/* LAMMPS's callbacks: copy rows of comm_buf */

int PairMLMD::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  const int w = comm_width;
  for (int k = 0; k < n; k++) std::copy_n(comm_buf.data() + static_cast<size_t>(list[k]) * w, w, buf + k * w);
  return n * w;
}

void PairMLMD::unpack_forward_comm(int n, int first, double *buf)
{
  const int w = comm_width;
  std::copy_n(buf, static_cast<size_t>(n) * w, comm_buf.data() + static_cast<size_t>(first) * w);
}

int PairMLMD::pack_reverse_comm(int n, int first, double *buf)
{
  const int w = comm_width;
  std::copy_n(comm_buf.data() + static_cast<size_t>(first) * w, static_cast<size_t>(n) * w, buf);
  return n * w;
}

void PairMLMD::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int w = comm_width;
  for (int k = 0; k < n; k++) {
    double *row = comm_buf.data() + static_cast<size_t>(list[k]) * w;
    for (int c = 0; c < w; c++) row[c] += buf[k * w + c];
  }
}
