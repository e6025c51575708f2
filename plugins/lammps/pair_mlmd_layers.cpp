/* pair_style mlmd parallel layers: the exchange of node features between layers.

   Features travel in a per-atom buffer, comm_width doubles per LAMMPS atom (local and ghost):
   - forward: the local atoms' rows are filled from the layer's output, LAMMPS's forward communication copies
     each owner's row to all its ghost copies on every rank (periodic images included: features are invariant
     to translation, and equivariant features do not change under a pure translation either), and the graph's
     ghost nodes read their rows;
   - reverse: the ghost nodes' gradient rows are written to their atoms' rows (local rows zero), LAMMPS's
     reverse communication adds each ghost row onto its owner's row, and each local node's gradient is its own
     row of the graph's gradient plus what arrived.
   Every rank takes part in every exchange (an empty subdomain too): the model code calls them collectively.

   Only the rows read move (the short-range graph, comm style brick): of the ghost atoms LAMMPS keeps (out to the
   widest cutoff of every pair style, e.g. D3's 8 Å beside a 5 Å model), many are periodic images of the rank's own
   atoms (folded onto local nodes) or lie beyond the model's cutoff, and no graph reads them. Before the first
   exchange of a step each rank marks its ghost nodes' atoms and sends the flags back along LAMMPS's reverse
   communication (width 1), which also marks a ghost that is passed on to a rank that reads it; each swap keeps
   the flags of what it sends (keyed by its send list). The exchanges then pack and unpack the marked rows only:
   the two sides agree on which, since the receiver's flags are what it sent. */

#include "pair_mlmd_layers.h"

#include "mlmd_graph.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "utils.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <vector>

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

LammpsExchange::LammpsExchange(PairMLMD *pair) :
    pair(pair), graph(*pair->graph), wall(pair->time_exchange), cpu(pair->cpu_exchange)
{
  if (pair->comm->style != Comm::BRICK) return;    // tiled: its swaps' order differs; every row moves
  ExchangeTimer timer(wall, cpu);
  mark_needed_rows();
  masked = true;
}

void LammpsExchange::mark_needed_rows()
{
  const size_t nall = static_cast<size_t>(pair->atom->nlocal + pair->atom->nghost);
  pair->comm_need.assign(nall, 0);
  for (int n = graph.n_local; n < graph.n_nodes(); n++) pair->comm_need[graph.atom_of_node[n]] = 1;
  pair->comm_swap_need.clear();
  pair->comm_width = 1;
  pair->comm_reverse = 1;
  pair->comm_rows = PairMLMD::CommRows::NEED_FLAGS;
  pair->comm->reverse_comm(pair);
  pair->comm_rows = PairMLMD::CommRows::ALL;
  if (!pair->rows_logged) {    // once per run: the ghost rows moved, summed over the ranks
    pair->rows_logged = true;
    double counts[2] = {0.0, static_cast<double>(pair->atom->nghost)}, total[2];
    for (size_t a = pair->atom->nlocal; a < nall; a++) counts[0] += pair->comm_need[a];
    MPI_Allreduce(counts, total, 2, MPI_DOUBLE, MPI_SUM, pair->world);
    if (pair->comm->me == 0)
      utils::logmesg(pair->lmp, "pair_style mlmd: the feature exchanges move {:.0f} of the {:.0f} ghost atoms' rows "
                     "(the others are periodic images of a rank's own atoms or beyond the model's cutoff)\n",
                     total[0], total[1]);
  }
}

size_t LammpsExchange::resize(int width, torch::ScalarType dtype)
{
  if (dtype != torch::kFloat64 && dtype != torch::kFloat32)
    throw std::invalid_argument("the feature exchange takes float64 or float32 values");
  const bool f32 = dtype == torch::kFloat32;
  const int doubles = f32 ? (width + 1) / 2 : width;    // float32 values two to a double, padded to whole doubles
  const size_t nall = static_cast<size_t>(pair->atom->nlocal + pair->atom->nghost);
  pair->comm_width = doubles;
  pair->comm_float32 = f32;
  pair->comm_forward = doubles;
  pair->comm_reverse = doubles;
  if (pair->comm_buf.size() < nall * doubles) pair->comm_buf.resize(nall * doubles);
  return static_cast<size_t>(doubles) * sizeof(double);
}

