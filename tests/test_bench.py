"""jaxkd.tools.bench at a tiny size (resnet8, batch 16, a few steps): records for `kd` with all three parts timed
(`none` in the A/B tests), written only where asked (a temporary folder), never over an existing file."""

import importlib.util
import json
import os
import re
import shlex
from pathlib import Path

import jax
import pytest

from configs import kd_wrn
from jaxkd import bench as bench_command  # the command: python -m jaxkd.bench
from jaxkd.engine.compile_options import CPU_YNN_OPTIONS, ENV_VAR
from jaxkd.errors import UserError
from jaxkd.methods import METHODS
from jaxkd.tools import bench, bench_torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config.model=resnet8", "--config.teacher.arch=resnet8", "--config.batch_size=16", "--steps=2",
        "--repeats=1", "--warmup_steps=1", "--epoch_images=72", "--torch_threads=1"]


def torch_flops(arch: str, batch: int, train: bool) -> int:
    """FLOPs of the seed's model (PyTorch's FlopCounterMode, multiply-add = 2) for a forward pass of `batch`
    images, and with `train` the backward pass of a cross-entropy loss."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from jaxkd.pytorch.torch_models import get_torch_model

    model = get_torch_model(arch, num_classes=100)
    with FlopCounterMode(display=False) as counter:
        _, logits = model(torch.randn(batch, 3, 32, 32))
        if train:
            torch.nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops()


@pytest.mark.slow
def test_tiny_bench_writes_kds_record_with_every_part(tmp_path, capsys, monkeypatch):
    """KD's record with every part timed (`none`'s, without a teacher: the A/B tests below)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    results_before = sorted((REPO / "benchmarks" / "results").glob("*"))
    argv = ["bench", f"--config={REPO / 'configs' / 'kd_wrn.py'}", "--methods=kd", f"--out={tmp_path}",
            "--note=test", "--torch_modes=eager,reduce-overhead", "--torch_compile_backend=aot_eager", *TINY]
    assert bench.main(argv) == 0
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(records) == ["kd"]
    for method, record in records.items():
        assert record["student"] == "resnet8" and record["batch_size"] == 16
        assert record["teacher"] == ("resnet8" if method == "kd" else None)
        assert record["device"]["device_kind"] and record["device"]["platform"]
        for part in ("jaxkd step", "torch step", "torch step [compile reduce-overhead]", "jaxkd epoch"):
            assert record["results"][part]["images_per_s"] > 0, (method, part)
        # eager and compiled PyTorch side by side, each with its ratio
        assert record["torch_modes"] == ["eager", "reduce-overhead"]
        assert record["results"]["torch step [compile reduce-overhead]"]["compile_backend"] == "aot_eager"
        assert record["results"]["ratio_jaxkd_over_torch_compile_reduce_overhead"] > 0
        assert record["results"]["jaxkd step"]["flops_per_step"] > 0
        # kd_wrn's RepDistiller pipeline keeps the last partial batch: 72 images are 4 steps of 16 and one of 8
        epoch = record["results"]["jaxkd epoch"]
        assert (epoch["steps"], epoch["last_batch_size"], epoch["images_per_repeat"]) == (5, 8, 72)
        assert record["results"]["ratio_jaxkd_over_torch"] > 0
        assert record["threads"]["torch_num_threads"] == 1
        assert "test" in record["notes"]
        on_cpu = record["device"]["platform"] == "cpu"  # the engine's compiler options, recorded
        assert record["cpu_ynn"] is on_cpu and (record["compiler_options"] == CPU_YNN_OPTIONS) is on_cpu
    # XLA's count against PyTorch's FLOP counter on the seed's model: the student's forward and backward, plus
    # the teacher's forward for KD. XLA counts ~5% less (it skips the multiplies by zero padding, which outweighs
    # the elementwise work PyTorch's counter leaves out); a count that missed the convolutions (as the compiled
    # program's does on GPU, where they are cuDNN calls) would be off by 100x.
    student_step, teacher_forward = torch_flops("resnet8", 16, train=True), torch_flops("resnet8", 16, train=False)
    ratio = records["kd"]["results"]["jaxkd step"]["flops_per_step"] / (student_step + teacher_forward)
    assert 0.85 < ratio < 1.1, ratio
    assert "jaxkd / torch compile reduce-overhead" in capsys.readouterr().out
    assert sorted((REPO / "benchmarks" / "results").glob("*")) == results_before  # nothing written in the repo


