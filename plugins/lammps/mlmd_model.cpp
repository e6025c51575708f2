/* The packaged model in the LAMMPS plugin, loading: the card, its checks against the module, the weights
   checksum, capabilities (see mlmd_model.h). Evaluation is in mlmd_evaluate.cpp. */

#include "mlmd_model.h"

#include "mlmd_elements.h"
#include "mlmd_tensors.h"
#include "sha256.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace mlmd {

namespace {
const char *META_FILE = "mlmd_metadata.json";
// mlmd.keys.ENTRY_POINTS, in its order (tests/fuzz/test_fuzz_card.py compares the two lists)
const char *const ENTRY_POINTS[] = {
    "forward", "compute", "atomic_energies", "charges", "species_of", "local_energies", "local_member_energies",
    "local_energies_of_member", "uncertainty", "atomic_variances", "local_dispersion", "local_dispersion_tail",
    "local_dispersion_cn", "local_dispersion_given_cn", "local_dispersion_atm", "local_charges", "layer_widths", "layer_embed",
    "layer_edges", "layer_interaction", "layer_readout", "layer_message_widths", "layer_messages", "layer_update",
    "local_dispersion_whole_pairs", "local_dispersion_cn_slopes", "local_dispersion_by_hand"};
}    // namespace


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
  if (std::fabs(c.interaction_range - c.r_cut * c.n_layers) > 1e-9 * std::fabs(c.interaction_range))
    throw ModelError("model '" + path + "': model card field interaction_range " + number(c.interaction_range) +
                     " is not n_layers * r_cut = " + number(c.r_cut * c.n_layers));
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
  if (!m->provides("local_energies"))
    throw ModelError("model '" + path + "' has no local_energies() entry point (its model card field entry_points "
                     "does not list it): LAMMPS evaluates the model on its own graph through it; run the file in ASE "
                     "or OpenMM, or repackage it with this mlmd");

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
  // as ModelCard.has_local_dispersion: the three-body term needs its own entry and the split at the CN
  m->dispersion_ = c.dispersion && m->provides("local_dispersion") && m->provides("local_dispersion_tail") &&
      (!c.d3_three_body || (m->provides("local_dispersion_atm") && m->provides("local_dispersion_cn") &&
                            m->provides("local_dispersion_given_cn")));
  if (!c.min_distance_listed) {    // older cards: the module's own limit, else the default
    if (mod.hasattr("min_distance")) {
      const auto value = mod.attr("min_distance");
      if (value.isDouble()) c.min_distance = value.toDouble();
    }
  }
  if (!(c.min_distance >= 0.0 && c.min_distance < c.r_cut))
    throw ModelError("model '" + path + "': model card field min_distance " + number(c.min_distance) +
                     " is not in [0, r_cut = " + number(c.r_cut) + ")");
  if (c.min_distance_listed && mod.hasattr("min_distance") && mod.attr("min_distance").isDouble()) {
    const double limit = mod.attr("min_distance").toDouble();    // the module's own check uses it
    if (!same_length(c.min_distance, limit))
      throw ModelError("model '" + path + "': model card field min_distance is " + number(c.min_distance) +
                       " Å but the model itself has min_distance " + number(limit) + " Å: the card was edited after "
                       "packaging; refusing to load it");
  }
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
    m->split_layers_ =
        m->provides("layer_message_widths") && m->provides("layer_messages") && m->provides("layer_update");
    for (int k = 0; m->split_layers_ && k < m->n_members_; k++) {
      auto widths = mod.get_method("layer_message_widths")({static_cast<int64_t>(k)}).toIntVector();
      if (static_cast<int>(widths.size()) != c.n_layers)
        throw ModelError("model '" + path + "': layer_message_widths() gives " + std::to_string(widths.size()) +
                         " widths for " + std::to_string(c.n_layers) + " layers");
      for (auto w : widths) m->max_width_ = std::max(m->max_width_, static_cast<int>(w));
      m->message_widths_.push_back(widths);
    }
  }
  // the compiled copy serves the single-model call (what MD runs on one rank or on a halo)
  if (m->n_members_ == 1)
    m->compiled_ = CompiledProgram::open(path, c.compiled, c.r_cut, m->dtype_, m->compiled_note_);
  // and its layer programs the layer-by-layer evaluation (parallel layers on several ranks)
  if (m->compiled_ && m->layered_)
    m->compiled_layers_ =
        CompiledLayers::open(path, c.compiled, c.n_layers, c.r_cut, m->dtype_, m->compiled_layers_note_);
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
  if (mod.hasattr("n_members") && mod.attr("n_members").isInt()) {
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
  // predicted charges: the module has a charge head exactly then (fixed charges are not told apart from none:
  // older files lost their module's charge table and keep them on the card)
  if (mod.hasattr("charge_term")) {
    const bool head = !mod.attr("charge_term").isNone();
    if (head != (c.charges_mode == "predicted"))
      mismatch("charges_mode", "'" + c.charges_mode + "'", head ? "a charge head (predicted charges)" : "no charge head");
  }
  // entry_points: only methods the module has (a card may list fewer, as files packaged before an entry do: the
  // engines then take their older path or refuse, naming it); an older card without the list takes the module's
  // known ones (mlmd.keys.ENTRY_POINTS)
  if (!c.entry_points_listed) {
    for (const char *name : ENTRY_POINTS)
      if (mod.find_method(name).has_value()) card_.entry_points.push_back(name);
    return;
  }
  for (const auto &name : c.entry_points)
    if (!mod.find_method(name).has_value())
      mismatch("entry_points", "listing '" + name + "'", "no such method");
}

bool Model::provides(const std::string &entry) const
{
  return std::find(card_.entry_points.begin(), card_.entry_points.end(), entry) != card_.entry_points.end() &&
      module_.find_method(entry).has_value();
}

}    // namespace mlmd
