"""The bench's PyTorch side: the seed's CE + KD train step on the architectures' PyTorch references, in eager
mode or under `torch.compile`, timed like the jaxkd parts (`jaxkd.tools.bench.Part`).

The step is what the seed's loop does per batch: teacher in eval mode under no_grad, `gamma * CE + alpha * KD`
(DistillKL: `kl_div(log_softmax(s/T), softmax(t/T), 'sum') * T^2 / B`), SGD with the config's momentum, weight
decay and Nesterov setting, on pre-normalized batches (the seed augments in DataLoader workers).

Modes (`TORCH_MODES`): `eager` is the seed as written. `default` and `reduce-overhead` are what a PyTorch user
would pick instead: the loss function (teacher forward, student forward, the loss; AOTAutograd compiles the
backward with it) and `optimizer.step` each wrapped in `torch.compile(mode=...)`, the recipe of PyTorch's
"compiling the optimizer" tutorial. `reduce-overhead` adds CUDA graphs on a GPU (each step starts with
`torch.compiler.cudagraph_mark_step_begin()`); on CPU it compiles like `default`. The compiled programs are
built during the warm-up (at least 3 steps: the optimizer's momentum buffers appear at the first step, which
recompiles its step once) and are excluded from the timing, as jaxkd's compile is.
"""

from __future__ import annotations

import time

import numpy as np

from jaxkd.data.augment import NORMALIZATIONS
from jaxkd.tools.bench_timing import Part

TORCH_MODES = ("eager", "default", "reduce-overhead")
COMPILED_WARMUP_STEPS = 3  # the first step compiles, the second recompiles the optimizer step (momentum buffers)


def torch_part_name(mode: str) -> str:
    """The record's name of the PyTorch part in `mode`: "torch step" for eager mode (the name records have always
    used), "torch step [compile MODE]" for torch.compile."""
    return "torch step" if mode == "eager" else f"torch step [compile {mode}]"


def torch_device_for(platform_name: str) -> str | None:
    """PyTorch's device matching JAX's, or None when this PyTorch cannot run there."""
    import torch

    if platform_name == "cpu":
        return "cpu"
    if platform_name == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


def torch_logits(model, x):
    """The logits of a PyTorch reference model: the seed's return (features, logits), RepDistiller's (as its
    own `forward(x)`) the logits alone."""
    out = model(x)
    return out[1] if isinstance(out, tuple) else out


def forget_compiled_steps() -> None:
    """Drops torch.compile's compiled code and guards (`torch._dynamo.reset()`), before a record's compiled
    parts are built. Dynamo keeps the compiled versions of a code object (`loss_of`, `SGD.step`) across calls
    of `torch_part`, one per model structure, and past `torch._dynamo.config.recompile_limit` (8) it runs the
    function uncompiled with only a warning (seen: 10 structures, 8 graphs): the later pairs of
    `--pairs repdistiller` would time eager mode under a compiled name. Only between records: a part built
    earlier in the same record would recompile inside its timing."""
    import torch

    torch._dynamo.reset()


def torch_part(config, setup, steps: int, warmup_steps: int, device: str, dtype_name: str, mode: str = "eager",
               compile_backend: str = "inductor"):
    """(b) the train step in PyTorch (`mode`: one of TORCH_MODES) with the architectures' PyTorch references, as a
    `jaxkd.tools.bench.Part`. `compile_backend`: torch.compile's backend (`inductor`, PyTorch's default, generates
    kernels; `aot_eager` traces the same forward and backward graphs and runs them op by op, without code
    generation: the test suite's way to exercise the compiled path in seconds instead of a minute)."""
    import torch
    import torch.nn.functional as F

    from jaxkd.pytorch.torch_models import get_torch_model

    if mode not in TORCH_MODES:
        raise ValueError(f"unknown PyTorch mode {mode!r}; one of {TORCH_MODES}")
    torch.manual_seed(config.seed)
    num_classes = setup.train.num_classes
    student = get_torch_model(config.model, num_classes).to(device).train()
    teacher = get_torch_model(setup.teacher.arch, num_classes).to(device).eval() if setup.teacher else None
    opt = config.optimizer
    optimizer = torch.optim.SGD(student.parameters(), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay, nesterov=opt.nesterov)
    loss = config.loss
    temperature = loss.kd_temperature
    batch = config.batch_size
    if device == "cuda":
        torch.backends.cudnn.benchmark = True

    num_batches = min(4, setup.steps_per_epoch)
    mean, std = NORMALIZATIONS[setup.pipeline.normalization]
    images = setup.train.images[: num_batches * batch].astype(np.float32) / 255.0
    _, height, width, channels = images.shape
    images = ((images - mean) / std).transpose(0, 3, 1, 2).reshape(num_batches, batch, channels, height, width)
    batches = [(torch.from_numpy(np.ascontiguousarray(images[i])).to(device),
                torch.from_numpy(setup.train.labels[i * batch:(i + 1) * batch].astype(np.int64)).to(device))
               for i in range(num_batches)]
    autocast_on = dtype_name == "bfloat16"

    def loss_of(x, y):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast_on):
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = torch_logits(teacher, x).float()
            logits = torch_logits(student, x).float()
            total = loss.gamma * F.cross_entropy(logits, y)
            if teacher is not None:
                kd = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                              F.softmax(teacher_logits / temperature, dim=1),
                              reduction="sum") * temperature**2 / logits.shape[0]
                total = total + loss.alpha * kd
        return total

    optimizer_step = optimizer.step
    mark_step = None
    if mode != "eager":
        loss_of = torch.compile(loss_of, mode=mode, backend=compile_backend)
        optimizer_step = torch.compile(optimizer.step, mode=mode, backend=compile_backend)
        if mode == "reduce-overhead":
            mark_step = torch.compiler.cudagraph_mark_step_begin  # CUDA graphs' outputs live until the next step

    def step(x, y):
        if mark_step is not None:
            mark_step()
        optimizer.zero_grad(set_to_none=True)
        loss_of(x, y).backward()
        optimizer_step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    warm = max(warmup_steps, 1 if mode == "eager" else COMPILED_WARMUP_STEPS)
    for i in range(warm):
        step(*batches[i % num_batches])
    sync()
    warmup_s = time.perf_counter() - start

    def run_steps():
        start = time.perf_counter()
        for i in range(steps):
            step(*batches[i % num_batches])
        sync()
        return time.perf_counter() - start

    losses = "gamma*CE + alpha*KD" if teacher is not None else "gamma*CE"
    info = {"warmup_s": warmup_s, "warmup_steps": warm, "steps": steps, "loss": losses, "device": device,
            "mode": mode, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}
    if mode != "eager":
        info["compile_backend"] = compile_backend
    return Part(torch_part_name(mode), steps * batch, run_steps, None, info)
