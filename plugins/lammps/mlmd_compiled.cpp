/* The compiled copy of a packaged model: see mlmd_compiled.h. */

#include "mlmd_compiled.h"

#include "sha256.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace mlmd {

namespace {
constexpr int INTERFACE = 1;    // mlmd.deploy.compiled.INTERFACE

std::string file_sha256(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) h.update(buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  return h.hexdigest();
}

std::string folder_of(const std::string &path)
{
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}
}    // namespace

CompiledProgram::~CompiledProgram() = default;

std::string compiled_unusable(const CompiledCard &card)
{
  const char *env = std::getenv("MLMD_COMPILED");
  if (card.kind.empty()) return "the model file has no compiled copy (mlmd package --compile aoti)";
  if (env != nullptr && std::strcmp(env, "0") == 0) return "MLMD_COMPILED=0";
  if (card.kind != "aoti" || card.interface != INTERFACE)
    return "compiled copy of kind '" + card.kind + "', interface " + std::to_string(card.interface) +
           ": not known to this plugin";
  // AOTInductor packages run in the torch that compiled them ("2.9.0+cpu" and "2.9.0+cu128" share the CPU code)
  const std::string ours = TORCH_VERSION;
  const std::string theirs = card.torch_version.substr(0, card.torch_version.find('+'));
  if (theirs != ours) return "compiled copy made by torch " + card.torch_version + ", the plugin runs torch " + ours;
  return "";
}

std::string checked_file(const std::string &model_path, const std::string &file, const std::string &sha256,
                         const std::string &what, std::string &why_not)
{
  const std::string path = folder_of(model_path) + file;
  const std::string sha = file_sha256(path);
  if (sha.empty()) {
    why_not = what + " " + path + " is missing";
    return "";
  }
  if (sha != sha256) {
    why_not = what + " " + path + " is not the one packaged with the model (checksum differs)";
    return "";
  }
  return path;
}

std::unique_ptr<CompiledProgram> CompiledProgram::open(const std::string &model_path, const CompiledCard &card,
                                                       double r_cut, torch::Dtype dtype, std::string &why_not)
{
  why_not = compiled_unusable(card);
  if (!why_not.empty()) return nullptr;
  const std::string path = checked_file(model_path, card.file, card.sha256, "compiled copy", why_not);
  if (path.empty()) return nullptr;
  auto p = std::unique_ptr<CompiledProgram>(new CompiledProgram());
  try {
    p->loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", /*single_threaded=*/true);
  } catch (const std::exception &e) {
    why_not = "cannot load the compiled copy " + path + ": " + e.what();
    return nullptr;
  }
  p->r_cut_ = r_cut;
  p->dtype_ = dtype;
  return p;
}

EdgeBlocks padded_edge_blocks(const LocalGraph &g, double r_cut, torch::Dtype dtype, int64_t shift_from,
                              int64_t shift)
{
  EdgeBlocks b;
  const int64_t p = g.n_mirrored, r = g.n_edges() - 2 * p;
  const int64_t pp = std::max<int64_t>(p, 2), rp = std::max<int64_t>(r, 2);
  b.pairs = p;
  b.rest = r;
  b.padded_pairs = pp;
  b.padded_rest = rp;
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto node = [&](long v) { return v < shift_from ? v : v + shift; };
  b.pair_index = torch::zeros({2, pp}, i64);
  b.rest_index = torch::zeros({2, rp}, i64);
  torch::Tensor pv = torch::zeros({pp, 3}, f64), rv = torch::zeros({pp, 3}, f64), xv = torch::zeros({rp, 3}, f64);
  int64_t *pi = b.pair_index.data_ptr<int64_t>(), *xi = b.rest_index.data_ptr<int64_t>();
  double *pvp = pv.data_ptr<double>(), *rvp = rv.data_ptr<double>(), *xvp = xv.data_ptr<double>();
  for (int64_t k = 0; k < pp; k++) {
    if (k < p) {
      pi[k] = node(g.edge_src[k]);
      pi[pp + k] = node(g.edge_dst[k]);
      for (int c = 0; c < 3; c++) {
        pvp[3 * k + c] = g.edge_vec[3 * k + c];
        rvp[3 * k + c] = g.edge_vec[3 * (p + k) + c];
      }
    } else {
      pvp[3 * k] = 2.0 * r_cut;
      rvp[3 * k] = -2.0 * r_cut;
    }
  }
  for (int64_t k = 0; k < rp; k++) {
    if (k < r) {
      xi[k] = node(g.edge_src[2 * p + k]);
      xi[rp + k] = node(g.edge_dst[2 * p + k]);
      for (int c = 0; c < 3; c++) xvp[3 * k + c] = g.edge_vec[3 * (2 * p + k) + c];
    } else {
      xvp[3 * k] = 2.0 * r_cut;
    }
  }
  b.pair_vectors = pv.to(dtype);
  b.reverse_vectors = rv.to(dtype);
  b.rest_vectors = xv.to(dtype);
  return b;
}

void unpadded_edge_gradients(const EdgeBlocks &b, const torch::Tensor &rows, std::vector<double> &grad)
{
  const torch::Tensor gr = rows.to(torch::kFloat64).contiguous();
  const double *gp = gr.data_ptr<double>();
  const int64_t p = b.pairs, r = b.rest, pp = b.padded_pairs;
  grad.resize(3 * static_cast<size_t>(2 * p + r));
  // unpadded rows: pairs [0, p), reverses [pp, pp + p), rest [2 pp, 2 pp + r)
  std::copy(gp, gp + 3 * p, grad.begin());
  std::copy(gp + 3 * pp, gp + 3 * (pp + p), grad.begin() + 3 * p);
  std::copy(gp + 3 * 2 * pp, gp + 3 * (2 * pp + r), grad.begin() + 3 * 2 * p);
}

void CompiledProgram::run(const LocalGraph &g, const std::vector<int64_t> &species, std::vector<double> &energies,
                          std::vector<double> &grad)
{
  const int64_t n = static_cast<int64_t>(species.size()), np = std::max<int64_t>(n, 2);
  torch::Tensor sp = torch::zeros({np}, torch::TensorOptions().dtype(torch::kInt64));    // padding nodes: species 0
  std::copy(species.begin(), species.end(), sp.data_ptr<int64_t>());
  const EdgeBlocks b = padded_edge_blocks(g, r_cut_, dtype_);
  const std::vector<torch::Tensor> out =
      loader_->run({sp, b.pair_index, b.pair_vectors, b.reverse_vectors, b.rest_index, b.rest_vectors});
  const torch::Tensor en = out.at(0).to(torch::kFloat64).contiguous();
  const torch::Tensor &gr = out.at(1);
  if (en.dim() != 1 || en.size(0) != np || gr.dim() != 2 || gr.size(0) != 2 * b.padded_pairs + b.padded_rest)
    throw std::runtime_error("the compiled copy returned outputs of unexpected shapes");
  const double *ep = en.data_ptr<double>();
  energies.assign(ep, ep + g.n_local);
  unpadded_edge_gradients(b, gr, grad);
}

}    // namespace mlmd
