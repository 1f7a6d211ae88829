#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one go, in the repository root of a GPU machine:
#
#     bash benchmarks/gpu/run.sh OUT_DIR
#
# Parts, in order of importance, each under its own time limit and all within JAXKD_GPU_BUDGET seconds (default
# 540: a part gets at most what is left, and is skipped when under 30 s is left), so a slow or failing part
# cannot starve the rest:
#   headline   KD wrn40_2 -> wrn16_2, batch 64, float32: jaxkd (step and a 50,000-image epoch) against PyTorch
#              eager on the same card
#   seeds      the same KD step as 2, 4 and 8 runs in one program (jaxkd.tools.multi_run), aggregate images/s against
#              the one-run step
#   headline_compiled   the same KD step against PyTorch eager, torch.compile default and torch.compile
#              reduce-overhead (CUDA graphs) side by side (apart from headline: a record is written when its
#              command ends, and inductor's compile time on the card is unknown)
#   pairs      RepDistiller's 13 pairs, KD, float32, against PyTorch eager
#   full_run   the 240-epoch KD run wrn40_2 -> wrn16_2 as a user runs it (jaxkd.train on synthetic CIFAR-100:
#              an evaluation every epoch, checkpoints, exports), stopped at its time limit and then estimated
#              from its epoch times (jaxkd.bench_full_run); run alone it gets the whole budget
#   pairs_compiled   the 13 pairs, KD, float32, against torch.compile reduce-overhead
#   pairs_crd  the 13 pairs, CRD, float32, against PyTorch eager (whose step is CE + KD only: flattering it)
#   pairs_bf16 the 13 pairs, KD and CRD, bfloat16 (PyTorch: autocast), against PyTorch eager
#   imagenet   the ImageNet pairs ResNet-34 -> ResNet-18 and ResNet-50 -> MobileNetV1, mdistiller's KD recipe at
#              224 px (synthetic images of 1000 classes), batch 256, float32, against PyTorch eager
#   imagenet_bf16   the same in bfloat16 (PyTorch: autocast): whether mixed precision should be their default
# Each bench command writes a record per pair as it goes, so a part cut short by its limit keeps the pairs done.
# JAXKD_GPU_PARTS=name,name runs only those (e.g. JAXKD_GPU_PARTS=full_run JAXKD_GPU_BUDGET=590 for the whole
# 240 epochs in a window of its own). steps_per_dispatch is the config's automatic choice (20 on GPU).
# JAXKD_GPU_DRY_RUN=1 shrinks everything (2 steps, batch 8, tiny epochs, 3-epoch full run on 512 images, the
# pairs' torch.compile through the aot_eager backend, every part's limit x10 or JAXKD_GPU_LIMIT_SCALE) to check the
# script end to end on a CPU.
# The parts share a persistent JAX compilation cache (and PyTorch's inductor cache), so a program compiled by
# an earlier part loads in a later one: a record's compile_s then counts a cache load, not a compile.
# OUT_DIR receives gpu_run.log, and gpu_results.tgz with the log and every record (JSON) so far, repacked after
# each part (unpack it into benchmarks/results/).
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
scratch=$(mktemp -d /tmp/jaxkd-gpu-scratch.XXXX)
mkdir -p "$out"
log=$out/gpu_run.log
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target /tmp/jaxkd-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/jaxkd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxkd-jax-cache}

if [[ ${JAXKD_GPU_DRY_RUN:-0} == 1 ]]; then
    long=(--steps 2 --repeats 1 --warmup_steps 1 --config.batch_size=8 --epoch_images 64)
    medium=(--steps 2 --repeats 1 --warmup_steps 1 --config.batch_size=8)
    short=(--steps 2 --repeats 1 --warmup_steps 1 --config.batch_size=8)
    pairs_compile=(--torch_compile_backend aot_eager)
    full_run=(--train_images 512 --test_images 256 -- --config.epochs=3 --config.checkpoint_every_epochs=2)
    imagenet_batch=()
    limit_scale=${JAXKD_GPU_LIMIT_SCALE:-10}  # a CPU compiles for minutes what a GPU machine compiles in seconds
else
    long=(--steps 100 --repeats 5 --epoch_images 50000)
    medium=(--steps 100 --repeats 5)
    short=(--steps 40 --repeats 3)
    pairs_compile=()
    full_run=()
    imagenet_batch=(--config.batch_size=256)
    limit_scale=${JAXKD_GPU_LIMIT_SCALE:-1}
fi
bench=("$python" -m jaxkd.bench --out "$records" --config configs/kd_wrn.py)

deadline=$((SECONDS + ${JAXKD_GPU_BUDGET:-540}))
part() {  # part NAME SECONDS COMMAND...: runs it under a time limit, logs it, packs the results so far
    local name=$1 limit=$(($2 * limit_scale)) left=$((deadline - SECONDS))
    shift 2
    if [[ -n ${JAXKD_GPU_PARTS:-} && ",$JAXKD_GPU_PARTS," != *",$name,"* ]]; then
        return
    fi
    if ((left < 30)); then
        echo "== skipped $name (${left} s of the budget left): $*" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $(date -u +%H:%M:%S) $name (at most ${limit} s): $*" | tee -a "$log"
    # the part's own limit, for a command that stops itself in time (jaxkd.bench_full_run)
    JAXKD_PART_LIMIT=$limit timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log"
    echo "== exit ${PIPESTATUS[0]} ($name)" | tee -a "$log"
    cp "$log" "$records/" && tar czf "$out/gpu_results.tgz.tmp" -C "$records" . && \
        mv "$out/gpu_results.tgz.tmp" "$out/gpu_results.tgz"
}

part env 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
part env 60 "$python" -c "import jax, flax, optax, orbax.checkpoint, torch; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__); print(jax.devices()); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'torch: no CUDA')"
part headline 120 "${bench[@]}" "${long[@]}"
part seeds 150 "${bench[@]}" "${short[@]}" --num_runs 2,4,8 --notorch
part headline_compiled 300 "${bench[@]}" "${medium[@]}" --torch_modes eager,default,reduce-overhead
part pairs 240 "${bench[@]}" "${short[@]}" --pairs repdistiller --methods kd
part full_run 100 "$python" -m jaxkd.bench_full_run --workdir "$scratch/full_run" --out "$records" \
    --time_limit=-20 "${full_run[@]}"
part pairs_compiled 300 "${bench[@]}" "${short[@]}" --pairs repdistiller --methods kd --torch_modes reduce-overhead \
    "${pairs_compile[@]}"
part pairs_crd 240 "${bench[@]}" "${short[@]}" --pairs repdistiller --methods crd
part pairs_bf16 240 "${bench[@]}" "${short[@]}" --pairs repdistiller --methods kd,crd --dtype bfloat16
imagenet=("$python" -m jaxkd.bench --out "$records" --config configs/imagenet.py:tv_resnet34,tv_resnet18,kd \
    --config.teacher.checkpoint= --pairs tv_resnet34:tv_resnet18,tv_resnet50:MobileNetV1)
part imagenet 300 "${imagenet[@]}" "${short[@]}" "${imagenet_batch[@]}"
part imagenet_bf16 300 "${imagenet[@]}" "${short[@]}" "${imagenet_batch[@]}" --dtype bfloat16
