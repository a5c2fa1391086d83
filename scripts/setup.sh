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
# several walkers sharing one bias run as an MPI job (mpirun -n N gmetad serve): Open MPI
# from Debian, with its headers so that mpi4py can be built against it when no wheel fits
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
    else
        echo "setup: apt-get not found; install Open MPI (mpirun, mpicc) by hand for walkers" >&2
    fi
fi
# the NNP (package nnp) needs torch, pinned to the CPU build this package is tested with
# (an unpinned torch would pull a multi-GB CUDA build)
python -m pip install -q "torch==2.13.0"
# chgnet: the GeTe reference engine; 0.3.8 ships its weights in the wheel (nothing is
# downloaded at run time) and works with this torch (adds pymatgen: ~240 MB, ~30 s)
python -m pip install -q -e ".[test,nnp,chgnet]"
# mpi4py must run on the system's Open MPI: rebuild it from source against mpicc if not
if command -v mpicc >/dev/null 2>&1 && \
        ! python -c "from mpi4py import MPI; assert 'Open MPI' in MPI.Get_library_version()" 2>/dev/null; then
    python -m pip install -q --no-binary mpi4py --force-reinstall --no-deps "mpi4py>=3.1"
fi