def test_flops_of_a_step_lowered_for_gpu_are_counted_by_the_cpu_backend(monkeypatch):
    """On GPU and TPU, `Lowered.cost_analysis()` gives None (plugin backends cannot count) and the compiled
    program's count misses the cuDNN convolutions; the bench then counts the lowered HLO with the CPU backend.
    Here the real KD step is lowered for CUDA and counted that way, against the CPU lowering's own count."""
    from jaxkd.engine.initial_state import create_train_state
    from jaxkd.engine.step import train_programs, zero_sums

    config = kd_wrn.get_config()
    config.model, config.teacher.arch, config.batch_size = "resnet8", "resnet8", 16
    train = bench.synthetic_split(64)
    setup = bench.bench_setup(config, train, jax.devices()[:1])
    args = (create_train_state(setup), zero_sums(setup), setup.teacher.variables, train.images,
            train.labels, train.index, jax.numpy.arange(64))
    program = train_programs(setup)[1]
    on_cpu = bench.lowered_flops(program.trace(*args).lower(lowering_platforms=("cpu",)))
    for_cuda = program.trace(*args).lower(lowering_platforms=("cuda",))
    monkeypatch.setattr(type(for_cuda), "cost_analysis", lambda self: None)  # as on a plugin backend
    assert on_cpu > 1e9 and bench.lowered_flops(for_cuda) == pytest.approx(on_cpu, rel=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="--ab=ynn compares an XLA:CPU option")
