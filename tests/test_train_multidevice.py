"""The train step on 1 and on 8 (simulated CPU) devices gives the same state: the batch is split over a `data`
mesh axis, BN statistics and losses reduce over the global batch, the state (CRD's memory banks included) stays
replicated; so does the init stage's step (AB's, with SaliencyMix), and the last partial batch of RepDistiller's
pipeline, which 8 devices do not divide (run replicated; CRD refreshes that batch's bank rows), there with CRD's
banks sharded by rows (crd.bank_layout "sharded": 1440 padded rows, 180 per device). A train-state checkpoint
written on one layout restores bitwise on the other (CRD's: parameters, statistics, momentum, memory banks and
keys; the other methods' states hold no other kinds of leaves). CRD's term with sharded banks equals the term with
replicated ones (loss, gradients, banks, Z), with no bank gathered whole, and its state restores sharded. One subprocess for all of it: each
start of an 8-device JAX costs seconds, and each of these programs compiles once per layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp, torch
from ml_collections import ConfigDict
from configs import crd_kd_wrn, repdistiller
from jaxkd.pytorch.torch_models import get_torch_model
from jaxkd.engine import init_stage
from jaxkd.engine.initial_state import INITIAL_STATE_CPU_OPTIONS, create_train_state
from jaxkd.engine.setup import build
from jaxkd.engine.step import make_train_step, zero_sums
from jaxkd.data import epoch_permutation
from jaxkd.engine.mesh import batch_sharded, data_mesh, replicated, train_state_sharding
from jaxkd.io.run_checkpoint import RunCheckpoints
from jaxkd.methods import get_method
from jaxkd.methods.crd import contrast_term
from jaxkd.methods.crd import init_state as crd_state
from jaxkd.methods.crd_kernels import BankBlocks, Negatives

# CRD + KD (CE, the KD term, CRD's banks, the teacher's forward): one full-batch step from the same state (CRD
# amplifies float noise about 5x more per step than KD), and the epoch's last partial batch (RepDistiller's
# pipeline keeps it: on digits at batch 64, 22 full batches and one of 25). AB: two steps of its init stage
# (connectors and the student's feature modules), SaliencyMix on. (The student alone is this step without the
# teacher's terms: not run separately.)
STEPS = {"crd_kd": 1, "crd_kd_last_batch": 1, "ab": 2}
assert jax.device_count() == 8, jax.devices()
torch.manual_seed(0)
torch.save(get_torch_model("resnet8", 10).state_dict(), f"{sys.argv[1]}/teacher.pth")
report = {}
for case in STEPS:
    config = repdistiller.get_config("resnet8,resnet8,ab") if case == "ab" else crd_kd_wrn.get_config()
    config.data.source, config.model = "digits", "resnet8"
    config.teacher.checkpoint, config.teacher.arch = f"{sys.argv[1]}/teacher.pth", "resnet8"
    if case == "ab":
        config.data.saliencymix, config.data.saliencymix_prob = True, 1.0
    else:
        config.crd.nce_k = 256
    if case == "crd_kd_last_batch":  # the banks sharded over the devices (crd.bank_layout), the batch not
        config.crd.bank_layout = "sharded"
    finals, states = {}, {}
    for devices in (1, 8):
        setup = build(config, jax.devices()[:devices])
        whole = replicated(setup.mesh)
        assert setup.mesh.devices.size == devices
        state = create_train_state(setup)
        if case == "crd_kd_last_batch":
            report[f"{devices}:layout"] = [setup.steps_per_epoch, setup.last_batch_size]
            state = state.replace(step=jnp.asarray(setup.steps_per_epoch - 1, jnp.int32))
        state = jax.device_put(state, train_state_sharding(setup.mesh, state, setup.method))  # as the loop places it
        teacher = jax.device_put(setup.teacher.variables, whole)
        data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), whole)
        permutation = jax.jit(functools.partial(epoch_permutation, num_examples=len(setup.train)),
                              out_shardings=whole)(jax.random.PRNGKey(config.seed), 0)
        if case == "ab":  # the init stage's step instead of training's
            stage = setup.method.init_stage(config)
            init_state = init_stage.initial_init_state(setup, state, stage)
            step, sums = (init_stage.make_init_step(setup, stage, config.batch_size),
                          jax.device_put(np.zeros((), np.float32), whole))
            for _ in range(STEPS[case]):
                init_state, sums = step(init_state, sums, jax.random.PRNGKey(1), teacher, *data, permutation)
            state = init_stage.merged_into(state, init_state)
        else:
            last = case == "crd_kd_last_batch"
            step = make_train_step(setup, batch_size=setup.last_batch_size if last else None)
            before, sums = jax.device_get(state.method_state), zero_sums(setup)
            for _ in range(STEPS[case]):
                state, sums = step(state, sums, teacher, *data, permutation)
            if last:
                after = jax.device_get(state.method_state)
                first = (setup.steps_per_epoch - 1) * config.batch_size
                rows = np.sort(np.asarray(setup.train.index)[np.asarray(permutation)[first:]])
                for bank in ("bank_student", "bank_teacher"):
                    moved = np.flatnonzero(np.any(after[bank] != before[bank], axis=1))
                    report[f"{devices}:{bank} moved the last batch's rows"] = moved.tolist() == rows.tolist()
                report[f"{devices}:step"] = int(state.step)
                report[f"{devices}:bank rows per device"] = {
                    shard.data.shape[0] for shard in state.method_state["bank_student"].addressable_shards}.pop()
        finals[devices] = jax.device_get((state.params, state.batch_stats, state.method_state, sums))
        states[devices] = state
    # Per tensor: max |diff| over (1e-4 * max |value| + 1e-5); > 1 fails.
    worst = 0.0
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(finals[1]),
                                 jax.tree_util.tree_leaves_with_path(finals[8])):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        worst = max(worst, float(np.max(np.abs(a - b), initial=0)) / (1e-4 * float(np.max(np.abs(a), initial=0))
                                                                       + 1e-5))
    report[case] = worst
    # Checkpoint layouts: saved on 1 device -> restored on 8, and 8 -> 1, bitwise, on the target's devices.
    for saved, target in ((1, 8), (8, 1)) if case == "crd_kd" else ():
        checkpoints = RunCheckpoints(f"{sys.argv[1]}/{case}_{saved}_to_{target}", keep=1)
        checkpoints.save(states[saved], {"best_top1": 0.0, "best_epoch": 0})
        restored, _ = checkpoints.restore(states[target])
        checkpoints.close()
        for a, b in zip(jax.tree.leaves(states[saved]), jax.tree.leaves(restored), strict=True):
            assert np.array_equal(jax.device_get(a), jax.device_get(b)), (case, saved, target)
            assert len(b.sharding.device_set) == target, (b.sharding, target)
        report["crd_restores"] = True
    if case == "crd_kd_last_batch":  # the sharded banks padded for 8 devices (1440 rows): the main process, on
        checkpoints = RunCheckpoints(f"{sys.argv[1]}/crd_sharded_run", keep=1)  # 1 device, refuses to resume it
        checkpoints.save(states[8], {"best_top1": 0.0, "best_epoch": 0})
        checkpoints.close()

# CRD's sharded banks (crd.bank_layout "sharded") against the replicated ones, the term alone on the 8 devices
# (jaxkd.methods.crd.contrast_term: loss, gradients with respect to both embeddings, updated banks and Z):
# N = 301 rows (padded to 304), K 245: classes 0 and 1 leave fewer other-class examples (201, 241), so their
# anchors draw with replacement, the others without; two steps from the first (Z set), the sharded term in two
# chunks of rows; then a checkpoint of the sharded state restored onto the same mesh.
mesh, rng = data_mesh(), np.random.default_rng(0)
n, rows, k = 301, 16, 245
labels = rng.permutation(np.repeat(np.arange(5), [100, 60, 50, 50, 41])).astype(np.int32)
embeddings = rng.standard_normal((2, 2, rows, 128)).astype(np.float32)
embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
indices = [rng.choice(n, rows, replace=False).astype(np.int32) for _ in range(2)]
padded = crd_state(jax.random.PRNGKey(3), labels, 128, k, row_multiple=8)
runs = {}
for layout in ("replicated", "sharded"):
    method = get_method("crd", ConfigDict({"crd": {"bank_layout": layout}}))
    blocks = BankBlocks(mesh.abstract_mesh, n, 304) if layout == "sharded" else None
    state = padded if blocks else {name: value[:n] if value.ndim and value.shape[0] == 304 else value
                                   for name, value in padded.items()}  # the padding's rows cut off
    state = jax.device_put(state, method.state_sharding(mesh, state))

    @functools.partial(jax.jit, compiler_options=INITIAL_STATE_CPU_OPTIONS)  # compiled fast: small, run twice
    def step(state, embed_student, embed_teacher, labels, index, key, method=method, blocks=blocks):
        def term(embed_student, embed_teacher):
            loss, state_out, _ = contrast_term(embed_student, embed_teacher, state, index,
                                               Negatives(jnp.arange(rows), labels, rng=key), index, num_negatives=k,
                                               temperature=0.07, momentum=0.5, chunk_elements=8 * 38, blocks=blocks)
            return loss, state_out
        (loss, state), grads = jax.value_and_grad(term, argnums=(0, 1), has_aux=True)(embed_student, embed_teacher)
        return loss, jax.lax.with_sharding_constraint(state, method.state_sharding(mesh, state)), grads

    results = []
    for i, index in enumerate(indices):
        inputs = (state, *jax.device_put((*embeddings[i], labels[index], index), batch_sharded(mesh)),
                  jax.random.PRNGKey(i))
        if blocks and i == 0:
            hlo = step.lower(*inputs).compile().as_text()
            report["crd gathers"] = sorted({line.split("=")[1].split()[0] for line in hlo.splitlines()
                                            if " all-gather(" in line or " all-gather-start(" in line})
        loss, state, grads = step(*inputs)
        results.append(jax.device_get((loss, grads, {name: value[:n] if value.ndim else value
                                                     for name, value in state.items()})))
    runs[layout] = results
report["crd sharded specs"] = {name: str(value.sharding.spec) for name, value in state.items()}
report["crd bank shard rows"] = state["bank_student"].addressable_shards[0].data.shape[0]
with ocp.StandardCheckpointer() as checkpointer:  # as RunCheckpoints saves and restores the train state
    checkpointer.save(f"{sys.argv[1]}/crd_sharded", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(f"{sys.argv[1]}/crd_sharded", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
report["crd restored"] = all(np.array_equal(jax.device_get(state[name]), jax.device_get(restored[name]))
                             and restored[name].sharding == state[name].sharding for name in state)
# Per tensor: max |diff| / max |value|
report["crd worst"] = max(float(np.max(np.abs(np.asarray(a, np.float64) - b)) / float(np.max(np.abs(a))))
                          for a, b in zip(jax.tree.leaves(runs["replicated"]), jax.tree.leaves(runs["sharded"])))
print("REPORT " + json.dumps(report))
"""


