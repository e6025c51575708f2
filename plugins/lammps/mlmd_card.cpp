/* The model card as the plugin reads it (parse_card, see mlmd_model.h): every field the Python loader
   (mlmd/deploy/card.py, card_parts.py) reads, with its rules, so that the plugin accepts a card exactly when
   load_model does, and a refusal names the field. The rules that hold the card against the module itself are in
   mlmd_model.cpp (check_card_against_module). */

#include "mlmd_model.h"

#include "mlmd_elements.h"

#include "json.h"    // LAMMPS's bundled nlohmann::json

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace mlmd {

namespace {
using json = LAMMPS_NS::json;

// Python's json reads NaN, Infinity, -Infinity, numbers beyond a double (as inf) and integers beyond 64 bits;
// nlohmann refuses the first ones and turns the last into doubles. Outside strings, each becomes a string with
// one of these prefixes, so that a field that needs a number refuses it by name and a field nobody reads takes
// it, as in Python.
const std::string NON_FINITE = "\x01mlmd-non-finite:";
const std::string BIG_INTEGER = "\x01mlmd-big-integer:";

bool starts_with(const std::string &s, const std::string &prefix)
{
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::string quoted(const std::string &prefix, const std::string &token)
{
  return json(prefix + token).dump();
}

std::string mark_special_numbers(const std::string &text)
{
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const char ch = text[i];
    if (ch == '"') {    // a string: copied as it is, escapes included
      size_t j = i + 1;
      while (j < text.size() && text[j] != '"') j += text[j] == '\\' ? 2 : 1;
      j = std::min(j + 1, text.size());
      out.append(text, i, j - i);
      i = j;
      continue;
    }
    bool done = false;
    for (const char *word : {"NaN", "Infinity", "-Infinity"}) {
      const std::string w(word);
      if (text.compare(i, w.size(), w) == 0) {
        out += quoted(NON_FINITE, w);
        i += w.size();
        done = true;
        break;
      }
    }
    if (done) continue;
    if (ch == '-' || std::isdigit(static_cast<unsigned char>(ch))) {
      size_t j = i + 1;
      while (j < text.size() && std::strchr("0123456789.eE+-", text[j]) != nullptr) j++;
      const std::string token = text.substr(i, j - i);
      const bool integer = token.find_first_of(".eE") == std::string::npos;
      errno = 0;
      const double value = std::strtod(token.c_str(), nullptr);
      if (!std::isfinite(value) || errno == ERANGE && std::fabs(value) > 1.0)
        out += quoted(NON_FINITE, token);
      else if (integer && token.size() > 18)    // may not fit 64 bits: kept exact as text
        out += quoted(BIG_INTEGER, token);
      else
        out += token;
      i = j;
      continue;
    }
    out += ch;
    i++;
  }
  return out;
}

[[noreturn]] void field_error(const std::string &name, const std::string &problem)
{
  throw ModelError("model card field '" + name + "': " + problem);
}

std::string shown(const json &v)    // a value as the message quotes it
{
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (starts_with(s, NON_FINITE)) return s.substr(NON_FINITE.size());
    if (starts_with(s, BIG_INTEGER)) return s.substr(BIG_INTEGER.size());
  }
  std::string text = v.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

bool is_marker(const json &v)    // a string that stands for a number (not a string in Python)
{
  return v.is_string() && (starts_with(v.get_ref<const std::string &>(), NON_FINITE) ||
                           starts_with(v.get_ref<const std::string &>(), BIG_INTEGER));
}

bool is_big_integer(const json &v)
{
  return v.is_string() && starts_with(v.get_ref<const std::string &>(), BIG_INTEGER);
}

bool truthy(const json &v)    // Python's bool() of the value json.loads gives
{
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_float()) return v.get<double>() != 0.0;
  if (v.is_number()) return v.get<int64_t>() != 0 || v.is_number_unsigned() && v.get<uint64_t>() != 0;
  return !v.empty() && !(v.is_string() && v.get_ref<const std::string &>().empty());
}

double read_number(const std::string &name, const json &v)    // card_parts.read_number
{
  if (is_big_integer(v)) return std::strtod(v.get_ref<const std::string &>().c_str() + BIG_INTEGER.size(), nullptr);
  if (!v.is_number() || !std::isfinite(v.get<double>())) field_error(name, "expected a finite number, got " + shown(v));
  return v.get<double>();
}

int64_t read_integer(const std::string &name, const json &v)    // card_parts.read_number(integer=True)
{
  if (is_big_integer(v)) {
    const bool negative = v.get_ref<const std::string &>()[BIG_INTEGER.size()] == '-';
    return negative ? std::numeric_limits<int64_t>::min() : std::numeric_limits<int64_t>::max();
  }
  if (!v.is_number_integer()) field_error(name, "expected an integer, got " + shown(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return std::numeric_limits<int64_t>::max();
  return v.get<int64_t>();
}

int clamped(int64_t x)
{
  return static_cast<int>(std::max<int64_t>(std::min<int64_t>(x, std::numeric_limits<int>::max()),
                                            std::numeric_limits<int>::min()));
}

const json &read_object(const std::string &name, const json &v)
{
  if (!v.is_object()) field_error(name, "expected a JSON object, got " + shown(v));
  return v;
}

std::string python_str(const json &v)    // str() of a JSON value, where only a string can be right
{
  return v.is_string() && !is_marker(v) ? v.get<std::string>() : "\x01" + v.dump();
}

std::vector<std::string> read_strings(const std::string &name, const json &v, const std::string &what)
{
  if (!v.is_array()) field_error(name, "expected " + what + ", got " + shown(v));
  std::vector<std::string> out;
  for (const auto &item : v) {
    if (!item.is_string() || is_marker(item)) field_error(name, "expected " + what + ", got " + shown(v));
    out.push_back(item.get<std::string>());
  }
  return out;
}

// card_parts.read_units then the comparison with the expected units (old "Å" spellings of the length read as
// angstrom; a quantity that is not known, or a value that differs, is refused)
void check_units(const std::string &name, const json &v, const std::vector<std::pair<std::string, std::string>> &expected,
                 bool all_required)
{
  const json &units = read_object(name, v);
  for (const auto &item : units.items()) {
    std::string value = python_str(item.value());
    if (item.key() == "length" && (value == "Å" || value == "A" || value == "Angstrom" || value == "angstroms"))
      value = "angstrom";
    bool known = false;
    for (const auto &e : expected) {
      if (e.first != item.key()) continue;
      known = true;
      if (value != e.second) field_error(name, item.key() + " must be '" + e.second + "', got " + shown(item.value()));
    }
    if (!known) field_error(name, "unknown quantity '" + item.key() + "'");
  }
  if (all_required)
    for (const auto &e : expected)
      if (!units.contains(e.first)) field_error(name, "lacks " + e.first);
}

bool is_sha256(const std::string &s, bool several)    // card._SHA256: 64 hex digits ("+"-joined when several)
{
  size_t k = 0;
  while (true) {
    if (s.size() < k + 64) return false;
    for (size_t j = k; j < k + 64; j++)
      if (!std::isdigit(static_cast<unsigned char>(s[j])) && !(s[j] >= 'a' && s[j] <= 'f')) return false;
    k += 64;
    if (k == s.size()) return true;
    if (!several || s[k] != '+') return false;
    k++;
  }
}

void read_electrostatics(const json &e, const std::vector<int> &numbers, Card &c)
{
  const std::string name = "long_range.electrostatics";
  read_object(name, e);
  c.elec_mode = python_str(e.value("mode", json("fixed")));
  std::string method = python_str(e.value("method", json("auto")));
  for (auto &ch : method) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  c.elec_method = method;
  std::vector<int> charged;
  if (e.contains("charges") && truthy(e["charges"])) {
    for (const auto &item : read_object(name + ".charges", e["charges"]).items()) {
      const std::string &key = item.key();
      int z = -1;
      if (!key.empty() && key.find_first_not_of("0123456789") == std::string::npos) {
        const auto digits = key.find_first_not_of('0');    // Python's int("008") is 8
        z = digits == std::string::npos ? 0 : key.size() - digits > 4 ? 1000 : std::atoi(key.c_str() + digits);
      }
      else if (key == "X")
        z = 0;    // ASE's placeholder element
      else if (atomic_number(key) > 0)
        z = atomic_number(key);
      else
        field_error(name + ".charges", "'" + key + "' is neither an atomic number nor an element symbol");
      read_number(name + ".charges[" + key + "]", item.value());
      charged.push_back(z);
    }
  }
  const double accuracy = e.contains("accuracy") ? read_number(name + ".accuracy", e["accuracy"]) : 1e-4;
  for (const char *key : {"r_cut", "alpha", "grid_spacing"})
    if (e.contains(key) && !e[key].is_null()) read_number(name + "." + key, e[key]);
  c.elec_ewald_max_atoms = e.contains("ewald_max_atoms")
      ? clamped(read_integer(name + ".ewald_max_atoms", e["ewald_max_atoms"])) : 0;
  // card.ModelCard._validate_long_range
  if (method != "auto" && method != "direct" && method != "ewald" && method != "pme")
    field_error(name + ".method", "must be one of auto, direct, ewald, pme, got " + shown(e.value("method", json())));
  if (c.elec_mode == "fixed")
    for (int z : numbers)
      if (std::find(charged.begin(), charged.end(), z) == charged.end())
        field_error(name + ".charges", "no fixed charge for Z=" + std::to_string(z));
  if (!(accuracy > 0.0)) field_error(name + ".accuracy", "must be positive");
  if (e.contains("units"))
    check_units(name + ".units", e["units"], {{"length", "angstrom"}, {"energy", "eV"}, {"charge", "e"}}, true);
  // what the plugin's own Ewald reads (predicted charges only; descriptive entries in Python)
  auto number_or_zero = [&e](const char *key) {
    return e.contains(key) && e[key].is_number() ? e[key].get<double>() : 0.0;
  };
  c.elec_r_cut = number_or_zero("r_cut");
  c.elec_smearing = number_or_zero("smearing");
  c.elec_lr_wavelength = number_or_zero("lr_wavelength");
  if (!(c.elec_lr_wavelength > 0.0) && number_or_zero("k_cutoff") > 0.0)
    c.elec_lr_wavelength = M_PI / number_or_zero("k_cutoff");
  c.elec_coulomb_constant = number_or_zero("coulomb_constant");
  c.elec_accuracy = accuracy;    // checked positive above
  c.elec_background = e.contains("neutralizing_background") && truthy(e["neutralizing_background"]);
}

void read_dispersion(const json &d, Card &c)
{
  const std::string name = "long_range.dispersion";
  read_object(name, d);
  for (const char *key : {"s6", "s8", "a1", "a2", "s9", "smooth_width"})
    if (d.contains(key)) read_number(name + "." + key, d[key]);
  c.dispersion = true;
  c.d3_cutoff = d.contains("cutoff") ? read_number(name + ".cutoff", d["cutoff"]) : 0.0;
  c.d3_cutoff_cn = d.contains("cutoff_cn") ? read_number(name + ".cutoff_cn", d["cutoff_cn"]) : 0.0;
  c.d3_tail = d.contains("tail_correction") && truthy(d["tail_correction"]);
  c.d3_three_body = d.contains("three_body") && truthy(d["three_body"]);
  if (c.d3_three_body) {
    c.d3_cutoff_three_body =
        d.contains("cutoff_three_body") ? read_number(name + ".cutoff_three_body", d["cutoff_three_body"]) : 0.0;
    if (!(c.d3_cutoff_three_body > 0.0))
      field_error(name, "three_body is true but cutoff_three_body is " + std::to_string(c.d3_cutoff_three_body) +
                  " Å (it must be positive)");
  }
  if (d.contains("units")) check_units(name + ".units", d["units"], {{"length", "angstrom"}, {"energy", "eV"}}, true);
  if (!(c.d3_cutoff > 0.0 && c.d3_cutoff_cn > 0.0))
    field_error(name, "cutoff " + std::to_string(c.d3_cutoff) + " Å and cutoff_cn " + std::to_string(c.d3_cutoff_cn) +
                " Å (both must be positive)");
}

void read_compiled(const json &k, Card &c)
{
  read_object("compiled", k);
  std::string values[4];
  const char *keys[4] = {"kind", "file", "sha256", "torch_version"};
  for (int j = 0; j < 4; j++) {
    if (!k.contains(keys[j]) || !k[keys[j]].is_string() || is_marker(k[keys[j]]) || k[keys[j]].get<std::string>().empty())
      field_error(std::string("compiled.") + keys[j], "expected a non-empty string");
    values[j] = k[keys[j]].get<std::string>();
  }
  if (values[1].find_first_of("/\\") != std::string::npos)
    field_error("compiled.file", "a file name in the model's folder, got " + shown(k["file"]));
  if (k.contains("threads")) read_integer("compiled.threads", k["threads"]);
  const int64_t interface = k.contains("interface") ? read_integer("compiled.interface", k["interface"]) : 1;
  if (!is_sha256(values[2], false)) field_error("compiled.sha256", "not a SHA-256 hex digest");
  c.compiled = {values[0], values[1], values[2], values[3], clamped(interface), "", "", 0};
  if (!k.contains("layers") || !truthy(k["layers"])) return;    // packaged before the layer programs
  const json &l = k["layers"];
  read_object("compiled.layers", l);
  for (const char *key : {"file", "sha256"})
    if (!l.contains(key) || !l[key].is_string() || is_marker(l[key]) || l[key].get<std::string>().empty())
      field_error(std::string("compiled.layers.") + key, "expected a non-empty string");
  c.compiled.layers_file = l["file"].get<std::string>();
  c.compiled.layers_sha256 = l["sha256"].get<std::string>();
  if (c.compiled.layers_file.find_first_of("/\\") != std::string::npos)
    field_error("compiled.layers.file", "a file name in the model's folder, got " + shown(l["file"]));
  if (!is_sha256(c.compiled.layers_sha256, false)) field_error("compiled.layers.sha256", "not a SHA-256 hex digest");
  c.compiled.layers_interface =
      clamped(l.contains("interface") ? read_integer("compiled.layers.interface", l["interface"]) : 1);
}
}    // namespace

Card parse_card(const std::string &text)
{
  json meta;
  try {
    meta = json::parse(mark_special_numbers(text));
  } catch (const std::exception &e) {
    throw ModelError("model card is not valid JSON: " + first_line(e.what()));
  }
  if (!meta.is_object()) throw ModelError("model card is not a JSON object, the file is corrupt");
  Card c;
  // as mlmd.deploy.card.ModelCard.from_dict then validate, in that order
  c.format_version = clamped(meta.contains("format_version") ? read_integer("format_version", meta["format_version"])
                                                             : read_integer("format_version", json()));
  c.mlmd_version = meta.contains("mlmd_version") ? python_str(meta["mlmd_version"]) : "?";
  if (!c.mlmd_version.empty() && c.mlmd_version[0] == '\x01') c.mlmd_version = c.mlmd_version.substr(1);
  for (const char *key : {"atomic_numbers", "r_cut", "n_layers"})
    if (!meta.contains(key)) field_error(key, "missing");
  if (!meta["atomic_numbers"].is_array())
    field_error("atomic_numbers", "expected a list, got " + shown(meta["atomic_numbers"]));
  for (const auto &z : meta["atomic_numbers"]) c.atomic_numbers.push_back(clamped(read_integer("atomic_numbers", z)));
  if (meta.contains("elements") && !meta["elements"].is_null()) {
    c.elements = read_strings("elements", meta["elements"], "a list of element symbols");
  } else {
    for (int z : c.atomic_numbers) c.elements.push_back(element_symbol(z));
  }
  if (meta.contains("entry_points") && truthy(meta["entry_points"])) {
    c.entry_points = read_strings("entry_points", meta["entry_points"], "a list of method names");
    c.entry_points_listed = true;
  } else {
    c.entry_points_listed = meta.contains("entry_points");    // present but empty: lists nothing
  }
  if (meta.contains("epochs")) {
    const json &epochs = meta["epochs"];
    if (epochs.is_array())
      for (const auto &e : epochs) read_integer("epochs", e);
    else if (!epochs.is_null())
      read_integer("epochs", epochs);
  }
  c.r_cut = read_number("r_cut", meta["r_cut"]);
  c.n_layers = clamped(read_integer("n_layers", meta["n_layers"]));
  c.interaction_range = meta.contains("interaction_range") ? read_number("interaction_range", meta["interaction_range"])
                                                           : 0.0;
  if (c.interaction_range == 0.0) c.interaction_range = c.r_cut * c.n_layers;    // 0: computed
  c.dtype = meta.contains("dtype") ? python_str(meta["dtype"]) : "float32";
  if (meta.contains("units"))
    check_units("units", meta["units"], {{"length", "angstrom"}, {"energy", "eV"}, {"charge", "e"}}, false);
  c.n_members = clamped(meta.contains("n_members") ? read_integer("n_members", meta["n_members"]) : 1);
  const json long_range = meta.value("long_range", json());
  json elec, disp;
  if (truthy(long_range)) {
    for (const auto &item : read_object("long_range", long_range).items()) {
      if (item.key() == "electrostatics")
        elec = item.value();
      else if (item.key() == "dispersion")
        disp = item.value();
      else if (truthy(item.value()))
        field_error("long_range", "long-range term '" + item.key() + "' is not known to this mlmd");
    }
  }
  c.charges_mode = meta.contains("charges_mode") ? python_str(meta["charges_mode"]) : "none";
  c.min_distance_listed = meta.contains("min_distance");    // if not, load() asks the module, then the default
  if (c.min_distance_listed) c.min_distance = read_number("min_distance", meta["min_distance"]);
  for (const char *key : {"hparams", "metrics"})
    if (meta.contains(key) && truthy(meta[key])) read_object(key, meta[key]);
  if (meta.contains("training_number_density") && !meta["training_number_density"].is_null()) {
    if (!(read_number("training_number_density", meta["training_number_density"]) > 0.0))
      field_error("training_number_density", "must be positive");
  }
  if (meta.contains("training_domain")) c.training_domain_json = meta["training_domain"].dump();
  if (meta.contains("compiled") && truthy(meta["compiled"])) read_compiled(meta["compiled"], c);

  // validate(): the species
  if (c.atomic_numbers.empty()) field_error("atomic_numbers", "the model knows no element");
  for (int z : c.atomic_numbers)
    if (z < 1 || z > MAX_ATOMIC_NUMBER) field_error("atomic_numbers", "not an atomic number: " + std::to_string(z));
  for (size_t a = 0; a < c.atomic_numbers.size(); a++)
    for (size_t b = a + 1; b < c.atomic_numbers.size(); b++)
      if (c.atomic_numbers[a] == c.atomic_numbers[b]) field_error("atomic_numbers", "repeated elements");
  std::string symbols = "[", numbers = "[";
  for (size_t k = 0; k < c.elements.size(); k++) symbols += (k ? ", \"" : "\"") + c.elements[k] + "\"";
  for (size_t k = 0; k < c.atomic_numbers.size(); k++) numbers += (k ? ", " : "") + std::to_string(c.atomic_numbers[k]);
  for (const auto &symbol : c.elements)
    if (atomic_number(symbol) == 0)
      throw ModelError("model card field elements " + symbols + "]: '" + symbol + "' is not an element symbol");
  bool same = c.elements.size() == c.atomic_numbers.size();
  for (size_t k = 0; same && k < c.elements.size(); k++)
    same = c.elements[k] == element_symbol(c.atomic_numbers[k]);
  if (!same)
    throw ModelError("model card field elements " + symbols + "] does not match its atomic_numbers " + numbers +
                     "]: the card was edited after packaging; refusing to load it");
  if (!(c.r_cut > 0.0)) field_error("r_cut", "must be positive, got " + shown(meta["r_cut"]));
  if (c.n_layers < 1) field_error("n_layers", "must be at least 1, got " + shown(meta["n_layers"]));
  // interaction_range = n_layers * r_cut: in load(), after the card is held against the module
  if (c.dtype != "float32" && c.dtype != "float64")
    field_error("dtype", "must be float32 or float64, got " + shown(meta.value("dtype", json())));
  if (c.n_members < 1) field_error("n_members", "must be at least 1");
  // min_distance against r_cut: in load(), once an older card's value is taken from the module
  if (c.charges_mode != "none" && c.charges_mode != "fixed" && c.charges_mode != "predicted")
    field_error("charges_mode", "must be none, fixed or predicted, got " + shown(meta["charges_mode"]));
  if (truthy(disp)) read_dispersion(disp, c);
  if (truthy(elec)) read_electrostatics(elec, c.atomic_numbers, c);
  const std::string mode = truthy(elec) ? c.elec_mode : "none";
  if (c.charges_mode != mode)
    field_error("charges_mode", "'" + c.charges_mode + "', but long_range.electrostatics says " +
                (truthy(elec) ? shown(elec.value("mode", json("fixed"))) : "'none'"));
  for (const char *key : {"weights_sha256", "training_data_sha256"}) {
    if (!meta.contains(key) || meta[key].is_null()) continue;
    if (!meta[key].is_string() || !is_sha256(meta[key].get<std::string>(), true))    // a marker is no digest
      field_error(key, "not a SHA-256 hex digest: " + shown(meta[key]));
  }
  if (meta.contains("weights_sha256") && meta["weights_sha256"].is_string())
    c.weights_sha256 = meta["weights_sha256"].get<std::string>();
  return c;
}

}    // namespace mlmd