def test_ab_of_the_ynn_option_times_both_steps_in_one_process(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    argv = ["bench", f"--config={REPO / 'configs' / 'kd_wrn.py'}", "--methods=none", "--ab=ynn", "--notorch",
            f"--out={tmp_path}", *TINY, "--repeats=2"]
    assert bench.main(argv) == 0
    [path] = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert path.name.endswith("-none-ab-ynn.json") and record["ab"] == "ynn" and record["cpu_ynn"] is None
    assert record["teacher"] is None and record["student"] == "resnet8"  # `none`: no teacher
    off, on = record["results"]["jaxkd step [ynn=off]"], record["results"]["jaxkd step [ynn=on]"]
    assert (off["cpu_ynn"], on["cpu_ynn"]) == (False, True)
    assert off["compiler_options"] is None and on["compiler_options"] == CPU_YNN_OPTIONS
    assert ENV_VAR not in os.environ  # the A/B's setting does not outlive it
    assert len(off["seconds"]) == len(on["seconds"]) == 2 and "jaxkd epoch" not in record["results"]
    ab = record["results"]["ab"]
    assert ab["speed_ratio_b_over_a"] > 0 and len(ab["speed_ratio_b_over_a_per_repeat"]) == 2
    assert "A/B ynn" in capsys.readouterr().out


def test_ab_of_a_boolean_config_key():
    config = kd_wrn.get_config()
    config.lock()
    variants = bench.ab_variants(config, "data.saliencymix", "cpu")
    assert [name for name, _, _ in variants] == ["jaxkd step [data.saliencymix=False]",
                                                 "jaxkd step [data.saliencymix=True]"]
    assert [c.data.saliencymix for _, c, _ in variants] == [False, True] and not config.data.saliencymix
    assert variants[0][2] is variants[1][2] is None  # both with the engine's compiler options
    with pytest.raises(UserError, match="boolean config key"):
        bench.ab_variants(config, "loss.alpha", "cpu")
    with pytest.raises(UserError, match="no key 'loss.nope'"):
        bench.ab_variants(config, "loss.nope", "cpu")
    with pytest.raises(UserError, match="needs|compares an XLA:CPU option"):
        bench.ab_variants(config, "ynn", "gpu")


def test_ab_of_steps_per_dispatch_times_the_engine_chunks(tmp_path, capsys):
    argv = ["bench", f"--config={REPO / 'configs' / 'kd_wrn.py'}", "--methods=none", "--ab=steps_per_dispatch=1,2",
            "--notorch", f"--out={tmp_path}", *TINY, "--repeats=2"]
    assert bench.main(argv) == 0
    [path] = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert path.name.endswith("-none-ab-steps-per-dispatch-1-2.json") and record["steps_per_dispatch"] is None
    one, two = (record["results"][f"jaxkd step [steps_per_dispatch={k}]"] for k in (1, 2))
    assert (one["steps_per_dispatch"], two["steps_per_dispatch"]) == (1, 2)
    assert one["compile_s_chunk"] is None and two["compile_s_chunk"] > 0  # the 2-step program was built
    assert one["flops_per_step"] == two["flops_per_step"] > 0  # FLOPs are per step, from the 1-step program
    assert "A/B steps_per_dispatch" in capsys.readouterr().out


def test_ab_of_any_config_key_takes_two_values_of_its_type():
    config = kd_wrn.get_config()
    config.lock()
    before = config.steps_per_dispatch
    variants = bench.ab_variants(config, "steps_per_dispatch=1,16", "gpu")
    assert [c.steps_per_dispatch for _, c, _ in variants] == [1, 16] and config.steps_per_dispatch == before
    assert [c.loss.alpha for _, c, _ in bench.ab_variants(config, "loss.alpha=0,0.5", "cpu")] == [0.0, 0.5]
    assert [c.dtype for _, c, _ in bench.ab_variants(config, "dtype=float32,bfloat16", "cpu")] == ["float32",
                                                                                                   "bfloat16"]
    with pytest.raises(UserError, match="give two values"):
        bench.ab_variants(config, "steps_per_dispatch=1,2,4", "cpu")
    with pytest.raises(UserError, match="'x' is not a valid int"):
        bench.ab_variants(config, "steps_per_dispatch=1,x", "cpu")


def test_models_compute_in_the_config_dtype_unless_the_flag_says_otherwise(monkeypatch):
    config = kd_wrn.get_config()
    config.model, config.teacher.arch, config.dtype = "resnet8", "resnet8", "bfloat16"
    setup = bench.bench_setup(config, bench.synthetic_split(64), jax.devices()[:1])
    assert setup.student.dtype == setup.teacher.model.dtype == jax.numpy.bfloat16
    seen = []
    monkeypatch.setattr(bench, "_run_method", lambda config, method, **kwargs: seen.append(config.dtype) or [])
    bench.run(config, out="", with_torch=False)
    bench.run(config, out="", with_torch=False, dtype_name="float32")
    assert seen == ["bfloat16", "float32"] and config.dtype == "bfloat16"


def torch_side_setup(monkeypatch, teacher: str, student: str, examples: int):
    """(config, setup, built) for the PyTorch part of a KD pair at batch 4 without a JAX teacher; `built` lists
    the PyTorch models as the part builds them (student, then teacher)."""
    import jaxkd.pytorch.torch_models
    from jaxkd.engine.setup import Teacher, build
    from jaxkd.models import get_model

    config = kd_wrn.get_config()
    config.model, config.teacher.arch, config.batch_size = student, teacher, 4
    train = bench.synthetic_split(examples)
    # the JAX teacher's module (its classes are checked against the data's), never initialized or run
    setup = build(config, jax.devices()[:1], data=(train, train),
                  teacher=Teacher(get_model(teacher, train.num_classes), None, teacher))
    built, get_torch_model = [], jaxkd.pytorch.torch_models.get_torch_model
    monkeypatch.setattr(jaxkd.pytorch.torch_models, "get_torch_model",
                        lambda *args: built.append(get_torch_model(*args)) or built[-1])
    return config, setup, built


def test_torch_step_runs_a_zoo_pair_on_its_pytorch_references(monkeypatch, one_torch_thread):
    """The PyTorch part for RepDistiller's architectures (vgg8 -> MobileNetV2): both models come from their
    references (jaxkd/pytorch/torch_zoo), whose forward returns the logits alone, and a KD step runs on them."""
    import torch

    config, setup, built = torch_side_setup(monkeypatch, "vgg8", "MobileNetV2", examples=8)
    part = bench_torch.torch_part(config, setup, steps=2, warmup_steps=1, device="cpu", dtype_name="float32")
    before = [p.detach().clone() for p in built[0].parameters()]
    assert part.run() > 0 and part.info["loss"] == "gamma*CE + alpha*KD"
    assert [type(model).__module__ + "." + type(model).__name__ for model in built] == [
        "jaxkd.pytorch.torch_zoo.mobilenetv2.MobileNetV2", "jaxkd.pytorch.torch_zoo.vgg.VGG"]
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, built[0].parameters()))  # it trained


