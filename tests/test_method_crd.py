"""CRD: parity with a PyTorch re-implementation of RepDistiller's CRD (loss, gradients, Z, banks, three
consecutive steps), the negative sampler's guarantees and distribution, and CRD end to end through the training
engine on digits (learning, exact resume with the banks)."""

import contextlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.stats
import torch
from ml_collections import ConfigDict

from configs import crd_wrn, default, kd_wrn
from jaxkd.data import Split
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.setup import Teacher, build
from jaxkd.engine.step import make_train_step, zero_sums
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.methods import Batch, Probe, crd_kernels, get_method
from jaxkd.methods.crd import CRD, init_state
from jaxkd.methods.crd_kernels import counts_from_indices, sample_contrast_indices, sample_negative_counts, top_k_mask
from jaxkd.models import ModelOutput, get_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import ONCE, jit_once
from tests.helpers.runs import on_digits, save_random_teacher
from tests.reference.repdistiller_crd import CRDLoss, InstanceSampler

UNEQUAL_CLASS_SIZES = [50, 70, 40, 80, 60]  # N = 300; other-class pools of 220..260 examples


def shuffled_labels(sizes, rng):
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    rng.shuffle(labels)
    return labels


def pooled(array):
    return ModelOutput([], jnp.asarray(array), None)


def crd_config(**settings):
    return ConfigDict({"crd": dict(CRD.defaults, **settings)})


def test_crd_settings_default_to_repdistillers_and_refuse_unknown_keys():
    # no crd section: RepDistiller's defaults and the default chunk bound (the recipe: tests/test_recipes.py)
    assert get_method("crd", default.get_config()).settings == CRD.defaults
    with pytest.raises(UserError, match="unknown config.crd keys"):
        get_method("crd", ConfigDict({"crd": {"nce_kk": 5}}))
    with pytest.raises(UserError, match="crd.bank_layout"):  # the layouts: tests/test_train_multidevice.py
        get_method("crd", ConfigDict({"crd": {"bank_layout": "by_columns"}}))


@pytest.mark.parametrize("k", [64, 400])  # 400 > every class's pool: RepDistiller draws with replacement
def test_three_steps_match_repdistiller(k, rng):
    """Loss, embedding gradients, Z and both banks after each of 3 consecutive steps, for the same contrast
    indices (RepDistiller's sampler); tolerance 1e-5 relative to the largest reference value."""
    labels = shuffled_labels(UNEQUAL_CLASS_SIZES, rng)
    n, batch_size, s_dim, t_dim = len(labels), 16, 32, 48
    method = get_method("crd", crd_config(nce_k=k))
    features = lambda dim: np.abs(rng.standard_normal((batch_size, dim))).astype(np.float32)  # post-ReLU-like
    with pytest.warns(UserWarning, match="with replacement") if k > 220 else contextlib.nullcontext():
        init = method.init(jax.random.PRNGKey(int(rng.integers(1 << 30))),
                           Probe(pooled(features(s_dim)), pooled(features(t_dim)), None, labels, 5))
    params, state = init.variables["params"], init.state
    assert (state["bank_student"].shape, state["z_student"]) == ((n, 128), -1)

    reference = CRDLoss(s_dim, t_dim, 128, n, k)
    with torch.no_grad():  # the same starting point: JAX's embedding weights and banks
        for name, embed in (("embed_student", reference.embed_s), ("embed_teacher", reference.embed_t)):
            embed.linear.weight.copy_(torch.tensor(np.asarray(params[name]["linear"]["kernel"]).T))
            embed.linear.bias.copy_(torch.tensor(np.asarray(params[name]["linear"]["bias"])))
        reference.contrast.memory_v1.copy_(torch.tensor(np.asarray(state["bank_student"])))
        reference.contrast.memory_v2.copy_(torch.tensor(np.asarray(state["bank_teacher"])))
    sampler = InstanceSampler(labels, k)

    @jax.jit
    def step(params, state, f_s, f_t, batch, contrast_idx):
        def term(params):
            out = method.term_with_indices({"params": params}, state, pooled(f_s), pooled(f_t), batch, contrast_idx)
            return out.term, out.state
        return jax.value_and_grad(term, has_aux=True)(params)

    for _ in range(3):
        f_s, f_t = features(s_dim), features(t_dim)
        index = rng.choice(n, batch_size, replace=False)
        contrast_idx = sampler.contrast_indices(index, rng)
        assert (k > 220) == any(len(set(row[1:])) < k for row in contrast_idx)  # duplicates iff replacement
        batch = Batch(None, jnp.asarray(labels[index]), jnp.asarray(index, jnp.int32), None)
        (loss, state), grads = step(params, state, f_s, f_t, batch, jnp.asarray(contrast_idx, jnp.int32))

        reference.zero_grad()
        reference_loss = reference(torch.tensor(f_s), torch.tensor(f_t), torch.tensor(index),
                                   torch.tensor(contrast_idx))
        reference_loss.backward()
        assert_close_scaled(loss, reference_loss.detach().numpy()[0], 1e-5, "loss")
        assert_close_scaled(state["z_student"], reference.contrast.params[2].item(), 1e-5, "Z_v1")
        assert_close_scaled(state["z_teacher"], reference.contrast.params[3].item(), 1e-5, "Z_v2")
        assert_close_scaled(state["bank_student"], reference.contrast.memory_v1.numpy(), 1e-5, "memory_v1")
        assert_close_scaled(state["bank_teacher"], reference.contrast.memory_v2.numpy(), 1e-5, "memory_v2")
        for name, embed in (("embed_student", reference.embed_s), ("embed_teacher", reference.embed_t)):
            assert_close_scaled(np.asarray(grads[name]["linear"]["kernel"]).T, embed.linear.weight.grad.numpy(),
                                1e-5, f"{name} weight grad")
            assert_close_scaled(grads[name]["linear"]["bias"], embed.linear.bias.grad.numpy(), 1e-5,
                                f"{name} bias grad")


