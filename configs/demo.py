"""The offline demo on scikit-learn's digits (no download): a resnet20 teacher, then a resnet8 KD student.

    python -m jaxkd.train --config configs/demo.py:teacher --workdir workdirs/demo/teacher
    python -m jaxkd.train --config configs/demo.py:student --workdir workdirs/demo/student

The seed's recipe (jaxkd/config/default.py), shortened to 12 epochs with the lr decayed after the first step of
epochs 8 and 10. A few minutes on 2 CPU cores. The student reads its teacher from the teacher's workdir.
Expected: the teacher reaches well over 90% test accuracy on the 364 test digits, and so does the student.
"""

from configs import default

TEACHER_WORKDIR = "workdirs/demo/teacher"


def get_config(role: str = "teacher"):
    if role not in ("teacher", "student"):
        raise ValueError(f"configs/demo.py takes 'teacher' or 'student', not {role!r}")
    config = default.get_config()
    config.data.source = "digits"
    config.epochs = 12
    config.optimizer.lr_decay_epochs = (8, 10)
    config.eval_every_epochs = 4
    config.checkpoint_every_epochs = 4
    config.log_every_steps = 10
    if role == "teacher":
        config.model = "resnet20"
    else:
        config.model = "resnet8"
        config.method = "kd"
        config.teacher.checkpoint = TEACHER_WORKDIR
        config.loss.gamma = 0.1
        config.loss.alpha = 0.9
    return config
