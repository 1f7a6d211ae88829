#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one go, in the repository root of a GPU machine:
#
#     bash benchmarks/gpu/run.sh OUT_DIR
#
# In order of importance, each under its own time limit and all within JAXKD_GPU_BUDGET seconds (default 540: a
# part gets at most what is left, and is skipped when under 30 s is left), so a slow or failing part cannot
# starve the rest:
# the KD step wrn40_2 -> wrn16_2 at batch 64 against PyTorch eager on the same card, with a full 50,000-image
# epoch; a one-epoch digits training run as an end-to-end check; the wrn16_2 baseline like KD; KD in bfloat16;
# every method at a shorter length; CRD's sampling and scoring in chunks of 8 rows vs the whole batch at once
# (`crd.chunk_elements`); an A/B of steps_per_dispatch 1 vs 20; and KD at batch 512 (is batch 64 bound by
# launches rather than arithmetic?). steps_per_dispatch is the config's automatic choice (20 on GPU).
# The parts share a persistent JAX compilation cache, so a program compiled by an earlier part loads in a later
# one: a record's compile_s then counts a cache load, not a compile. OUT_DIR receives two files:
# gpu_run.log, and gpu_results.tgz with the log and every bench record (JSON) so far, repacked after each part
# (unpack it into benchmarks/results/).
# Wheels in .whl/ (benchmarks/gpu/fetch_wheels.sh) are installed first, for a machine without a package index.
# PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/../.."
if (($# != 1)); then
    echo "usage: bash benchmarks/gpu/run.sh OUT_DIR" >&2
    exit 2
fi
out=$(realpath -m "$1")
records=$(mktemp -d /tmp/jaxkd-gpu-records.XXXX)
mkdir -p "$out"
log=$out/gpu_run.log
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target /tmp/jaxkd-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/jaxkd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxkd-jax-cache}

deadline=$((SECONDS + ${JAXKD_GPU_BUDGET:-540}))
part() {  # part SECONDS COMMAND...: runs it under a time limit, logs it, packs the results so far
    local limit=$1 left=$((deadline - SECONDS))
    shift
    if ((left < 30)); then
        echo "== skipped (${left} s of the budget left): $*" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $(date -u +%H:%M:%S) $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    echo "== exit ${PIPESTATUS[0]}" | tee -a "$log"
    cp "$log" "$records/" && tar czf "$out/gpu_results.tgz.tmp" -C "$records" . && \
        mv "$out/gpu_results.tgz.tmp" "$out/gpu_results.tgz"
}

part 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
part 60 "$python" -c "import jax, flax, optax, orbax.checkpoint, torch; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__); print(jax.devices()); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'torch: no CUDA')"
bench=("$python" -m jaxkd.bench --out "$records" --steps 100 --repeats 5)
part 150 "${bench[@]}" --config configs/kd_wrn.py --epoch_images 50000
part 90 "$python" -m jaxkd.train --config configs/demo.py:teacher --workdir /tmp/jaxkd-demo-teacher \
    --config.epochs=1 --config.progress_bar=False
part 120 "${bench[@]}" --config configs/baseline.py --config.model=wideresnet16_2 --epoch_images 50000
part 120 "${bench[@]}" --config configs/kd_wrn.py --dtype bfloat16 --epoch_images 50000
part 240 "${bench[@]}" --config configs/kd_wrn.py --methods=all --steps 40 --repeats 3
part 90 "${bench[@]}" --config configs/crd_kd_wrn.py --ab=crd.chunk_elements=524288,4194304 --notorch --steps 40 \
    --repeats 3
part 120 "${bench[@]}" --config configs/kd_wrn.py --ab=steps_per_dispatch=1,20 --notorch
part 90 "${bench[@]}" --config configs/kd_wrn.py --epoch_images 50000 --config.batch_size=512 --steps 40 --notorch
