#!/usr/bin/env bash
# One-time set-up of a fresh machine: system packages (Quantum ESPRESSO and its
# pseudopotentials, for the real-DFT tests and examples), then this package with
# its test extras, compiling the C kernels. Idempotent; needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pw.x >/dev/null 2>&1 || [ ! -d /usr/share/espresso/pseudo ]; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq quantum-espresso quantum-espresso-data >/dev/null
    else
        echo "setup: apt-get not found; install Quantum ESPRESSO (pw.x) by hand for the DFT tests" >&2
    fi
fi
# the NNP (package nnp) needs torch, pinned to the CPU build this package is tested with
# (an unpinned torch would pull a multi-GB CUDA build)
python -m pip install -q "torch==2.13.0"
# chgnet: the GeTe reference engine; 0.3.8 ships its weights in the wheel (nothing is
# downloaded at run time) and works with this torch (adds pymatgen: ~240 MB, ~30 s)
python -m pip install -q -e ".[test,nnp,chgnet]"
