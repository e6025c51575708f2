#!/usr/bin/env bash
# Installs the peer MLIPs (MACE, NequIP) each into its own folder, benchmarks/.peers/<name>, without touching the
# shared environment: --no-deps and an explicit list of only what each peer needs beyond it (torch, numpy, scipy,
# ase, matplotlib, opt_einsum(-fx), PyYAML, tqdm come from the environment; no second torch). The benchmark runs
# each peer in its own subprocess with PYTHONPATH=benchmarks/.peers/<name>, so MACE's e3nn 0.4.4 never meets
# mlmd's and NequIP's e3nn 0.6.
#     bash benchmarks/setup_peers.sh            # both peers
#     bash benchmarks/setup_peers.sh mace       # one
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=benchmarks/.peers

mace=(mace-torch==0.3.16 e3nn==0.4.4 torch-ema==0.3 prettytable==3.18.0 wcwidth==0.9.4 matscipy==1.3.1
      h5py==3.16.0 torchmetrics==1.9.0 lightning-utilities==0.15.3 python-hostlist==2.3.0 configargparse==1.9.0
      gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 lmdb==3.0.0 orjson==3.13.0 pandas==3.1.1)
nequip=(nequip==0.19.1 nequip-allegro==0.8.3 matscipy==1.3.1 lmdb==3.0.0 hydra-core==1.3.8 omegaconf==2.3.0
        antlr4-python3-runtime==4.9.3 lightning==2.6.6 pytorch-lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0
        requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.2 certifi)

install() {  # name, packages...
  local name=$1; shift
  if [ -f "$DEST/$name/.done" ]; then echo "$name: already in $DEST/$name"; return; fi
  rm -rf "${DEST:?}/$name"
  "$PY" -m pip install --quiet --no-deps --target "$DEST/$name" "$@"
  # the environment's torch must be the one imported: a peer folder holding its own would shadow it
  if [ -d "$DEST/$name/torch" ]; then echo "$name: a second torch was installed; refusing" >&2; exit 1; fi
  touch "$DEST/$name/.done"
  echo "$name: installed into $DEST/$name"
}

for peer in "${@:-mace nequip}"; do
  for p in $peer; do
    case $p in
      mace) install mace "${mace[@]}" ;;
      nequip) install nequip "${nequip[@]}" ;;
      *) echo "unknown peer $p (mace, nequip)" >&2; exit 2 ;;
    esac
  done
done
