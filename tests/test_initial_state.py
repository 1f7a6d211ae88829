"""`create_train_state`: the student's init is a program of its own, which runs of one student under other methods
find in XLA's persistent compilation cache (the suite's: tests/conftest.py) instead of compiling it again."""

import logging

import jax

from configs import fitnet_wrn, kd_wrn
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.setup import build
from tests.helpers.runs import on_digits, save_random_teacher


def test_the_students_init_compiled_for_one_method_serves_another(tmp_path, caplog):
    teacher = save_random_teacher(tmp_path / "teacher.pth", "resnet8")
    setups = []
    for recipe in (kd_wrn, fitnet_wrn):  # FitNets adds a regressor with its own init: another program around it
        config = on_digits(recipe.get_config(), epochs=1, model="resnet8")
        config.teacher.checkpoint, config.teacher.arch = str(teacher), "resnet8"
        setups.append(build(config, jax.devices()[:1]))
    kd_state = create_train_state(setups[0])
    with caplog.at_level(logging.DEBUG, logger="jax._src.compiler"):
        fitnet_state = create_train_state(setups[1])
    hits = [record.getMessage() for record in caplog.records
            if "Persistent compilation cache hit" in record.getMessage()]
    assert any("'jit__student_init'" in message for message in hits), hits
    # the same seed: the same student, whatever the method
    for a, b in zip(jax.tree.leaves(kd_state.params["student"]), jax.tree.leaves(fitnet_state.params["student"]),
                    strict=True):
        assert (a == b).all()
    assert fitnet_state.params["method"] and not kd_state.params["method"]
