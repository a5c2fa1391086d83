#!/usr/bin/env bash
# Run the in-process numerical tests against the C kernels compiled with other
# flags (default: AVX2 + FMA contraction, what -march=native gives on most current
# x86-64 machines), in a scratch copy of the committed tree, so that no test
# depends on the vector width or on fused multiply-adds (every build also carries
# the AVX2 + FMA copies of the vector kernels; the tests force each code path in
# turn, see tests/test_hills_kernel.py). The installed package
# is not touched. Usage: scripts/test-kernel-build.sh ["CFLAGS"] [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
flags=${1:-"-march=x86-64-v3 -ffp-contract=fast"}
shift || true
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# the working tree as it is (committed or not), without build products
tar --exclude=./.git --exclude=./build --exclude=./benchmarks/.cache --exclude='*.so' --exclude='*/__pycache__' -cf - . | tar -xf - -C "$scratch"
cd "$scratch"
CFLAGS="$flags" python ckernels/build.py >build.log 2>&1 || { cat build.log; exit 1; }
# the scratch copy is first on sys.path (python -m puts the current folder there)
python - <<'PY'
import biasserver._kernels as k, os
assert os.path.realpath(k.__file__).startswith(os.path.realpath(os.getcwd())), k.__file__
PY
echo "kernels built with CFLAGS='$flags'"
python -m pytest -q -p no:cacheprovider tests/test_symmetry.py tests/test_bias.py tests/test_neighbours.py \
    tests/test_params.py tests/test_calculator.py tests/test_jacobian_convention.py \
    tests/test_hills_kernel.py tests/test_contractions.py tests/test_merges.py "$@"
