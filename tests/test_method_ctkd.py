"""CTKD: the term (KD or DKD at the learned temperature), its gradient w.r.t. the student's logits and the reversed
gradient w.r.t. the temperature's parameter, at epochs along the curriculum, against the PyTorch transcription of
the authors' code (tests/reference/ctkd_losses.py); two SGD steps of the temperature against PyTorch's SGD with
the student's lr, momentum and weight decay; the recipe, the report's labels and the published numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from configs import ctkd as ctkd_config
from jaxkd.config import recipes
from jaxkd.engine.optimizer import make_optimizer
from jaxkd.errors import UserError
from jaxkd.methods import Batch, get_method
from jaxkd.methods.ctkd import CTKD, curriculum_lambda
from jaxkd.models import ModelOutput
from jaxkd.tools.published import SOURCES, published_for
from jaxkd.tools.report import method_label
from jaxkd.train import parse_command_line
from tests.helpers.assertions import assert_close_scaled
from tests.reference.ctkd_losses import CosineDecay, GlobalT, distill_kl, dkd_loss, learned_temperature

REL = 1e-5
BATCH, CLASSES = 8, 100
EPOCHS = (1, 4, 10, 30)  # along the cosine rise (10 epochs), at its end, after it
# (student scale, teacher scale): a homogeneous pair (logits alike) and a heterogeneous one (a confident teacher)
PAIRS = {"homogeneous": (2.0, 2.5), "heterogeneous": (0.5, 6.0)}


def logits(rng, pair: str):
    """(student, teacher) logits (B, C), float32 values (exact in float64 too)."""
    student_scale, teacher_scale = PAIRS[pair]
    return (rng.normal(0, student_scale, (BATCH, CLASSES)).astype(np.float32),
            rng.normal(0, teacher_scale, (BATCH, CLASSES)).astype(np.float32))


def ctkd_method(**settings) -> CTKD:
    return get_method("ctkd", ConfigDict({"ctkd": dict(CTKD.defaults, **settings)}))


def term_and_grads(method):
    """Jitted (term, metrics), (grad w.r.t. the student's logits, grad w.r.t. the method's variables), the
    teacher's logits, the labels and the epoch traced."""
    def term(student, variables, teacher, labels, epoch):
        batch = Batch(None, labels, None, None, epoch=epoch)
        out = method.term(variables, {}, ModelOutput([], None, student), ModelOutput([], None, teacher), batch, True)
        return out.term, out.metrics
    return jax.jit(jax.value_and_grad(term, argnums=(0, 1), has_aux=True))


def reference(base: str, student, teacher, labels, global_t: float, epoch: int, dtype):
    """The authors' loop for one batch in `dtype`: {term, temperature, lambda, tckd, nckd, student and global_T
    gradients}."""
    mlp = GlobalT().to(dtype)
    with torch.no_grad():
        mlp.global_T.fill_(global_t)
    cos_value = CosineDecay(max_value=0, min_value=-1, num_loops=10).get_value(epoch)
    z_s = torch.tensor(student, dtype=dtype, requires_grad=True)
    z_t = torch.tensor(teacher, dtype=dtype)
    temp = learned_temperature(mlp, z_t, z_s, cos_value)
    found = {}
    if base == "kd":
        loss = distill_kl(z_s, z_t, temp)
    else:
        loss, found["tckd"], found["nckd"] = dkd_loss(z_s, z_t, torch.tensor(labels), 1.0, 2.0, temp)
    loss.sum().backward()
    found.update(term=loss, temperature=temp)
    found = {name: value.detach().numpy()[0] for name, value in found.items()}
    return dict(found, **{"lambda": -cos_value, "student": z_s.grad.numpy(), "global_t": mlp.global_T.grad.numpy()})


def ours(compiled, student, teacher, labels, global_t: float, epoch: int, dtype) -> dict:
    variables = {"params": {"global_t": jnp.full((1,), global_t, dtype)}}
    (value, metrics), (grad_student, grad_variables) = compiled(
        jnp.asarray(student, dtype), variables, jnp.asarray(teacher, dtype), jnp.asarray(labels, jnp.int32),
        jnp.asarray(epoch, jnp.int32))
    return dict(metrics, term=value, student=grad_student, global_t=grad_variables["params"]["global_t"])