def test_embed_and_bank_initialization(rng):
    """Embed: PyTorch's default Linear init, unit-norm output; banks U(-s, s), s = 1/sqrt(128/3), unnormalized."""
    method = get_method("crd", crd_config())
    f_s = np.abs(rng.standard_normal((8, 64))).astype(np.float32)
    init = method.init(jax.random.PRNGKey(0), Probe(pooled(f_s), pooled(f_s[:, :32]), None,
                                                    np.arange(20000, dtype=np.int32) % 100, 100))
    linear = init.variables["params"]["embed_student"]["linear"]
    assert linear["kernel"].shape == (64, 128) and init.variables["params"]["embed_teacher"]["linear"]["kernel"].shape == (32, 128)
    assert 0.99 / 8 < np.abs(linear["kernel"]).max() <= 1 / 8  # U(-1/sqrt(64), 1/sqrt(64))
    assert 0 < np.abs(linear["bias"]).max() <= 1 / 8 and np.unique(linear["bias"]).size == 128
    embedding = method.embeddings(init.variables, pooled(f_s), pooled(f_s[:, :32]))[0]
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, rtol=1e-6)
    bank, s = np.asarray(init.state["bank_student"]), 1 / np.sqrt(128 / 3)
    assert bank.shape == (20000, 128) and np.abs(bank).max() <= s and np.abs(bank).max() > 0.999 * s
    assert abs(np.mean(np.sum(bank**2, axis=1)) - 1) < 0.01  # expected squared norm 1, rows not normalized
    assert not np.array_equal(bank, init.state["bank_teacher"])


def test_top_k_mask_is_exact_with_ties():
    keys = jnp.asarray([[5, 9, 9, 9, 1, 9, 0], [3, 3, 3, 3, 3, 3, 3], [7, 6, 5, 4, 3, 2, 1]], jnp.uint32)
    allowed = jnp.asarray([[1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0]], bool)
    mask = np.asarray(top_k_mask(keys, allowed, 2))
    np.testing.assert_array_equal(mask, [[0, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]])