def test_the_imagenet_recipe_benches_on_images_of_its_crop_size_and_classes(monkeypatch, one_torch_thread):
    """configs/imagenet.py's pairs (a streaming source): synthetic images of the training crop's size
    (`data.image_size`: 224, here 40 to keep it quick) and ImageNet's 1000 classes; the PyTorch step takes them
    at that size, normalized with the recipe's ImageNet mean/std (torchvision's ToTensor + Normalize)."""
    import torch

    import jaxkd.pytorch.torch_models
    from jaxkd.config import recipes
    from jaxkd.engine.setup import Teacher, build
    from jaxkd.models import get_model

    config = recipes.imagenet("tv_resnet34", "tv_resnet18", "kd")
    assert (bench.bench_classes(config), bench.bench_image_size(config)) == (1000, 224)
    config.model, config.teacher.arch, config.data.image_size, config.batch_size = "tv_resnet18", "tv_resnet18", 40, 2
    train = bench.synthetic_split(4, bench.bench_classes(config), image_size=bench.bench_image_size(config))
    assert train.images.shape == (4, 40, 40, 3) and train.num_classes == 1000
    setup = build(config, jax.devices()[:1], data=(train, train),
                  teacher=Teacher(get_model("tv_resnet18", 1000), None, "tv_resnet18"))
    inputs, get_torch_model = [], jaxkd.pytorch.torch_models.get_torch_model

    def recording_model(*args):
        model = get_torch_model(*args)
        model.register_forward_pre_hook(lambda module, x: inputs.append(x[0].detach().clone()))
        return model

    monkeypatch.setattr(jaxkd.pytorch.torch_models, "get_torch_model", recording_model)
    bench_torch.torch_part(config, setup, steps=1, warmup_steps=1, device="cpu", dtype_name="float32")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.from_numpy(train.images[:2]).permute(0, 3, 1, 2) / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(inputs[0], expected)  # the warm-up's first step, the first batch