@pytest.mark.slow
def test_eight_devices_step_like_one(tmp_path, monkeypatch):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ")[1])
    # Params, BN statistics, memory banks and summed losses. Only the order of floating-point reductions
    # differs between the layouts; the largest effect is on BN biases, whose gradient is a sum of 65,536
    # nearly cancelling terms (~2e-6 absolute after 2 steps). A real layout bug (per-device BN statistics,
    # per-device loss means) moves running statistics by ~1e-1 and weights by ~1e-3.
    assert report["crd_kd"] <= 1 and report["crd_kd_last_batch"] <= 1 and report["ab"] <= 1, report
    assert report["crd_restores"]
    # RepDistiller's pipeline on digits at batch 64: 22 full batches and one of 25, which 8 devices do not
    # divide: that step runs replicated (the same result), nothing dropped, and it refreshes its own bank rows.
    # CRD's sharded banks: the term to float rounding (the sums over the rows add up per device, then over the
    # devices); what moves between devices is the embeddings, the batch's labels and indices, the per-device
    # counts of the negatives' sampler (all-gathered for the ties, all-reduced otherwise) and the batch's bank
    # rows (all-reduced), never a bank: 304 rows, 38 per device.
    assert report["crd worst"] < 1e-5, report
    assert not any("[304," in shape or "[38," in shape for shape in report["crd gathers"]), report["crd gathers"]
    assert report["crd bank shard rows"] == 38 and report["crd restored"]
    sharded = {"bank_student", "bank_teacher", "labels", "class_order"}
    assert report["crd sharded specs"] == {name: "P('data',)" if name in sharded else "P()"
                                           for name in report["crd sharded specs"]}, report["crd sharded specs"]
    assert (report["1:bank rows per device"], report["8:bank rows per device"]) == (1440, 180)
    _assert_a_sharded_bank_checkpoint_of_8_devices_is_one_line_on_1(tmp_path, monkeypatch)
    for devices in (1, 8):
        assert report[f"{devices}:layout"] == [23, 25]
        assert report[f"{devices}:step"] == 23
        assert report[f"{devices}:bank_student moved the last batch's rows"]
        assert report[f"{devices}:bank_teacher moved the last batch's rows"]


