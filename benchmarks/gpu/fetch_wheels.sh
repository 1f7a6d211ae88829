#!/usr/bin/env bash
# Downloads into .whl/ the wheels of the pure-Python packages jaxkd imports beyond what a GPU machine's Python
# typically has already (JAX with CUDA, Flax, Optax, Orbax, PyTorch, NumPy, absl, scikit-learn): for a machine
# that cannot reach a package index. Run it on a machine that can, in the repository root; then carry .whl/ to
# the GPU machine with the checkout, where benchmarks/gpu/run.sh installs them. .whl/ is kept out of git.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# ml-collections: the configs; tensorboardX: the TensorBoard event files (jaxkd.io.metric_log).
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
    "ml-collections>=0.1.1" "tensorboardX>=2.6"
ls -l .whl
