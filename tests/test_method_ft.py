"""FT: the term (translator on the student's last stage output against the frozen paraphraser's factor) and the
init stage's loss (the paraphraser's reconstruction) with their gradients against RepDistiller's `FactorTransfer`,
`Paraphraser` and `Translator`, on a homogeneous and a heterogeneous pair; the modules initialize as PyTorch's
defaults; 3 init steps against RepDistiller's `init` loop and 3 train steps against its train_distill loop; the
init stage's lr per student; FT builds for every pair of RepDistiller's table. Shared code:
tests/helpers/init_stage_methods.py; the config learns in tests/test_methods_learn.py."""

import math

import jax
import numpy as np
import pytest
import torch
import torch.nn as nn

import convert
from configs import repdistiller
from jaxkd.methods import Probe, get_method
from jaxkd.methods.base import INIT_MODULES
from jaxkd.tools import published
from tests.helpers.assertions import assert_uniform, relative
from tests.helpers.compile_once import jit_once
from tests.helpers.init_stage_methods import (INIT_TEACHERS, NUM_CLASSES, PAIRS, REL, SIZE, STEPS, STUDENT, TRAIN_BATCH,
                                              TRAIN_REL, assert_builds_for_pairs, assert_three_init_steps_match_pytorch,
                                              assert_tree_close, paraphraser_params, random_output,
                                              randomize_batchnorms_seeded, recipe, student_variables_as_torch, torch_of,
                                              translator_variables)
from tests.helpers.method_inputs import engine_train_steps
from tests.helpers.torch_references import nchw, nhwc, randomized_torch_model
from tests.reference import repdistiller_init_methods as reference
from tests.reference import torch_training


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_ft_term_init_loss_and_gradients_match_pytorch(pair, rng):
    (s_stem, s_stages), (t_stem, t_stages) = PAIRS[pair]
    student, teacher = random_output(rng, s_stem, s_stages), random_output(rng, t_stem, t_stages)
    s_channels, t_channels = s_stages[-1][2], t_stages[-1][2]
    torch.manual_seed(3)
    paraphraser, translator = reference.Paraphraser(t_channels), reference.Translator(s_channels, t_channels)
    randomize_batchnorms_seeded(translator, 4)
    translator.train()
    method = get_method("ft", recipe("ft"))
    state = {INIT_MODULES: {"params": paraphraser_params(paraphraser), "batch_stats": {}}}
    variables = translator_variables(translator)

    # the term: translator (train mode) on the student's last stage output, the frozen paraphraser's factor
    def term_fn(params, last):
        out = method.term({"params": params, "batch_stats": variables["batch_stats"]}, state,
                          student._replace(features=[*student.features[:-1], last]), teacher, None, True)
        return out.term, out.batch_stats

    (term, stats), (grad_params, grad_last) = jax.jit(jax.value_and_grad(term_fn, argnums=(0, 1), has_aux=True))(
        variables["params"], student.features[-1])
    last = torch_of(student.features[-1])
    f_t = nchw(np.asarray(teacher.features[-1]))
    torch_term = reference.factor_transfer(translator(last), paraphraser(f_t, is_factor=True))
    torch_term.backward()
    assert float(term) == pytest.approx(torch_term.item(), rel=REL) and torch_term.item() > 1e-3
    assert relative(grad_last, nhwc(last.grad)) <= REL
    assert_tree_close(grad_params, translator_variables(translator, value=lambda p: p.grad)["params"], "grad",
                      per_tree=True)
    assert_tree_close(stats, translator_variables(translator)["batch_stats"], "running statistics")

    # the init loss: the paraphraser's reconstruction MSE of the teacher's last stage output
    def init_fn(params):
        return method.init_loss({"params": params, "batch_stats": {}}, None, teacher, None)[0]

    loss, grads = jax.jit(jax.value_and_grad(init_fn))(state[INIT_MODULES]["params"])
    paraphraser.zero_grad()
    torch_loss = nn.MSELoss()(paraphraser(f_t)[1], f_t)
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=REL)
    assert_tree_close(grads, paraphraser_params(paraphraser, value=lambda p: p.grad), "paraphraser grad",
                      per_tree=True)


def test_ft_modules_initialize_as_pytorch_defaults(rng):
    """Paraphraser (t = 32 channels, rate 0.5): convs U(+-1/sqrt(in * 9)), transposed convs U(+-1/sqrt(out * 9))
    (PyTorch's fan_in of a ConvTranspose2d weight), biases alike; Translator (s = 16): convs alike, BN 1/0."""
    student, teacher = random_output(rng, (8, 8, 8), [(4, 4, 16)]), random_output(rng, (8, 8, 8), [(4, 4, 32)])
    method, probe = get_method("ft", recipe("ft")), Probe(student, teacher, None, None, 10)
    init = jit_once(lambda key: method.init(key, probe))(jax.random.PRNGKey(0))
    paraphraser = init.state[INIT_MODULES]["params"]
    for name, (c_in, c_out, fan) in {"encoder0": (32, 32, 32), "encoder1": (32, 16, 32), "encoder2": (16, 16, 16),
                                     "decoder0": (16, 16, 16), "decoder1": (16, 32, 32),
                                     "decoder2": (32, 32, 32)}.items():
        assert paraphraser[name]["kernel"].shape == (3, 3, c_in, c_out), name
        assert_uniform(paraphraser[name]["kernel"], 1 / math.sqrt(fan * 9), name, edge_slack=20)
        assert np.abs(paraphraser[name]["bias"]).max() <= 1 / math.sqrt(fan * 9)
    translator = init.variables
    for i, (c_in, c_out) in enumerate(((16, 16), (16, 16), (16, 16))):
        assert translator["params"][f"conv{i}"]["kernel"].shape == (3, 3, c_in, c_out)
        assert_uniform(translator["params"][f"conv{i}"]["kernel"], 1 / math.sqrt(c_in * 9), f"conv{i}",
                       edge_slack=20)
        assert np.all(translator["params"][f"bn{i}"]["scale"] == 1) and np.all(translator["params"][f"bn{i}"]["bias"] == 0)