def draw_many(labels, k, anchors, draws):
    """`draws` steps of the sampler for the batch `anchors`: (contrast indices, counts), both (draws, B, ...)."""
    state = init_state(jax.random.PRNGKey(0), labels, 8, k)
    index = jnp.asarray(anchors, jnp.int32)
    anchor_labels = jnp.asarray(labels[anchors])

    @jax.jit
    def draw(rng):
        return (sample_contrast_indices(rng, anchor_labels, index, state, k),
                sample_negative_counts(rng, anchor_labels, state, k))

    rngs = jax.random.split(jax.random.PRNGKey(np.random.default_rng().integers(1 << 30)), draws)
    return jax.device_get(jax.lax.map(draw, rngs))


def uniformity_p_value(totals, draws, k, with_replacement):
    """How often each of the M pool members was drawn in `draws` rows of k, against uniformity: Pearson's
    statistic for the multinomial (with replacement), or, for uniform k-subsets, the same sum of squares over
    draws p (1 - p) M / (M - 1), p = k / M (the covariance of the inclusion counts); chi2 with M - 1 dof."""
    m = len(totals)
    expected = draws * k / m
    scale = expected if with_replacement else expected * (1 - k / m) * m / (m - 1)
    return scipy.stats.chi2.sf(np.sum((totals - expected) ** 2) / scale, m - 1)


@pytest.mark.parametrize("k", [40, 100])  # 100: class 1's pool (90) is smaller than K, its rows replace
def test_sampler_draws_other_classes_uniformly(k):
    """Every negative has another class than its anchor; no duplicates within a row drawn without replacement;
    the positive (the example itself) in column 0; the counts the loss uses are the same draws; and over
    many draws every allowed example is drawn equally often (chi-square, p > 1e-6: a false alarm once in
    10^5 runs at most)."""
    labels = shuffled_labels([30, 50, 20, 40], np.random.default_rng(0))  # N = 140, pools of 90..120
    n, pools = len(labels), len(labels) - np.bincount(labels)
    anchors = np.concatenate([np.where(labels == c)[0][:2] for c in range(4)])  # two anchors per class
    draws = 1500
    indices, counts = draw_many(labels, k, anchors, draws)
    assert indices.shape == (draws, len(anchors), k + 1) and counts.shape == (draws, len(anchors), n)
    np.testing.assert_array_equal(indices[:, :, 0], np.broadcast_to(anchors, (draws, len(anchors))))
    for row, anchor in enumerate(anchors):
        negatives = indices[:, row, 1:]
        anchor_class, pool = labels[anchor], pools[labels[anchor]]
        assert np.all(labels[negatives] != anchor_class)
        rebuilt = np.apply_along_axis(np.bincount, 1, negatives, minlength=n)
        np.testing.assert_array_equal(rebuilt, counts[:, row])
        allowed = labels != anchor_class
        totals = counts[:, row].sum(axis=0)[allowed]
        if k == pool:  # the whole pool, every time
            assert np.all(totals == draws)
            continue
        if k < pool:
            assert np.all(np.sort(negatives, axis=1)[:, 1:] != np.sort(negatives, axis=1)[:, :-1])
        else:
            assert k == 100 and anchor_class == 1
            assert any(len(set(row_draw)) < k for row_draw in negatives)  # with replacement
        p_value = uniformity_p_value(totals, draws, k, with_replacement=k > pool)
        assert p_value > 1e-6, (anchor, k, p_value)


def test_sampled_term_equals_the_term_of_its_contrast_indices(rng):
    """CRD.term (sampler + counts) and CRD.term_with_indices on the same draws give the same loss and state."""
    labels = shuffled_labels(UNEQUAL_CLASS_SIZES, rng)
    method = get_method("crd", crd_config(nce_k=100))
    f_s, f_t = (np.abs(rng.standard_normal((16, d))).astype(np.float32) for d in (32, 48))
    index = jnp.asarray(rng.choice(len(labels), 16, replace=False), jnp.int32)
    batch = Batch(None, jnp.asarray(labels)[index], index, jax.random.PRNGKey(7))

    @jit_once  # one compile, where eager mode compiles op by op
    def both_terms(key):
        init = method.init(key, Probe(pooled(f_s), pooled(f_t), None, labels, 5))
        sampled = method.term(init.variables, init.state, pooled(f_s), pooled(f_t), batch, train=True)
        contrast_idx = sample_contrast_indices(batch.rng, batch.labels, index, init.state, 100)
        return sampled, method.term_with_indices(init.variables, init.state, pooled(f_s), pooled(f_t), batch,
                                                 contrast_idx)

    sampled, explicit = both_terms(jax.random.PRNGKey(3))
    np.testing.assert_allclose(sampled.term, explicit.term, rtol=1e-6)
    for name in sampled.state:
        np.testing.assert_allclose(sampled.state[name], explicit.state[name], rtol=1e-6, err_msg=name)
    assert sampled.state["z_student"] > 0 and sampled.state["z_teacher"] > 0