@pytest.mark.parametrize("base", ["kd", "dkd"])
def test_term_and_reversed_gradients_match_the_authors_code(base, rng):
    """CTKD's script settings (T in (1, 21), lambda rising over 10 epochs; DKD alpha 1, beta 2) on a homogeneous and
    a heterogeneous pair's logits, global_T at its initial 1 and at two trained values, at epochs 1, 4, 10 and 30
    (one compiled term per dtype, the epoch traced): the term, the temperature and lambda (the metrics), TCKD and
    NCKD, the student's gradient and global_T's gradient through the reversal layer.
    In float64 on both sides, everything to 1e-9 (measured <= 1e-10), KD's student gradient to 1e-6 (the engine's
    `kd_divergence` casts the logits to float32, so their gradient is float32's; measured 4e-8). In float32, to 1e-5
    of PyTorch's float32, all but the two quantities float32 cannot resolve on either side: global_T's gradient,
    d(T^2 loss(T))/dT at T up to 21 (a difference of nearly equal terms), and TCKD at such T (a sum of tiny
    per-example KLs). PyTorch's float32 values of these are up to 2e-2 and 6e-5 off the float64 ones (jaxkd's 4e-2,
    8e-5 over seeds); both sides' are checked against the float64 value to 1e-1 and 1e-3: right sign and size."""
    method = ctkd_method(base=base)
    compiled = term_and_grads(method)
    with jax.enable_x64(True):
        compiled64 = term_and_grads(method)
        cases = []
        for pair in sorted(PAIRS):
            student, teacher = logits(rng, pair)
            labels = rng.integers(0, CLASSES, BATCH)
            for global_t in (1.0, -0.8, -3.0):
                for epoch in EPOCHS:
                    case = (student, teacher, labels, global_t, epoch)
                    exact = reference(base, *case, torch.float64)
                    found = ours(compiled64, *case, jnp.float64)
                    for name, value in exact.items():
                        rel = 1e-6 if (base, name) == ("kd", "student") else 1e-9
                        assert_close_scaled(found[name], value, rel, f"float64 {name}, {pair} {global_t} {epoch}")
                    cases.append((pair, case, exact))
    float32_floor = {"global_t": 1e-1, "tckd": 1e-3}
    for pair, case, exact in cases:
        what = f"{base} {pair} global_t {case[3]} epoch {case[4]}"
        theirs, found = reference(base, *case, torch.float32), ours(compiled, *case, jnp.float32)
        for name, value in theirs.items():
            if name in float32_floor:
                assert_close_scaled(found[name], exact[name], float32_floor[name], f"float32 {name}, {what}")
                assert_close_scaled(value, exact[name], float32_floor[name], f"PyTorch float32 {name}, {what}")
            else:
                assert_close_scaled(found[name], value, REL, f"float32 {name}, {what}")
        assert abs(exact["global_t"][0]) > 1e-7  # a gradient reaches the temperature at every epoch here


def test_the_curriculum_is_the_authors_cosine_decay_negated():
    """lambda at every 1-based epoch 0..240 is -CosineDecay(0, -1, 10).get_value(epoch): 0.0245 at epoch 1, 1 from
    epoch 10 on; and for other start, end and length."""
    epochs = np.arange(0, 241)
    for start, end, length in ((0.0, 1.0, 10), (0.2, 2.0, 7)):
        decay = CosineDecay(max_value=-start, min_value=-end, num_loops=length)
        expected = np.array([-decay.get_value(int(epoch)) for epoch in epochs], np.float32)
        actual = jax.jit(lambda epochs: curriculum_lambda(epochs, start, end, length))(epochs)
        np.testing.assert_allclose(actual, expected, rtol=3e-7, atol=1e-9)
    assert float(curriculum_lambda(1, 0.0, 1.0, 10)) == pytest.approx(0.02447, abs=1e-5)


def test_the_temperature_trains_with_the_students_sgd_and_weight_decay():
    """The authors put Global_T in `trainable_list`: one SGD (lr 0.05, momentum 0.9, weight decay 5e-4) with the
    student. Three steps of the KD recipe's temperature (term weight 0.9, epoch 4) with jaxkd's optimizer against
    PyTorch's SGD on the reference, in float64 (float32 cannot resolve the temperature's gradient, above): the
    parameter's change to 1e-6. The decay is added to the already reversed gradient, as in PyTorch; without it the
    change would differ by ~2.5e-5 a step, far above the tolerance."""
    rng = np.random.default_rng(3)
    student, teacher = logits(rng, "heterogeneous")
    config = ctkd_config.get_config("resnet8,resnet8,ctkd")
    method = get_method("ctkd", config)
    weight = config.loss.beta
    mlp = GlobalT().to(torch.float64)
    sgd = torch.optim.SGD(mlp.parameters(), lr=config.optimizer.lr, momentum=config.optimizer.momentum,
                          weight_decay=config.optimizer.weight_decay)
    cos_value = CosineDecay(0, -1, 10).get_value(4)
    with jax.enable_x64(True):
        optimizer = make_optimizer(config, steps_per_epoch=100)

        def loss(params):
            batch = Batch(None, None, None, None, epoch=jnp.asarray(4, jnp.int32))
            return weight * method.term({"params": params}, {}, ModelOutput([], None, jnp.asarray(student, float)),
                                        ModelOutput([], None, jnp.asarray(teacher, float)), batch, True).term

        @jax.jit
        def step(params, opt_state):
            updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
            return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

        params = {"global_t": jnp.ones((1,), jnp.float64)}
        opt_state = optimizer.init(params)
        for _ in range(3):
            params, opt_state = step(params, opt_state)
            sgd.zero_grad()
            (weight * distill_kl(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
                                 learned_temperature(mlp, None, None, cos_value))).sum().backward()
            sgd.step()
        change = np.asarray(params["global_t"]) - 1.0
    assert_close_scaled(change, mlp.global_T.detach().numpy() - 1.0, 1e-6, "global_t's change after 3 steps")
    assert abs(change[0]) > 1e-4


