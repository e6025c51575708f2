/* The packaged model in the LAMMPS plugin: see mlmd_model.h. */

#include "mlmd_model.h"

#include "mlmd_elements.h"
#include "mlmd_tensors.h"
#include "sha256.h"

#include "json.h"    // LAMMPS's bundled nlohmann::json

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace mlmd {

namespace {
const char *META_FILE = "mlmd_metadata.json";
using json = LAMMPS_NS::json;

torch::Tensor grad_or_zeros(const torch::Tensor &g, const torch::Tensor &like)
{
  return g.defined() ? g : torch::zeros_like(like);
}

}    // namespace

std::vector<double> to_vector(const torch::Tensor &t)
{
  const torch::Tensor c = t.detach().to(torch::kFloat64).contiguous();
  const double *p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

namespace {

std::string number(double x)    // 3.5, 4, 1e-05: as a person writes it
{
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.15g", x);
  return buf;
}

std::string int_list(const std::vector<int> &v)
{
  std::string out = "[";
  for (size_t k = 0; k < v.size(); k++) out += (k ? ", " : "") + std::to_string(v[k]);
  return out + "]";
}

std::string word_list(const std::vector<std::string> &v)
{
  std::string out = "[";
  for (size_t k = 0; k < v.size(); k++) out += (k ? ", \"" : "\"") + v[k] + "\"";
  return out + "]";
}

bool same_length(double a, double b)    // card and module values are the same double through JSON
{
  return std::fabs(a - b) <= 1e-12 * std::max(std::fabs(a), std::fabs(b));
}
}    // namespace

Card parse_card(const std::string &text)
{
  json meta;
  try {
    meta = json::parse(text);
  } catch (const std::exception &e) {
    throw ModelError("model card is not valid JSON: " + first_line(e.what()));
  }
  Card c;
  try {
    c.format_version = meta.at("format_version").get<int>();
    c.mlmd_version = meta.value("mlmd_version", std::string("?"));
    c.weights_sha256 = meta.value("weights_sha256", std::string());
    c.elements = meta.at("elements").get<std::vector<std::string>>();
    if (meta.contains("atomic_numbers")) c.atomic_numbers = meta["atomic_numbers"].get<std::vector<int>>();
    if (meta.contains("n_members")) c.n_members = meta["n_members"].get<int>();
    c.r_cut = meta.at("r_cut").get<double>();
    c.n_layers = meta.at("n_layers").get<int>();
    c.interaction_range = meta.at("interaction_range").get<double>();
    c.dtype = meta.at("dtype").get<std::string>();
    c.charges_mode = meta.value("charges_mode", std::string("none"));
    c.min_distance = -1.0;    // not in the card: load() asks the module, then the default
    if (meta.contains("min_distance") && meta["min_distance"].is_number())
      c.min_distance = meta["min_distance"].get<double>();
    if (meta.contains("training_domain")) c.training_domain_json = meta["training_domain"].dump();
    if (meta.contains("entry_points") && meta["entry_points"].is_array())
      c.entry_points = meta["entry_points"].get<std::vector<std::string>>();
    if (meta.contains("compiled") && meta["compiled"].is_object()) {
      const json &k = meta["compiled"];
      c.compiled = {k.at("kind").get<std::string>(), k.at("file").get<std::string>(),
                    k.at("sha256").get<std::string>(), k.at("torch_version").get<std::string>(),
                    k.value("interface", 1)};
    }
    if (meta.contains("long_range") && meta["long_range"].is_object()) {
      const json &lr = meta["long_range"];
      if (lr.contains("dispersion") && lr["dispersion"].is_object()) {
        const json &d = lr["dispersion"];
        c.dispersion = true;
        c.d3_cutoff = d.at("cutoff").get<double>();
        c.d3_cutoff_cn = d.at("cutoff_cn").get<double>();
        c.d3_tail = d.value("tail_correction", false);
        c.d3_three_body = d.value("three_body", false);
      }
      if (lr.contains("electrostatics") && lr["electrostatics"].is_object()) {
        const json &e = lr["electrostatics"];
        auto number_or_zero = [&e](const char *key) {
          return e.contains(key) && e[key].is_number() ? e[key].get<double>() : 0.0;
        };
        c.elec_method = e.value("method", std::string("auto"));
        c.elec_r_cut = number_or_zero("r_cut");
        c.elec_smearing = number_or_zero("smearing");
        c.elec_lr_wavelength = number_or_zero("lr_wavelength");
        if (!(c.elec_lr_wavelength > 0.0) && number_or_zero("k_cutoff") > 0.0)
          c.elec_lr_wavelength = M_PI / number_or_zero("k_cutoff");
        c.elec_coulomb_constant = number_or_zero("coulomb_constant");
        c.elec_background = e.value("neutralizing_background", false);
        c.elec_ewald_max_atoms = static_cast<int>(number_or_zero("ewald_max_atoms"));
      }
    }
  } catch (const json::exception &e) {
    throw ModelError("model card lacks a field this plugin needs or has one of the wrong type: " +
                     first_line(e.what()));
  }
  return c;
}

std::unique_ptr<Model> Model::load(const std::string &path, int plugin_format)
{
  auto m = std::unique_ptr<Model>(new Model());
  torch::jit::ExtraFilesMap extra{{META_FILE, ""}};
  try {
    m->module_ = torch::jit::load(path, torch::kCPU, extra);
  } catch (const c10::Error &e) {
    throw ModelError("cannot read model file '" + path + "': not a valid mlmd TorchScript archive (corrupt or "
                     "truncated?): " + first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    throw ModelError("cannot read model file '" + path + "': not a valid mlmd TorchScript archive (corrupt or "
                     "truncated?): " + first_line(e.what()));
  }
  if (extra[META_FILE].empty())
    throw ModelError("'" + path + "' is a TorchScript file but not an mlmd model (no " + META_FILE + ")");
  Card &c = m->card_;
  try {
    c = parse_card(extra[META_FILE]);
  } catch (const ModelError &e) {
    throw ModelError("'" + path + "': " + e.what());
  }
  const std::string fmt = std::to_string(c.format_version);
  if (c.format_version < plugin_format)
    throw ModelError("'" + path + "' was packaged by mlmd " + c.mlmd_version + " (model format " + fmt +
                     "); this plugin reads model format " + std::to_string(plugin_format) +
                     " only. Repackage its training checkpoint with the installed mlmd (mlmd package CHECKPOINT "
                     "-o " + path + "), or run it with mlmd " + c.mlmd_version);
  if (c.format_version > plugin_format)
    throw ModelError("'" + path + "' was packaged by mlmd " + c.mlmd_version + " (model format " + fmt +
                     "), newer than this plugin (model format " + std::to_string(plugin_format) +
                     "): install mlmd " + c.mlmd_version + " or later and rebuild the plugin (bash "
                     "plugins/lammps/build.sh)");
  // the weights are the ones packaged, and the card describes them (as mlmd.deploy.load checks in Python)
  m->verify_weights(path);
  m->check_card_against_module(path);
  if (!c.training_domain_json.empty()) {
    try {
      c.domain = TrainingDomain::parse(c.training_domain_json, c.elements, c.r_cut);
    } catch (const DomainError &e) {
      throw ModelError("model '" + path + "': " + e.what() + ": the card was edited after packaging; refusing to "
                       "load it");
    }
  }
  if (c.dtype == "float64")
    m->dtype_ = torch::kFloat64;
  else if (c.dtype == "float32")
    m->dtype_ = torch::kFloat32;
  else
    throw ModelError("model '" + path + "' has dtype '" + c.dtype + "'; supported: float32, float64");
  // predicted charges change every step: the plugin sums the model's own Ewald on them (pair_mlmd_charges.cpp),
  // which needs the local_charges entry and the card's Ewald parameters
  if (c.charges_mode == "predicted") {
    if (!m->provides("local_charges"))
      throw ModelError("model '" + path + "' predicts its charges from the atoms' environments but was packaged "
                       "without the local_charges entry (before LAMMPS could run such models): repackage it with "
                       "this mlmd (mlmd package " + path + " -o NEW.pt), or run it in ASE or OpenMM");
    if (c.n_members > 1)
      throw ModelError("model '" + path + "': a committee of predicted-charge models is not supported");
    if (c.elec_method == "direct")
      throw ModelError("model '" + path + "' sums its predicted-charge electrostatics directly (non-periodic "
                       "systems); pair_style mlmd runs predicted charges with Ewald in 3D-periodic boxes only");
    if (!(c.elec_r_cut > 0.0 && c.elec_smearing > 0.0 && c.elec_lr_wavelength > 0.0 &&
          c.elec_coulomb_constant > 0.0))
      throw ModelError("model '" + path + "': its card's long_range.electrostatics lacks the Ewald parameters "
                       "(r_cut, smearing, lr_wavelength or k_cutoff, coulomb_constant) that predicted charges need");
    m->charges_ = true;
  }
  if (!(c.r_cut > 0.0) || c.n_layers < 1 || c.elements.empty())
    throw ModelError("model '" + path + "' has an invalid card (r_cut " + std::to_string(c.r_cut) + ", n_layers " +
                     std::to_string(c.n_layers) + ", " + std::to_string(c.elements.size()) + " elements)");
  if (std::fabs(c.interaction_range - c.r_cut * c.n_layers) > 1e-9 * c.interaction_range)
    throw ModelError("model '" + path + "': interaction_range " + std::to_string(c.interaction_range) +
                     " is not n_layers * r_cut = " + std::to_string(c.r_cut * c.n_layers));
  if (!m->provides("local_energies"))
    throw ModelError("model '" + path + "' has no local_energies() entry point (not an mlmd model?)");

  torch::jit::Module &mod = m->module_;
  mod.eval();
  // a served model is not trained: no weight gradients beside the forces (older model files ask for them)
  for (auto p : mod.parameters()) p.set_requires_grad(false);
  // self, species, edge_index, edge_vectors, n_local[, n_mirrored]: a signature, not a capability
  m->takes_mirrored_ = mod.get_method("local_energies").function().getSchema().arguments().size() >= 6;
  if (mod.hasattr("n_members")) {
    const auto value = mod.attr("n_members");
    if (value.isInt()) m->n_members_ = static_cast<int>(value.toInt());
  }
  m->member_entry_ = m->provides("local_energies_of_member");
  // as ModelCard.has_local_dispersion; the three-body term needs whole-system sums (refused by mlmd lammps-input)
  m->dispersion_ = c.dispersion && !c.d3_three_body && m->provides("local_dispersion") &&
      m->provides("local_dispersion_tail");
  if (m->dispersion_ && !(c.d3_cutoff > 0.0 && c.d3_cutoff_cn > 0.0))
    throw ModelError("model '" + path + "': model card field long_range.dispersion has cutoff " + number(c.d3_cutoff) +
                     " Å and cutoff_cn " + number(c.d3_cutoff_cn) + " Å (both must be positive)");
  if (c.min_distance < 0.0) {    // older cards: the module's own limit, else the default
    c.min_distance = DEFAULT_MIN_DISTANCE;
    if (mod.hasattr("min_distance")) {
      const auto value = mod.attr("min_distance");
      if (value.isDouble()) c.min_distance = value.toDouble();
    }
  }
  if (!(c.min_distance >= 0.0 && c.min_distance < c.r_cut))
    throw ModelError("model '" + path + "': model card field min_distance " + number(c.min_distance) +
                     " is not in [0, r_cut = " + number(c.r_cut) + ")");
  m->layered_ = c.n_layers > 1 && m->provides("layer_interaction") && m->provides("layer_embed") &&
      m->provides("layer_edges") && m->provides("layer_readout") && m->provides("layer_widths");
  if (m->layered_) {
    for (int k = 0; k < m->n_members_; k++) {
      auto widths = mod.get_method("layer_widths")({static_cast<int64_t>(k)}).toIntVector();
      if (static_cast<int>(widths.size()) != c.n_layers + 1)
        throw ModelError("model '" + path + "': layer_widths() gives " + std::to_string(widths.size()) +
                         " widths for " + std::to_string(c.n_layers) + " layers (expected n_layers + 1)");
      for (auto w : widths) m->max_width_ = std::max(m->max_width_, static_cast<int>(w));
      m->widths_.push_back(widths);
    }
  }
  // the compiled copy serves the single-model call (what MD runs on one rank or on a halo)
  if (m->n_members_ == 1)
    m->compiled_ = CompiledProgram::open(path, c.compiled, c.r_cut, m->dtype_, m->compiled_note_);
  return m;
}

std::string weights_sha256(const torch::jit::Module &module)
{
  // what state_dict() holds for a scripted module: every parameter and buffer, recursively, by dotted name
  std::vector<std::pair<std::string, torch::Tensor>> items;
  for (const auto &p : module.named_parameters(/*recurse=*/true)) items.emplace_back(p.name, p.value);
  for (const auto &b : module.named_buffers(/*recurse=*/true)) items.emplace_back(b.name, b.value);
  std::sort(items.begin(), items.end(),
            [](const auto &a, const auto &b) { return a.first < b.first; });    // Python's sorted(): by code point
  Sha256 h;
  for (const auto &item : items) {
    h.update(item.first);
    const torch::Tensor t = item.second.detach().to(torch::kCPU).contiguous();
    h.update(t.data_ptr(), t.numel() * t.element_size());
  }
  return h.hexdigest();
}

void Model::verify_weights(const std::string &path) const
{
  const std::string actual = weights_sha256(module_);
  if (card_.weights_sha256 != actual)
    throw ModelError("'" + path + "': weights checksum mismatch (the model card says " +
                     (card_.weights_sha256.empty() ? std::string("nothing") : card_.weights_sha256.substr(0, 12) + "...") +
                     ", the weights give " + actual.substr(0, 12) + "...): the file was modified after packaging; "
                     "refusing to load it");
}

/* The card against what the module itself holds (its TorchScript attributes r_cut, n_layers, interaction_range,
   atomic_numbers, n_members and its weights' dtype), and the card's elements against its atomic numbers (the
   rules of mlmd.deploy.card): an edited card would otherwise set the ghost cutoff, the graph and the species of
   each atom type, with no error. */
void Model::check_card_against_module(const std::string &path)
{
  const torch::jit::Module &mod = module_;
  const Card &c = card_;
  auto mismatch = [&](const std::string &field, const std::string &card_value, const std::string &module_value) {
    throw ModelError("model '" + path + "': model card field " + field + " is " + card_value + " but the model "
                     "itself has " + module_value + ": the card was edited after packaging (or belongs to another "
                     "model); refusing to load it. Repackage the model (mlmd package CHECKPOINT -o " + path + ")");
  };
  // species: the card's element symbols, its atomic numbers when it has them, the module's atomic_numbers
  std::vector<int> numbers;
  for (const auto &symbol : c.elements) {
    const int z = atomic_number(symbol);
    if (z == 0)
      throw ModelError("model '" + path + "': model card field elements " + word_list(c.elements) + ": '" + symbol +
                       "' is not an element symbol");
    numbers.push_back(z);
  }
  if (!c.atomic_numbers.empty() && c.atomic_numbers != numbers)
    throw ModelError("model '" + path + "': model card field elements " + word_list(c.elements) + " does not match "
                     "its atomic_numbers " + int_list(c.atomic_numbers) + ": the card was edited after packaging; "
                     "refusing to load it");
  if (!mod.hasattr("atomic_numbers") || !mod.attr("atomic_numbers").isIntList())
    throw ModelError("model '" + path + "' has no atomic_numbers attribute (not an mlmd model?)");
  std::vector<int> module_numbers;
  for (auto z : mod.attr("atomic_numbers").toIntVector()) module_numbers.push_back(static_cast<int>(z));
  if (module_numbers != numbers) {
    std::vector<std::string> module_symbols;
    for (int z : module_numbers) module_symbols.push_back(element_symbol(z));
    mismatch("elements", word_list(c.elements) + " (atomic numbers " + int_list(numbers) + ")",
             word_list(module_symbols) + " (atomic_numbers " + int_list(module_numbers) + ")");
  }
  atomic_numbers_ = numbers;

  if (!mod.hasattr("r_cut") || !mod.attr("r_cut").isDouble())
    throw ModelError("model '" + path + "' has no r_cut attribute (not an mlmd model?)");
  const double r_cut = mod.attr("r_cut").toDouble();
  if (!same_length(c.r_cut, r_cut)) mismatch("r_cut", number(c.r_cut) + " Å", "r_cut " + number(r_cut) + " Å");
  if (mod.hasattr("n_layers") && mod.attr("n_layers").isInt()) {
    const int64_t n_layers = mod.attr("n_layers").toInt();
    if (c.n_layers != n_layers)
      mismatch("n_layers", std::to_string(c.n_layers), "n_layers " + std::to_string(n_layers));
  }
  if (mod.hasattr("interaction_range") && mod.attr("interaction_range").isDouble()) {
    const double range = mod.attr("interaction_range").toDouble();
    if (!same_length(c.interaction_range, range))
      mismatch("interaction_range", number(c.interaction_range) + " Å", "interaction_range " + number(range) + " Å");
  }
  if (c.n_members > 0 && mod.hasattr("n_members") && mod.attr("n_members").isInt()) {
    const int64_t n_members = mod.attr("n_members").toInt();
    if (c.n_members != n_members)
      mismatch("n_members", std::to_string(c.n_members), "n_members " + std::to_string(n_members));
  }
  // the dtype the entry points expect is the weights' (every floating parameter has it)
  for (const auto &p : mod.parameters(/*recurse=*/true)) {
    if (!p.is_floating_point()) continue;
    const std::string dtype = p.scalar_type() == torch::kFloat64 ? "float64"
        : p.scalar_type() == torch::kFloat32                     ? "float32"
                                                                 : std::string(c10::toString(p.scalar_type()));
    if (dtype != c.dtype) mismatch("dtype", "'" + c.dtype + "'", "weights of dtype " + dtype);
    break;
  }
}

bool Model::provides(const std::string &entry) const
{
  if (!card_.entry_points.empty())
    return std::find(card_.entry_points.begin(), card_.entry_points.end(), entry) != card_.entry_points.end() &&
        module_.find_method(entry).has_value();
  return module_.find_method(entry).has_value();
}

/* ---------------------------------------------------------------------- */

GraphTensors graph_tensors(const LocalGraph &g, const std::vector<int64_t> &species, torch::Dtype dtype)
{
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);
  const int64_t n_edges = g.n_edges();
  GraphTensors t;
  t.species = torch::from_blob(const_cast<int64_t *>(species.data()), {static_cast<int64_t>(species.size())},
                               long_opts).clone();
  t.edge_index = torch::empty({2, n_edges}, long_opts);
  int64_t *ei = t.edge_index.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; e++) {
    ei[e] = g.edge_src[e];
    ei[n_edges + e] = g.edge_dst[e];
  }
  t.vectors = torch::from_blob(const_cast<double *>(g.edge_vec.data()), {n_edges, 3},
                               torch::TensorOptions().dtype(torch::kFloat64))
                  .to(dtype, /*non_blocking=*/false, /*copy=*/true)
                  .requires_grad_(true);
  return t;
}

namespace {

Evaluation finish(const torch::Tensor &energies, const torch::Tensor &grad, int64_t n_edges)
{
  Evaluation out;
  out.energies = to_vector(energies);
  if (grad.defined() && n_edges > 0)
    out.grad = to_vector(grad);
  else
    out.grad.assign(3 * n_edges, 0.0);
  return out;
}

namespace {
void add_scaled(Evaluation &into, const Evaluation &part, double w)
{
  if (into.energies.empty()) into.energies.assign(part.energies.size(), 0.0);
  if (into.grad.empty()) into.grad.assign(part.grad.size(), 0.0);
  for (size_t k = 0; k < part.energies.size(); k++) into.energies[k] += w * part.energies[k];
  for (size_t k = 0; k < part.grad.size(); k++) into.grad[k] += w * part.grad[k];
}
}    // namespace

Evaluation Model::one_call(const LocalGraph &g, const std::vector<int64_t> &species, int member)
{
  const int64_t n_local = g.n_local;
  if (member < 0 && compiled_) {
    Evaluation out;
    compiled_->run(g, species, out.energies, out.grad);
    return out;
  }
  GraphTensors t = graph_tensors(g, species, dtype_);
  torch::AutoGradMode enable_grad(true);
  // TorchScript's profiling executor re-specialises the graph as the graph sizes change from step to step;
  // the plain executor measured 25-40% faster on small systems and the same on 3,000 atoms (scoped: the
  // process-wide setting is restored afterwards, e.g. for a Python process that also runs the model)
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);
  torch::Tensor energies;
  if (member < 0) {
    std::vector<torch::jit::IValue> in{t.species, t.edge_index, t.vectors, n_local};
    if (takes_mirrored_) in.emplace_back(static_cast<int64_t>(g.n_mirrored));
    energies = module_.get_method("local_energies")(in).toTensor();
  } else if (member_entry_) {
    energies = module_.get_method("local_energies_of_member")(
        {static_cast<int64_t>(member), t.species, t.edge_index, t.vectors, n_local}).toTensor();
  } else {    // committees packaged before local_energies_of_member: every row shares one graph
    energies = module_.get_method("local_member_energies")({t.species, t.edge_index, t.vectors, n_local})
                   .toTensor()[member];
  }
  if (energies.dim() != 1 || energies.size(0) != n_local)
    throw ModelError("the model returned " + std::to_string(energies.dim() == 1 ? energies.size(0) : -1) +
                     " energies for " + std::to_string(n_local) + " local atoms");
  torch::Tensor grad;
  if (energies.requires_grad())
    grad = torch::autograd::grad({energies.sum()}, {t.vectors}, {}, /*retain_graph=*/false,
                                 /*create_graph=*/false, /*allow_unused=*/true)[0];
  return finish(energies, grad, g.n_edges());
}

Evaluation Model::layers(const LocalGraph &g, const std::vector<int64_t> &species, int member, Exchange &ex)
{
  if (!layered_) throw ModelError("this model file has no layer-by-layer entry points");
  // the graph's tensors once for every member: each member's backward pass runs through its own graph from the
  // same edge-vector leaf
  const GraphTensors t = graph_tensors(g, species, dtype_);
  if (member >= 0) return layers_of_member(g, t.species, t.edge_index, t.vectors, member, ex);
  if (n_members_ == 1) return layers_of_member(g, t.species, t.edge_index, t.vectors, 0, ex);
  Evaluation mean;    // the committee mean, member by member (each backward pass runs through one member)
  for (int k = 0; k < n_members_; k++)
    add_scaled(mean, layers_of_member(g, t.species, t.edge_index, t.vectors, k, ex), 1.0 / n_members_);
  return mean;
}

Evaluation Model::layers_of_member(const LocalGraph &g, const torch::Tensor &species,
                                   const torch::Tensor &edge_index, const torch::Tensor &vectors, int member,
                                   Exchange &ex)
{
  const std::vector<int64_t> &widths = widths_.at(member);
  const int n_layers = static_cast<int>(widths.size()) - 1;
  const int64_t n_local = g.n_local, n_nodes = g.n_nodes(), n_edges = g.n_edges();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  if (n_local == 0) {    // nothing of ours, but the exchanges are collective: take part in each
    for (int k = 0; k + 1 < n_layers; k++) ex.forward(torch::zeros({0, widths[k + 1]}, f64), widths[k + 1]);
    for (int k = n_layers - 1; k > 0; k--) ex.reverse(torch::zeros({0, widths[k]}, f64), widths[k]);
    return Evaluation();
  }
  const int64_t m = member, n_mirrored = g.n_mirrored;
  torch::AutoGradMode enable_grad(true);
  torch::jit::GraphOptimizerEnabledGuard no_profiling(false);    // as in one_call()

  // what every layer reads of the edges, computed once; the layers see leaf copies, whose gradients are summed
  // over the layers and taken back to the edge vectors at the end
  const auto edges = module_.get_method("layer_edges")({m, vectors, n_mirrored}).toTuple();
  const torch::Tensor sh = edges->elements()[0].toTensor(), radial = edges->elements()[1].toTensor();
  const torch::Tensor sh_in = sh.detach().requires_grad_(true), radial_in = radial.detach().requires_grad_(true);
  std::vector<torch::Tensor> inputs(n_layers), outputs(n_layers);
  torch::Tensor x = module_.get_method("layer_embed")({m, species}).toTensor();
  for (int k = 0; k < n_layers; k++) {
    if (k > 0) x = x.detach().requires_grad_(true);
    inputs[k] = x;
    outputs[k] = module_.get_method("layer_interaction")(
        {m, static_cast<int64_t>(k), x, species, edge_index, sh_in, radial_in, n_mirrored, n_local})
                     .toTensor();
    if (outputs[k].dim() != 2 || outputs[k].size(0) != n_local || outputs[k].size(1) != widths[k + 1])
      throw ModelError("layer " + std::to_string(k) + " returned features of the wrong shape");
    if (k + 1 < n_layers) {
      const torch::Tensor ghosts = ex.forward(outputs[k].detach().to(torch::kFloat64), widths[k + 1]);
      if (ghosts.size(0) != n_nodes - n_local) throw ModelError("feature exchange returned the wrong rows");
      x = torch::cat({outputs[k].detach(), ghosts.to(dtype_)}, 0);
    }
  }
  const torch::Tensor last = outputs[n_layers - 1].detach().requires_grad_(true);
  const torch::Tensor energies =
      module_.get_method("layer_readout")({m, last, species.slice(0, 0, n_local)}).toTensor();
  if (energies.dim() != 1 || energies.size(0) != n_local)
    throw ModelError("the readout returned " + std::to_string(energies.dim() == 1 ? energies.size(0) : -1) +
                     " energies for " + std::to_string(n_local) + " local atoms");
  torch::Tensor gy = torch::autograd::grad({energies.sum()}, {last}, {}, false, false, true)[0];
  gy = grad_or_zeros(gy, last);

  // backward, layer by layer: the edge attributes' gradients accumulate; the gradient of the layer's input
  // features goes to the owners of the ghost nodes, whose sum over ranks is the gradient of the previous
  // layer's output
  torch::Tensor g_sh = torch::zeros_like(sh_in), g_radial = torch::zeros_like(radial_in);
  for (int k = n_layers - 1; k >= 0; k--) {
    torch::Tensor gx;
    if (outputs[k].requires_grad()) {
      std::vector<torch::Tensor> wrt{sh_in, radial_in};
      if (k > 0) wrt.push_back(inputs[k]);
      auto gs = torch::autograd::grad({outputs[k]}, wrt, {gy}, false, false, true);
      if (gs[0].defined()) g_sh = g_sh + gs[0];
      if (gs[1].defined()) g_radial = g_radial + gs[1];
      if (k > 0) gx = gs[2];
    }
    if (k > 0) {
      if (!gx.defined()) gx = torch::zeros({n_nodes, widths[k]}, torch::TensorOptions().dtype(dtype_));
      gy = ex.reverse(gx.detach().to(torch::kFloat64), widths[k]).to(dtype_);
    }
  }
  torch::Tensor gvec;
  if (n_edges > 0 && (sh.requires_grad() || radial.requires_grad()))
    gvec = torch::autograd::grad({sh, radial}, {vectors}, {g_sh, g_radial}, false, false, true)[0];
  return finish(energies, gvec, n_edges);
}

}    // namespace mlmd