@pytest.mark.parametrize("k", [100, 400])  # 400 > every class's pool: with replacement
def test_chunked_term_equals_the_term_in_one_chunk(k, rng):
    """The batch in 4 chunks of 4 rows gives the loss, embedding gradients, Z and banks of the batch in one chunk
    (which test_three_steps_match_repdistiller checks against RepDistiller), on the first step (Z set from the
    batch) and the next; the same negatives (an anchor's draws do not depend on the chunking)."""
    labels = shuffled_labels(UNEQUAL_CLASS_SIZES, rng)
    f_s, f_t = (np.abs(rng.standard_normal((16, d))).astype(np.float32) for d in (32, 48))

    def two_steps(chunk_rows):
        method = get_method("crd", crd_config(nce_k=k, chunk_elements=chunk_rows * len(labels)))
        assert crd_kernels.batch_chunks(16, len(labels), method.settings["chunk_elements"]) == 16 // chunk_rows
        with pytest.warns(UserWarning, match="with replacement") if k > 220 else contextlib.nullcontext():
            init = jit_once(lambda key: method.init(key, Probe(pooled(f_s), pooled(f_t), None, labels, 5)))(
                jax.random.PRNGKey(3))

        @jit_once
        def step(params, state, batch):
            def term(params):
                out = method.term({"params": params}, state, pooled(f_s), pooled(f_t), batch, train=True)
                return out.term, out.state
            return jax.value_and_grad(term, has_aux=True)(params)

        state, results = init.state, []
        for seed in range(2):
            index = jnp.asarray(np.random.default_rng(seed).choice(len(labels), 16, replace=False), jnp.int32)
            (loss, state), grads = step(init.variables["params"], state,
                                        Batch(None, jnp.asarray(labels)[index], index, jax.random.PRNGKey(seed)))
            results.append((loss, grads, state))
        return results

    for (loss, grads, state), (loss_1, grads_1, state_1) in zip(two_steps(4), two_steps(16)):
        np.testing.assert_allclose(loss, loss_1, rtol=1e-5)
        for a, b in zip(jax.tree.leaves((grads, state)), jax.tree.leaves((grads_1, state_1))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_threefry_matches_the_published_test_vectors():
    """The sampler's elementwise Threefry-2x32-20 against Random123's known-answer vectors (kat_vectors)."""
    for key, counter, expected in [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                                   ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
                                   ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]:
        counters = (jnp.asarray([c], jnp.uint32) for c in counter)
        words = crd_kernels.threefry2x32(jnp.asarray(key, jnp.uint32), *counters)
        assert [int(w[0]) for w in words] == list(expected)


def test_counts_from_indices_counts_repeats():
    counts = counts_from_indices(jnp.asarray([[0, 2, 2], [1, 1, 1]]), 4)
    np.testing.assert_array_equal(counts, [[1, 0, 2, 0], [0, 3, 0, 0]])


def compiled_step_memory(config, num_examples: int) -> int:
    """Peak memory in bytes of the engine's compiled train step on one device (XLA's memory analysis:
    arguments + outputs + temporaries - outputs aliased to donated arguments); compiled, never run."""
    labels = np.arange(num_examples, dtype=np.int32) % 100
    train = Split(np.zeros((num_examples, 32, 32, 3), np.uint8), labels, np.arange(num_examples, dtype=np.int32),
                  100)
    teacher = get_model(config.teacher.arch, 100)
    teacher_variables = jit_once(lambda key: teacher.init(key, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.PRNGKey(1))
    setup = build(config, jax.devices()[:1], data=(train, train),
                  teacher=Teacher(teacher, teacher_variables, config.teacher.arch))
    state = create_train_state(setup)
    step = make_train_step(setup)
    stats = step.lower(state, zero_sums(setup), setup.teacher.variables, train.images, train.labels, train.index,
                       jnp.arange(num_examples, dtype=jnp.int32)).compile(ONCE).memory_analysis()  # same buffers
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)


@pytest.mark.slow
def test_crd_step_memory_stays_within_100_mib_of_kd():
    """Tracker issue 5: at batch 64, K 16384, N 50000 (CIFAR-100's training set) the CRD step needs at most
    100 MiB more than the KD step (resnet8 <- resnet8; the gap is the method's, the models barely matter).
    The two banks are 49 MiB of it; the (B, N) sampler and score temporaries must not add the rest."""
    kd_recipe, crd_recipe = kd_wrn.get_config(), crd_wrn.get_config()
    for config in (kd_recipe, crd_recipe):
        config.model, config.teacher.arch, config.batch_size = "resnet8", "resnet8", 64
    crd_recipe.crd.nce_k = 16384
    kd_bytes, crd_bytes = compiled_step_memory(kd_recipe, 50000), compiled_step_memory(crd_recipe, 50000)
    assert crd_bytes - kd_bytes <= 100 * 2**20, (kd_bytes / 2**20, crd_bytes / 2**20)


# --- end to end through the engine -------------------------------------------------------------------------

def digits_crd_config(teacher_path, epochs=2):
    """The CRD recipe on digits: resnet8 student, random resnet20 teacher, K = 256."""
    config = on_digits(crd_wrn.get_config(), epochs=epochs, log_every_steps=2)
    config.teacher.checkpoint, config.teacher.arch = str(teacher_path), "resnet20"
    config.crd.nce_k = 256
    config.optimizer.lr_decay_epochs = (10,)
    return config


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_random_teacher(tmp_path_factory.mktemp("teacher") / "resnet20.pth", "resnet20")


@pytest.fixture(scope="module")
def straight_run(teacher_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("crd_straight")
    return workdir, train_and_evaluate(digits_crd_config(teacher_file), workdir)


def method_state(workdir, step):
    restored = ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")
    return restored["method_state"]


def test_crd_trains_on_digits_and_its_term_decreases(straight_run):
    """The term falls within each epoch. It jumps at the start of epoch 2, when the negatives' bank rows hold
    embeddings (similar to each other early on) instead of the random init that Z was set from: CRD's own
    dynamics, RepDistiller's too."""
    workdir, result = straight_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    terms = [r["term"] for r in records if r["kind"] == "train"]  # every 2 steps, 11 per epoch
    assert len(terms) == 22 and all(np.isfinite(terms))
    for epoch in (terms[:11], terms[11:]):
        assert np.mean(epoch[-3:]) < np.mean(epoch[:3]) - 0.5, terms
    state = method_state(workdir, 44)
    assert state["z_student"] > 0 and state["z_teacher"] > 0  # set on the first step
    norms = np.linalg.norm(state["bank_student"], axis=1)
    assert np.sum(np.isclose(norms, 1, atol=1e-5)) >= 0.95 * len(norms)  # ~all rows updated in 2 epochs
    assert result["last_top1"] > 20  # chance is 10%


def test_crd_resume_after_an_epoch_is_bitwise_exact(straight_run, teacher_file, tmp_path):
    train_and_evaluate(digits_crd_config(teacher_file, epochs=1), tmp_path)
    result = train_and_evaluate(digits_crd_config(teacher_file, epochs=2), tmp_path)
    assert result["step"] == 44
    straight = straight_run[0]
    resumed_state, straight_state = method_state(tmp_path, 44), method_state(straight, 44)
    assert sorted(resumed_state) == ["bank_student", "bank_teacher", "labels", "z_student", "z_teacher"]
    for name in resumed_state:
        assert np.array_equal(resumed_state[name], straight_state[name]), name
    for a, b in zip(jax.tree.leaves(load_model_checkpoint(tmp_path / "model")[0]),
                    jax.tree.leaves(load_model_checkpoint(straight / "model")[0])):
        assert np.array_equal(a, b)