def test_compiled_torch_step_trains_the_student_as_eager_mode_does(monkeypatch, one_torch_thread):
    """torch.compile wraps the loss function and the optimizer step; after the same steps from the same seed the
    student's weights equal eager mode's (float rounding). The suite compiles with the
    `aot_eager` backend: the same Dynamo capture and AOTAutograd forward/backward graphs as inductor, run op by
    op instead of through generated C++ (inductor takes ~45 s for resnet8 on this CPU, aot_eager ~5 s); the
    inductor path is what `benchmarks/gpu/run.sh`'s dry run exercises."""
    import torch

    from jaxkd.pytorch.torch_models import get_torch_model

    config, setup, built = torch_side_setup(monkeypatch, "resnet8", "resnet8", examples=16)
    students = {}
    for mode in ("eager", "default"):  # reduce-overhead: in test_tiny_bench_writes_kds_record_with_every_part
        part = bench_torch.torch_part(config, setup, steps=2, warmup_steps=3, device="cpu", dtype_name="float32",
                                      mode=mode, compile_backend="aot_eager")
        part.run()
        students[mode] = [p.detach().clone() for p in built[-2].parameters()]
        assert part.name == bench_torch.torch_part_name(mode) and part.info["warmup_steps"] == 3
    torch.manual_seed(config.seed)
    initial = get_torch_model("resnet8", 100)  # the student before its steps (torch_part seeds the same way)
    for eager, compiled in zip(students["eager"], students["default"]):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(students["eager"], initial.parameters()))  # it trained
    torch._dynamo.reset()