def _assert_a_sharded_bank_checkpoint_of_8_devices_is_one_line_on_1(tmp_path, monkeypatch):
    """The subprocess's CRD run with sharded banks (digits' 1433 training examples padded to 1440 rows for its 8
    devices), resumed in this one-device process (1433 rows): one UserError naming both device counts, before
    the initial state is made (nothing compiled), instead of Orbax's shape error at restore."""
    from configs import crd_kd_wrn
    from jaxkd.engine import loop
    from jaxkd.errors import UserError

    config = crd_kd_wrn.get_config()  # the subprocess's "crd_kd_last_batch" case
    config.data.source, config.model, config.crd.nce_k, config.crd.bank_layout = "digits", "resnet8", 256, "sharded"
    config.teacher.checkpoint, config.teacher.arch = str(tmp_path / "teacher.pth"), "resnet8"
    monkeypatch.setattr(loop, "create_train_state", lambda setup: pytest.fail("the initial state was made first"))
    with pytest.raises(UserError) as refused:
        loop.train_and_evaluate(config, tmp_path / "crd_sharded_run")
    assert str(refused.value) == (
        "crd.bank_layout 'sharded': the checkpoint's memory banks hold 1440 rows, the 1433 examples padded for the "
        "8 devices it was written on; this run has 1 device(s) (1433 rows): resume it on 8 devices (or on any "
        "device count that pads 1433 rows to 1440)")
