"""DKD and logit standardization: DKD's term (with its warm-up at epochs 0, 10, 20, 30, with and without logit
standardization) and the KD term with logit standardization, values and gradients against the PyTorch
references (tests/reference/mdistiller_losses.py), constant-logit rows included; DKD under SaliencyMix; logit
standardization's one setting, `loss.logit_standardization`, and the old `dkd.logit_standardization`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from configs import mdistiller
from jaxkd.engine.losses import kd_divergence, standardize_logits
from jaxkd.errors import UserError
from jaxkd.io.workdir import check_config_json, save_config
from jaxkd.methods import Batch, get_method
from jaxkd.methods.dkd import DKD
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.method_inputs import logit_term_and_grad
from tests.reference.mdistiller_losses import dkd_loss, dkd_warmup, kd_loss, standardize

REL = 1e-5
BATCH, CLASSES = 8, 10


def logits_pair(rng, constant_rows: bool):
    """Student and teacher logits (B, C); with `constant_rows`, one row of each is constant (std 0)."""
    student = rng.normal(0, 2, (BATCH, CLASSES)).astype(np.float32)
    teacher = rng.normal(0, 3, (BATCH, CLASSES)).astype(np.float32)
    if constant_rows:
        student[2], teacher[5] = 1.5, -0.5
    return student, teacher


def dkd_method(logit_standardization: bool = False, **settings) -> DKD:
    """DKD with `settings` over its defaults; logit standardization is the loss section's, as for every logit
    term."""
    return get_method("dkd", ConfigDict({"dkd": dict(DKD.defaults, **settings),
                                         "loss": {"logit_standardization": logit_standardization}}))


def torch_value_and_grad(loss_fn, student, *args):
    z_s = torch.tensor(student, requires_grad=True)
    loss = loss_fn(z_s, *args)
    total = loss[0] if isinstance(loss, tuple) else loss
    if total.requires_grad:
        total.backward()
    grad = z_s.grad.numpy() if z_s.grad is not None else np.zeros_like(student)
    return loss, grad


@pytest.mark.parametrize("logit_standardization", [False, True])
def test_dkd_matches_mdistiller_with_its_warmup(logit_standardization, rng):
    """alpha 1, beta 8, T 4 (2 with logit standardization, its base temperature), warm-up 20, at epochs 0, 10,
    20 and 30 (one compiled term, the epoch traced): the term is min(epoch / 20, 1) * dkd_loss; its gradient
    w.r.t. the student's logits; TCKD and NCKD (the metrics)."""
    student, teacher = logits_pair(rng, constant_rows=logit_standardization)
    labels = rng.integers(0, CLASSES, BATCH)
    temperature = 2.0 if logit_standardization else 4.0
    method = dkd_method(temperature=temperature, logit_standardization=logit_standardization)
    compiled = jax.jit(lambda s, b: logit_term_and_grad(method, s, teacher, b))
    for epoch in (0, 10, 20, 30):
        batch = Batch(None, jnp.asarray(labels, jnp.int32), None, None, epoch=jnp.asarray(epoch, jnp.int32))
        value, metrics, grad = compiled(student, batch)
        factor = dkd_warmup(epoch, 20)

        def reference(z_s):
            loss, tckd, nckd = dkd_loss(z_s, torch.tensor(teacher), torch.tensor(labels), 1.0, 8.0, temperature,
                                        logit_standardization)
            return factor * loss, tckd.detach(), nckd.detach()

        (ref_value, ref_tckd, ref_nckd), ref_grad = torch_value_and_grad(reference, student)
        assert float(metrics["warmup"]) == pytest.approx(factor, abs=1e-7)
        assert_close_scaled(value, ref_value.detach().numpy(), REL, f"epoch {epoch} term")
        assert_close_scaled(metrics["tckd"], ref_tckd.numpy(), REL, f"epoch {epoch} tckd")
        assert_close_scaled(metrics["nckd"], ref_nckd.numpy(), REL, f"epoch {epoch} nckd")
        assert_close_scaled(grad, ref_grad, REL, f"epoch {epoch} grad")
        if epoch == 0:
            assert float(value) == 0.0 and not np.any(np.asarray(grad))
        else:
            assert float(ref_tckd) > 1e-4 and float(ref_nckd) > 1e-4 and np.max(np.abs(ref_grad)) > 1e-4
    assert compiled._cache_size() == 1