namespace {
/* dst[c] += src[c] for n values of type T held in raw bytes (the buffers are doubles; float32 values travel two
   to a double), through local copies: no access to one type's storage through a pointer to another */
template <typename T> void add_values(char *dst, const char *src, int n)
{
  constexpr int chunk = 64;
  T a[chunk], b[chunk];
  for (int c0 = 0; c0 < n; c0 += chunk) {
    const size_t m = static_cast<size_t>(std::min(chunk, n - c0)), at = static_cast<size_t>(c0) * sizeof(T);
    std::memcpy(a, dst + at, m * sizeof(T));
    std::memcpy(b, src + at, m * sizeof(T));
    for (size_t c = 0; c < m; c++) a[c] += b[c];
    std::memcpy(dst + at, a, m * sizeof(T));
  }
}

void add_row(char *dst, const char *src, int n_values, bool f32)
{
  if (f32)
    add_values<float>(dst, src, n_values);
  else
    add_values<double>(dst, src, n_values);
}
}    // namespace

torch::Tensor LammpsExchange::forward(const torch::Tensor &y, int width)
{
  ExchangeTimer timer(wall, cpu);
  const mlmd::LocalGraph &g = graph;
  const size_t row_bytes = resize(width, y.scalar_type());
  const torch::Tensor yc = y.contiguous();
  const size_t value_bytes = static_cast<size_t>(width) * yc.element_size();
  const char *src = static_cast<const char *>(yc.data_ptr());
  char *buf = reinterpret_cast<char *>(pair->comm_buf.data());
  for (int n = 0; n < g.n_local; n++)
    std::memcpy(buf + static_cast<size_t>(g.atom_of_node[n]) * row_bytes, src + n * value_bytes, value_bytes);
  pair->comm_rows = masked ? PairMLMD::CommRows::NEEDED : PairMLMD::CommRows::ALL;
  pair->comm->forward_comm(pair);
  pair->comm_rows = PairMLMD::CommRows::ALL;    // D3's exchanges move every row
  const int n_ghost = g.n_ghost_nodes();
  torch::Tensor out = torch::empty({n_ghost, width}, yc.options());
  char *dst = static_cast<char *>(out.data_ptr());
  for (int k = 0; k < n_ghost; k++)
    std::memcpy(dst + k * value_bytes, buf + static_cast<size_t>(g.atom_of_node[g.n_local + k]) * row_bytes,
                value_bytes);
  return out;
}

torch::Tensor LammpsExchange::reverse(const torch::Tensor &grad, int width)
{
  ExchangeTimer timer(wall, cpu);
  const mlmd::LocalGraph &g = graph;
  const size_t row_bytes = resize(width, grad.scalar_type());
  const size_t nlocal = static_cast<size_t>(pair->atom->nlocal), nall = nlocal + pair->atom->nghost;
  const size_t w = static_cast<size_t>(pair->comm_width);
  if (masked) {    // the rows that receive: the local atoms' and the marked ghosts'
    std::fill(pair->comm_buf.begin(), pair->comm_buf.begin() + nlocal * w, 0.0);
    for (size_t a = nlocal; a < nall; a++)
      if (pair->comm_need[a]) std::fill_n(pair->comm_buf.begin() + a * w, w, 0.0);
  } else {
    std::fill(pair->comm_buf.begin(), pair->comm_buf.begin() + nall * w, 0.0);
  }
  const torch::Tensor gc = grad.contiguous();
  const size_t value_bytes = static_cast<size_t>(width) * gc.element_size();
  const char *src = static_cast<const char *>(gc.data_ptr());
  char *buf = reinterpret_cast<char *>(pair->comm_buf.data());
  for (int n = g.n_local; n < g.n_nodes(); n++)
    std::memcpy(buf + static_cast<size_t>(g.atom_of_node[n]) * row_bytes, src + n * value_bytes, value_bytes);
  pair->comm_rows = masked ? PairMLMD::CommRows::NEEDED : PairMLMD::CommRows::ALL;
  pair->comm->reverse_comm(pair);
  pair->comm_rows = PairMLMD::CommRows::ALL;    // D3's exchanges move every row
  // own rows, plus what arrived on their atoms' rows
  torch::Tensor out = gc.slice(0, 0, g.n_local).clone();
  char *dst = static_cast<char *>(out.data_ptr());
  const bool f32 = gc.scalar_type() == torch::kFloat32;
  for (int n = 0; n < g.n_local; n++)
    add_row(dst + n * value_bytes, buf + static_cast<size_t>(g.atom_of_node[n]) * row_bytes, width, f32);
  return out;
}