def test_dkd_base_mixes_the_two_labels_under_saliencymix(rng):
    """As DKD: lam * DKD(own labels) + (1 - lam) * DKD(partners' labels), at the learned temperature."""
    student, teacher = logits(rng, "homogeneous")
    labels, partners = rng.integers(0, CLASSES, BATCH), rng.permutation(BATCH)
    method = ctkd_method(base="dkd")
    variables = {"params": {"global_t": jnp.ones((1,), jnp.float32)}}

    @jax.jit
    def terms(labels, partners):
        def term(labels, partners=None, lam=1.0):
            batch = Batch(None, labels, None, None, partners=partners, lam=lam, epoch=5)
            return method.term(variables, {}, ModelOutput([], None, jnp.asarray(student)),
                               ModelOutput([], None, jnp.asarray(teacher)), batch, True).term
        return term(labels, partners, 0.3), term(labels), term(labels[partners])

    mixed, own, partners_ = terms(jnp.asarray(labels, jnp.int32), jnp.asarray(partners))
    assert_close_scaled(mixed, 0.3 * own + 0.7 * partners_, REL, "mixed")
    assert abs(float(own - partners_)) > 1e-3  # the two labelings differ


def test_recipes_labels_and_published_numbers():
    """configs/ctkd.py: RepDistiller's training recipe with CTKD's weights (run_cifar_distill.sh: KD `-r 0.1 -a 0.9
    -b 0` -> gamma 0.1, beta 0.9, the fixed-temperature alpha 0; DKD `-r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2`),
    the teacher under save/models; the report's labels; the README's +CTKD row (best epoch)."""
    for teacher, student in (("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("vgg13", "MobileNetV2")):
        kd, dkd = (recipes.ctkd(teacher, student, method) for method in recipes.CTKD_METHODS)
        base = recipes.repdistiller(teacher, student, "kd")
        for config in (kd, dkd):
            assert config.method == "ctkd"
            assert config.optimizer.to_dict() == base.optimizer.to_dict() and config.data.to_dict() == \
                base.data.to_dict() and (config.epochs, config.batch_size) == (240, 64)
            assert config.teacher.to_dict() == base.teacher.to_dict()
            assert config.teacher.checkpoint == f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth"
        assert (kd.loss.gamma, kd.loss.alpha, kd.loss.beta) == (0.1, 0.0, 0.9)
        assert (dkd.loss.gamma, dkd.loss.alpha, dkd.loss.beta) == (1.0, 0.0, 1.0)
        assert dict(kd.ctkd) == {"base": "kd", "temperature_min": 1.0, "temperature_range": 20.0,
                                 "lambda_start": 0.0, "lambda_end": 1.0, "curriculum_epochs": 10,
                                 "dkd_alpha": 1.0, "dkd_beta": 2.0}
        assert dict(dkd.ctkd) == dict(kd.ctkd, base="dkd")
        assert (method_label(kd.to_dict()), method_label(dkd.to_dict())) == ("kd+ctkd", "dkd+ctkd")
    flags_ = parse_command_line(["train", "--config", "configs/ctkd.py:resnet56,resnet20,ctkd_dkd", "--workdir",
                                 "unused"])
    assert flags_.config.to_dict() == recipes.ctkd("resnet56", "resnet20", "ctkd_dkd").to_dict()
    assert recipes.method_recipe("ctkd")[0] == "configs/ctkd.py:wrn_40_2,wrn_16_2,ctkd"
    # README.md 'On CIFAR-100': "| **+CTKD** | **71.19** | **73.52** | **70.99** | **75.45** | **73.93** | **73.52** |"
    [row] = published_for("wideresnet40_2", "wideresnet16_2", "kd+ctkd", False)
    assert (row.top1, row.source, row.scoring) == (75.45, "CTKD README", "best")
    assert [p.top1 for p in published_for("rd_resnet56", "rd_resnet20", "kd+ctkd", False)] == [71.19]
    assert [p.top1 for p in published_for("vgg13", "vgg8", "kd+ctkd", False)] == [73.52]
    assert SOURCES["CTKD README"].runs is None


def test_a_base_it_does_not_have_is_one_line():
    with pytest.raises(UserError, match=r"^--config.ctkd.base=dist: must be one of kd, dkd$"):
        ctkd_method(base="dist")