@pytest.mark.parametrize("temperature", [4.0, 2.0])
def test_kd_with_logit_standardization_matches_the_reference(temperature, rng):
    """The engine's KD term with `loss.logit_standardization`: value and gradient against logit-standardization-
    KD's `kd_loss`, with a constant row on each side; and `standardize_logits` itself, with its gradient."""
    student, teacher = logits_pair(rng, constant_rows=True)
    value, grad = jax.jit(jax.value_and_grad(
        lambda s: kd_divergence(s, jnp.asarray(teacher), temperature, logit_standardization=True)))(student)
    ref_value, ref_grad = torch_value_and_grad(lambda z: kd_loss(z, torch.tensor(teacher), temperature, True),
                                               student)
    assert_close_scaled(value, ref_value.detach().numpy(), REL, "kd + ls")
    assert_close_scaled(grad, ref_grad, REL, "kd + ls grad")
    plain = kd_divergence(jnp.asarray(student), jnp.asarray(teacher), temperature)
    assert abs(float(plain) - float(value)) > 1e-3  # the option changes the term

    weights = rng.normal(size=student.shape).astype(np.float32)
    z, vjp = jax.vjp(standardize_logits, jnp.asarray(student))
    z_t = torch.tensor(student, requires_grad=True)
    ref_z = standardize(z_t)
    (ref_z * torch.tensor(weights)).sum().backward()
    assert_close_scaled(z, ref_z.detach().numpy(), REL, "standardized")
    assert_close_scaled(vjp(jnp.asarray(weights))[0], z_t.grad.numpy(), REL, "standardized grad")
    assert not np.any(np.asarray(z)[2]) and np.all(np.isfinite(np.asarray(vjp(jnp.asarray(weights))[0])))
    assert np.allclose(np.std(np.asarray(z)[3], ddof=1), 1.0, atol=1e-5)  # the unbiased std


@pytest.mark.parametrize("per_example", [False, True])
def test_dkd_under_saliencymix_mixes_both_labels_as_the_cross_entropy(per_example, rng):
    """Example i shows its own image with a box from example partners[i]: its DKD is lam * DKD(own label) +
    (1 - lam) * DKD(partner's label), the CE's rule, per example when lam is (each row computed by the
    reference on its own)."""
    student, teacher = logits_pair(rng, constant_rows=False)
    labels = rng.integers(0, CLASSES, BATCH)
    partners = rng.permutation(BATCH)
    lam = rng.uniform(0.2, 0.9, BATCH).astype(np.float32) if per_example else np.float32(0.3)
    method = dkd_method()
    batch = Batch(None, jnp.asarray(labels, jnp.int32), None, None, jnp.asarray(partners, jnp.int32),
                  jnp.asarray(lam), epoch=30)
    value, _, _ = jax.jit(lambda b: logit_term_and_grad(method, student, teacher, b))(batch)

    def row_loss(i, label):
        return float(dkd_loss(torch.tensor(student[i:i + 1]), torch.tensor(teacher[i:i + 1]),
                              torch.tensor([label]), 1.0, 8.0, 4.0)[0])

    lam_i = np.broadcast_to(lam, (BATCH,))
    expected = np.mean([lam_i[i] * row_loss(i, labels[i]) + (1 - lam_i[i]) * row_loss(i, labels[partners[i]])
                        for i in range(BATCH)])
    assert_close_scaled(value, expected, REL, "mixed dkd")
    unmixed, _, _ = logit_term_and_grad(method, student, teacher, batch._replace(partners=None, lam=1.0))
    assert abs(float(unmixed) - expected) > 1e-3 * expected  # the partners' labels count


def test_dkd_reads_logit_standardization_from_its_one_home(tmp_path):
    """`dkd.logit_standardization` (earlier versions) is refused with one line naming `loss.logit_standardization`;
    a started DKD + LS run, whose config.json holds the old key, is still the same run as the new recipe's."""
    with pytest.raises(UserError) as error:
        get_method("dkd", ConfigDict({"dkd": {"logit_standardization": True}}))
    assert str(error.value) == "config.dkd.logit_standardization is now config.loss.logit_standardization"
    assert dkd_method(logit_standardization=True).logit_standardization
    assert not get_method("dkd", None).logit_standardization

    config = mdistiller.get_config("resnet32x4,resnet8x4,dkd_ls")
    save_config(config, tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 50, "kind": "train", "loss": 4.0}\n')  # the run started
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["loss"]["logit_standardization"] = False  # as the DKD + LS recipe wrote it before the move
    saved["dkd"]["logit_standardization"] = True
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_config_json(config, tmp_path) == []
    plain = mdistiller.get_config("resnet32x4,resnet8x4,dkd_ls")
    plain.loss.logit_standardization = False
    with pytest.raises(UserError, match=r"differs in: loss"):
        check_config_json(plain, tmp_path)