def test_three_init_steps_match_pytorch():
    assert_three_init_steps_match_pytorch("ft", 22)


def test_three_ft_train_steps_match_pytorch():
    """FT's recipe (gamma 1, alpha 0, beta 200, lr 0.05): the student and the translator (train mode) by SGD,
    the paraphraser frozen (RepDistiller: in module_list, eval mode, not in trainable_list)."""
    seed = 24
    config = recipe("ft")
    config.model, config.teacher.arch, config.batch_size = STUDENT, INIT_TEACHERS["ft"], TRAIN_BATCH
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((STEPS, TRAIN_BATCH, SIZE, SIZE, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (STEPS, TRAIN_BATCH)).astype(np.int32)
    student = randomized_torch_model(STUDENT, NUM_CLASSES, seed=seed)
    teacher = randomized_torch_model(INIT_TEACHERS["ft"], NUM_CLASSES, seed=seed + 100)
    initial = {key: value.clone() for key, value in student.state_dict().items()}
    torch.manual_seed(seed)
    s_channels, t_channels = 64, 128
    paraphraser, translator = reference.Paraphraser(t_channels), reference.Translator(s_channels, t_channels)
    randomize_batchnorms_seeded(translator, seed)
    initial_translator = translator_variables(translator)
    state_modules = {INIT_MODULES: {"params": paraphraser_params(paraphraser), "batch_stats": {}}}

    history, state = engine_train_steps(config, STUDENT, INIT_TEACHERS["ft"], NUM_CLASSES,
                                        convert.torch_to_flax(student.state_dict()),
                                        convert.torch_to_flax(teacher.state_dict()), initial_translator, images,
                                        labels, method_state=state_modules)
    paraphraser.eval()
    term = lambda s, t: reference.factor_transfer(translator(s.features[-1]),  # noqa: E731
                                                  paraphraser(t.features[-1], is_factor=True))
    reference_history = torch_training.train(
        student, teacher, [(nchw(images[s]), torch.from_numpy(labels[s]).long()) for s in range(STEPS)], STEPS,
        lr=config.optimizer.lr, gamma=config.loss.gamma, alpha=config.loss.alpha, beta=config.loss.beta,
        term=term, modules=translator)
    for step, (ours, theirs) in enumerate(zip(history, reference_history)):
        assert theirs["term"] > 1e-3, f"step {step}: the term is vanishing"
        for name in ("loss", "ce", "term"):
            assert ours[name] == pytest.approx(theirs[name], rel=TRAIN_REL), f"step {step} {name}"
    ours = student_variables_as_torch(state.params["student"], state.batch_stats["student"])
    for key, value in student.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert relative(ours[key].numpy(), value.numpy()) <= TRAIN_REL, key
    final_translator = translator_variables(translator)
    assert_tree_close(state.params["method"], final_translator["params"], "translator", TRAIN_REL)
    assert_tree_close(state.batch_stats["method"], final_translator["batch_stats"], "translator stats", TRAIN_REL)
    assert relative(final_translator["params"]["conv0"]["kernel"], initial_translator["params"]["conv0"]["kernel"]) \
        > 3 * TRAIN_REL
    assert_tree_close(state.method_state[INIT_MODULES]["params"], paraphraser_params(paraphraser), "paraphraser", 0)
    assert relative(ours["layer1.0.conv1.weight"].numpy(), initial["layer1.0.conv1.weight"].numpy()) > 3 * TRAIN_REL


def test_init_stage_lr_follows_the_student():
    """RepDistiller's FT init: 30 epochs, the student's feature modules left out, lr 0.01 for a WRN or a
    ShuffleNet student and 0.05 for the others."""
    assert get_method("ft", recipe("ft")).init_stage(recipe("ft")) == (30, False, 0.01)  # a WRN student
    assert get_method("ft", None).init_stage(repdistiller.get_config("wrn_40_2,ShuffleV1,ft")).learning_rate == 0.01
    assert get_method("ft", None).init_stage(repdistiller.get_config("ResNet50,vgg8,ft")).learning_rate == 0.05


def test_builds_for_every_pair_of_repdistillers_table():
    """The 13 pairs of RepDistiller's README (jax.eval_shape: shapes only)."""
    assert_builds_for_pairs("ft", published.REPDISTILLER_PAIRS_SAME + published.REPDISTILLER_PAIRS_DIFFERENT)