/* LAMMPS's callbacks: copy rows of comm_buf (NEEDED: the marked rows only; NEED_FLAGS: the marking itself) */

const std::vector<char> &PairMLMD::swap_need(const int *list) const
{
  for (const auto &swap : comm_swap_need)
    if (swap.first == list) return swap.second;
  error->one(FLERR, "pair_style mlmd: a feature exchange met a LAMMPS swap that was not marked");
  return comm_swap_need.front().second;    // not reached
}

int PairMLMD::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  const int w = comm_width;
  if (comm_rows == CommRows::ALL) {
    for (int k = 0; k < n; k++) std::copy_n(comm_buf.data() + static_cast<size_t>(list[k]) * w, w, buf + k * w);
    return n * w;
  }
  const std::vector<char> &need = swap_need(list);
  int m = 0;
  for (int k = 0; k < n; k++)
    if (need[k]) std::copy_n(comm_buf.data() + static_cast<size_t>(list[k]) * w, w, buf + (m++) * w);
  return m * w;
}

void PairMLMD::unpack_forward_comm(int n, int first, double *buf)
{
  const int w = comm_width;
  if (comm_rows == CommRows::ALL) {
    std::copy_n(buf, static_cast<size_t>(n) * w, comm_buf.data() + static_cast<size_t>(first) * w);
    return;
  }
  int m = 0;
  for (int k = first; k < first + n; k++)
    if (comm_need[k]) std::copy_n(buf + (m++) * w, w, comm_buf.data() + static_cast<size_t>(k) * w);
}

int PairMLMD::pack_reverse_comm(int n, int first, double *buf)
{
  const int w = comm_width;
  if (comm_rows == CommRows::NEED_FLAGS) {
    for (int k = 0; k < n; k++) buf[k] = comm_need[first + k] ? 1.0 : 0.0;
    return n;
  }
  if (comm_rows == CommRows::ALL) {
    std::copy_n(comm_buf.data() + static_cast<size_t>(first) * w, static_cast<size_t>(n) * w, buf);
    return n * w;
  }
  int m = 0;
  for (int k = first; k < first + n; k++)
    if (comm_need[k]) std::copy_n(comm_buf.data() + static_cast<size_t>(k) * w, w, buf + (m++) * w);
  return m * w;
}

void PairMLMD::unpack_reverse_comm(int n, int *list, double *buf)
{
  if (comm_rows == CommRows::NEED_FLAGS) {    // what the receiving rank reads of this swap, and pass it on
    std::vector<char> need(n);
    for (int k = 0; k < n; k++) {
      need[k] = buf[k] > 0.5;
      if (need[k]) comm_need[list[k]] = 1;
    }
    comm_swap_need.emplace_back(list, std::move(need));
    return;
  }
  const int w = comm_width, n_values = comm_float32 ? 2 * w : w;    // float32: the padding added too (unread)
  char *rows = reinterpret_cast<char *>(comm_buf.data());
  const char *got = reinterpret_cast<const char *>(buf);
  const size_t row_bytes = static_cast<size_t>(w) * sizeof(double);
  if (comm_rows == CommRows::ALL) {
    for (int k = 0; k < n; k++) add_row(rows + list[k] * row_bytes, got + k * row_bytes, n_values, comm_float32);
    return;
  }
  const std::vector<char> &need = swap_need(list);
  size_t m = 0;
  for (int k = 0; k < n; k++)
    if (need[k]) add_row(rows + list[k] * row_bytes, got + (m++) * row_bytes, n_values, comm_float32);
}