def test_a_failed_compile_mode_is_noted_and_the_other_parts_kept(monkeypatch):
    calls = []

    def fake_torch_part(config, setup, steps, warmup_steps, device, dtype_name, mode, backend):
        calls.append(mode)
        if mode == "reduce-overhead":
            raise RuntimeError("CUDA graphs: something\nmore")
        return bench.Part(bench_torch.torch_part_name(mode), 1, lambda: 1.0)

    monkeypatch.setattr(bench, "torch_part", fake_torch_part)
    resets = []  # compiled parts start from an empty Dynamo cache (its recompile limit would silently bite)
    monkeypatch.setattr(bench, "forget_compiled_steps", lambda: resets.append(len(calls)))
    notes = []
    parts = bench.torch_parts(kd_wrn.get_config(), None, 1, 1, "cpu", ("eager", "reduce-overhead", "default"),
                              "inductor", notes)
    assert [p.name for p in parts] == ["torch step", "torch step [compile default]"] and len(calls) == 3
    assert resets == [0]  # once, before the record's first part
    bench.torch_parts(kd_wrn.get_config(), None, 1, 1, "cpu", ("eager",), "inductor", [])
    assert resets == [0]  # eager mode alone keeps the cache
    assert notes == ["PyTorch torch step [compile reduce-overhead] failed, left out: RuntimeError: CUDA graphs: "
                     "something"]
    monkeypatch.setattr(bench, "torch_part", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # eager mode's failure is a bug, not a compiler's problem
        bench.torch_parts(kd_wrn.get_config(), None, 1, 1, "cpu", ("eager",), "inductor", [])


def test_a_record_names_its_commit_and_whether_the_code_differed_from_it(tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert bench.git_commit(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "step.py").write_text("a = 1\n")
    git("add", "step.py")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "--short", "HEAD")
    assert bench.git_commit(tmp_path) == commit
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert bench.git_commit(tmp_path) == commit
    (tmp_path / "step.py").write_text("a = 2\n")
    assert bench.git_commit(tmp_path) == f"{commit}-dirty"


def test_records_are_never_overwritten(tmp_path):
    record = {"date": "2025-01-01", "method": "kd",
              "device": {"platform": "cpu", "cpu_model": "Some CPU(R) @ 2.0GHz", "device_kind": "cpu"}}
    first = bench.write_record(record, tmp_path)
    second = bench.write_record({**record, "run": 2}, tmp_path)
    assert first != second and first.name == "2025-01-01-cpu-some-cpu-kd.json"  # no (R), no clock
    assert "run" not in json.loads(first.read_text()) and json.loads(second.read_text())["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])  # no temporaries left


def test_pairs_are_the_configs_repdistillers_or_given(tmp_path):
    config = kd_wrn.get_config()
    assert bench.bench_pairs(config, "") == [("wideresnet40_2", "wideresnet16_2")]
    pairs = bench.bench_pairs(config, "repdistiller")
    assert len(pairs) == len(set(pairs)) == 13 and pairs[0] == ("wideresnet40_2", "wideresnet16_2")
    assert ("vgg13", "MobileNetV2") in pairs and ("wideresnet40_2", "ShuffleV1") in pairs
    assert bench.bench_pairs(config, "wrn40_2:wrn16_2, resnet8:resnet8") == [("wideresnet40_2", "wideresnet16_2"),
                                                                          ("resnet8", "resnet8")]
    with pytest.raises(UserError, match="TEACHER:STUDENT"):
        bench.bench_pairs(config, "wrn40_2")
    record = {"date": "2025-01-01", "method": "crd", "teacher": "rd_resnet32x4", "student": "ShuffleV1",
              "device": {"platform": "gpu", "cpu_model": "x", "device_kind": "NVIDIA H200"}}
    path = bench.write_record(record, tmp_path, pair_in_name=True)  # several pairs in one folder: named apart
    assert path.name == "2025-01-01-nvidia-h200-crd-rd-resnet32x4-shufflev1.json"


def test_other_methods_take_their_recipe():
    config = kd_wrn.get_config()
    config.lock()
    none_config, note = bench.method_config(config, "none")
    assert none_config.method == "none" and none_config.loss.alpha == 0.0 and none_config.model == config.model
    assert "configs/" in note and config.method == "kd"  # the base config is left alone
    # the recipe table's entries (jaxkd/config/recipes.py), named by the config a user would type
    ft_config, note = bench.method_config(config, "ft")
    assert (ft_config.loss.gamma, ft_config.loss.alpha, ft_config.loss.beta) == (1.0, 0.0, 200.0)
    assert ft_config.ft.init_epochs == 30 and note.endswith("configs/repdistiller.py:wrn_40_2,wrn_16_2,ft")
    crd_config, note = bench.method_config(config, "crd")  # CRD's own recipe, not CRD + KD's
    assert (crd_config.loss.alpha, crd_config.loss.beta) == (0.0, 0.8)
    assert note.endswith("configs/repdistiller.py:wrn_40_2,wrn_16_2,crd")
    dkd_config, note = bench.method_config(config, "dkd")
    assert dkd_config.loss.beta == 1.0 and dkd_config.dkd.beta == 6.0 and "configs/mdistiller.py:" in note


@pytest.mark.parametrize("argv, message", [
    (["--methods=nope"], "unknown method 'nope'"),
    (["--steps=0"], "--steps and --repeats must be positive"),
    (["--steps=4", "--config.steps_per_dispatch=8"], "would never run the 8-step program"),
    (["--num_runs=2,x"], "--num_runs 2,x: a comma list of positive numbers of runs"),
    (["--num_runs=2", "--ab=ynn"], "--num_runs and --ab: one at a time"),
    (["--torch_modes=eager,max"], "--torch_modes eager,max: a comma list of eager, default, reduce-overhead"),
    (["--pairs=wrn40_2"], "write each pair as TEACHER:STUDENT"),
    (["--config.modle=x"], "bad command line or config"),
    (["--out={tmp}/notes.txt"], "--out {tmp}/notes.txt: exists and is not a directory"),
    (["--out={tmp}/notes.txt/records"], "records: lies under {tmp}/notes.txt, which exists and is not a directory"),
])
def test_bad_command_lines_are_one_line_errors(argv, message, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("kept")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert bench.main(["bench", f"--config={REPO / 'configs' / 'kd_wrn.py'}", "--out=", *argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "kept"


def gpu_script_commands(dry_run: bool) -> list[tuple[str, str, list[str]]]:
    """(part, module, arguments) of every jaxkd command `benchmarks/gpu/run.sh` runs on a GPU (or, `dry_run`,
    with JAXKD_GPU_DRY_RUN=1), with the script's variables and arrays filled in."""
    text = (REPO / "benchmarks" / "gpu" / "run.sh").read_text().replace("\\\n", " ")
    variables = {"$python": "python3", "$records": "/tmp/records", "$scratch": "/tmp/scratch"}
    arrays, branch = {}, None
    commands = []
    for line in text.splitlines():
        for name, value in variables.items():
            line = line.replace(f'"{name}"', value)
        stripped = line.strip()
        if stripped.startswith("if [[ ${JAXKD_GPU_DRY_RUN"):
            branch = "dry"
        elif stripped == "else" and branch == "dry":
            branch = "gpu"
        elif stripped == "fi":
            branch = None
        match = re.match(r"^(\w+)=\((.*)\)$", stripped)
        if match and (branch is None or (branch == "dry") == dry_run):
            arrays[match[1]] = shlex.split(match[2])
        if not line.startswith("part "):
            continue
        part, words = shlex.split(line)[1], shlex.split(line)[3:]  # after `part NAME SECONDS`
        expanded = []
        for word in words:
            array = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            expanded += arrays[array[1]] if array else [word]
        if expanded[:2] == ["python3", "-m"] and expanded[2].startswith("jaxkd."):
            commands.append((part, expanded[2], expanded[3:]))
    return commands


@pytest.mark.parametrize("dry_run", [False, True])
def test_gpu_script_runs_valid_bench_and_train_commands(monkeypatch, dry_run):
    """The prepared GPU run must not find a stale flag or config key on a machine that is lent for minutes."""
    from jaxkd.engine.dispatch import steps_per_dispatch
    from jaxkd.tools import bench_full_run

    commands = gpu_script_commands(dry_run)
    parts = [part for part, _, _ in commands]
    assert parts == ["headline", "seeds", "headline_compiled", "pairs", "full_run", "pairs_compiled", "pairs_crd",
                     "pairs_bf16", "imagenet", "imagenet_bf16"]  # by importance
    monkeypatch.chdir(REPO)  # the script runs in the repository root
    for part, module, arguments in commands:
        if module == "jaxkd.bench_full_run":
            flags_, overrides = bench_full_run.parse_command_line(["jaxkd.bench_full_run", *arguments])
            assert flags_.time_limit < 0 and bool(overrides) == dry_run  # stopped before the part's limit
            continue
        assert module == "jaxkd.bench", part
        flags_ = bench.parse_config_command_line(["jaxkd.bench", *arguments], bench._define_bench_flags,
                                                 bench.BENCH_USAGE)
        for _, variant, _ in bench.ab_variants(flags_.config, flags_.ab, "gpu"):
            assert dry_run or steps_per_dispatch(variant, "gpu") <= flags_.steps  # the chunk is timed
        methods = flags_.methods
        assert methods in ("", "all") or set(methods.split(",")) <= set(METHODS)
        pairs = 13 if part.startswith("pairs") else 2 if part.startswith("imagenet") else 1
        assert len(bench.bench_pairs(flags_.config, flags_.pairs)) == pairs
        assert set(flags_.torch_modes.split(",")) <= set(bench.TORCH_MODES)
        assert flags_.torch_compile_backend == ("aot_eager" if dry_run and part == "pairs_compiled" else "inductor")
        assert flags_.steps == 2 if dry_run else flags_.steps >= 40  # the script's sizes were read


def test_the_demo_student_benches_on_its_sources_classes_and_writes_no_record_unless_asked(tmp_path, monkeypatch):
    """`--config configs/demo.py:student` (digits, a 10-class teacher file): the synthetic data has the source's
    10 classes, so the configured teacher fits (it was "the teacher has 10 classes, the dataset 100"), and without
    --out no record is written (the default was the tracked benchmarks/results/)."""
    from configs import demo
    from jaxkd.config.command_line import parse_config_command_line
    from tests.helpers.runs import save_random_teacher

    config = demo.get_config("student")
    config.teacher.checkpoint = str(save_random_teacher(tmp_path / "teacher.pth", "resnet20", num_classes=10))
    train = bench.synthetic_split(64, bench.bench_classes(config))
    assert train.num_classes == 10 and set(train.labels.tolist()) <= set(range(10))
    setup = bench.bench_setup(config, train, jax.devices()[:1])  # loads the teacher: refused before if 100 classes
    assert setup.teacher.arch == "resnet20"
    flag_values = parse_config_command_line(["bench", f"--config={REPO / 'configs/demo.py'}:student"],
                                            bench._define_bench_flags, bench.BENCH_USAGE)
    assert flag_values.out == ""
    monkeypatch.setattr(bench, "bench_method", lambda config, **kwargs: {"method": config.method})
    monkeypatch.setattr(bench, "format_table", lambda record: "table")
    monkeypatch.setattr(bench, "write_record", lambda *args: pytest.fail("a record was written"))
    assert bench.run(config, with_torch=False) == [{"method": "kd"}]


def test_the_input_part_times_jaxkds_loader_beside_torchvisions_dataloader_on_the_same_files(tmp_path, capsys):
    """`--input ROOT`: the streaming loader and torchvision's DataLoader(ImageFolder) read the photographs that
    benchmarks/make_photos.py writes (here 8, cut small), each measurement gives the batch its training step
    receives (jaxkd: uint8 NHWC, normalized on the device; torchvision: normalized float32 NCHW), and the record
    holds both rates with their ratio and the machine's load."""
    spec = importlib.util.spec_from_file_location("make_photos", REPO / "benchmarks" / "make_photos.py")
    make_photos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_photos)
    root = make_photos.write_photos(tmp_path / "photos", train=8, val=0)
    argv = ["bench", f"--input={root}", "--workers=0", "--batch_size=4", "--batches=1", "--warmup_batches=1",
            "--repeats=1", "--image_size=32", "--threads=1", f"--out={tmp_path / 'out'}", "--note=test"]
    assert bench_command.main(argv) == 0
    [path] = (tmp_path / "out").glob("*.json")
    record = json.loads(path.read_text())
    assert path.name.endswith("-input.json") and record["version"] == bench.RECORD_VERSION
    assert (record["input_images"], record["batch_size"], record["workers"], record["notes"]) == (8, 4, [0], ["test"])
    ours, theirs = (record["results"][f"{name} [workers=0]"] for name in ("jaxkd loader", "torchvision DataLoader"))
    # untimed: --warmup_batches after the batches each loader makes ahead (jaxkd: 1 reading thread; torchvision: none
    # in its main thread), so that the timed batches are the steady rate
    assert (ours["untimed_batches"], theirs["untimed_batches"]) == (2, 1)
    assert ours["batch"] == {"shape": [4, 32, 32, 3], "dtype": "uint8"}
    assert theirs["batch"] == {"shape": [4, 3, 32, 32], "dtype": "float32"}
    for part in (ours, theirs):
        assert part["images_per_repeat"] == 4 and len(part["seconds"]) == len(part["startup_seconds"]) == 1
        assert part["images_per_s"] == pytest.approx(4 / part["seconds"][0]) and part["images_per_cpu_second"] > 0
    ratio = record["results"]["ratio_jaxkd_over_torchvision"]["0"]
    assert ratio == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])
    assert len(record["load_average_before"]) == 3 and record["device"]["host_cpus"] >= 1
    assert "jaxkd loader" in capsys.readouterr().out


@pytest.mark.parametrize("flags_, message", [
    (["--input=/nonexistent/photos"], "/nonexistent/photos/train: no such folder"),
    (["--input=/nonexistent/photos", "--workers=1,x"], "--workers 1,x: a comma list"),
    (["--input=/nonexistent/photos", "--batches=0"], "must be >= 1"),
])
def test_bad_input_command_lines_are_one_line_errors(flags_, message, capsys):
    assert bench_command.main(["bench", *flags_]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
