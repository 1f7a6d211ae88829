"""XLA compiler options for jaxkd's jitted steps, per platform: `jax.jit(f, compiler_options=compiler_options(mesh))`.

On CPU, `xla_cpu_experimental_ynn_fusion_type` chooses what XLA hands to YNNPACK. XLA's default (jaxlib 0.10.2)
is single dots, single convolutions and reductions (INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE); jaxkd asks
for DOT, ELTWISE, REDUCE instead: dot fusions, elementwise fusions (BN, ReLU, the optimizer) and reductions
go to YNNPACK and the convolutions stay with XLA's own kernels. That makes the train step 1.76-1.9x faster on
CPU (benchmarks/README.md); the PyTorch parity tests pass with it at the same margins. A program that runs a
depthwise-separable model (`cpu_elementwise_in_xla`: the MobileNets, ShuffleV2; as student, teacher or a method's
own network, `Method.networks`, e.g. a DML peer) asks for DOT, REDUCE only: on CPU their depthwise convolutions
are shifted multiply-adds (`jaxkd.models.grouped_conv`) that XLA fuses into one loop, but YNNPACK takes every
multiply and add alone, each shifted view copied out first (MobileNetV2's train step 1.6x faster without ELTWISE,
the KD step vgg13 -> MobileNetV2 1.4x; ShuffleV1, whose step is mostly grouped 1x1 convolutions, BN and ReLU, is
1.3x faster with it and keeps it: benchmarks/README.md). GPU and TPU get no options (an option a backend does not
know fails the compile).

Turning it off:
  - for a whole run: `JAXKD_CPU_YNN=0 python -m jaxkd.train ...` (also `false`, `off`, `no`; `1` or unset = on);
  - in code: `compiler_options(mesh, cpu_ynn=False)`;
  - an explicit `--xla_cpu_experimental_ynn_fusion_type=...` in `XLA_FLAGS` wins: jaxkd then adds nothing.
The option is experimental in XLA: if this jaxlib rejects it, jaxkd warns once and compiles with XLA's defaults.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import jax
import jax.numpy as jnp

from jaxkd.errors import UserError

ENV_VAR = "JAXKD_CPU_YNN"
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# compiler_options takes the enum names; XLA_FLAGS the short ones (--xla_cpu_experimental_ynn_fusion_type=dot,...)
CPU_YNN_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}
# programs with a depthwise-separable model (cpu_elementwise_in_xla: the MobileNets, ShuffleV2)
CPU_YNN_OPTIONS_DEPTHWISE = {YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def cpu_ynn_enabled(cpu_ynn: bool | None = None) -> bool:
    """Whether jaxkd asks for the YNN fusions on CPU: `cpu_ynn` when given, else `$JAXKD_CPU_YNN` (default on)."""
    if cpu_ynn is not None:
        return bool(cpu_ynn)
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("",) + _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: use 1 (YNN fusions on CPU, the default) or 0 (off)")


@contextlib.contextmanager
def cpu_ynn_setting(cpu_ynn: bool | None):
    """Within the block, `$JAXKD_CPU_YNN` says `cpu_ynn` (None: leaves it alone), so that steps built there (e.g.
    `make_train_step`) are compiled with or without the option: for A/B comparisons."""
    if cpu_ynn is None:
        yield
        return
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "1" if cpu_ynn else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = previous


def _platform_of(where) -> str:
    if where is None:
        return jax.default_backend()
    if isinstance(where, str):
        return where
    if isinstance(where, jax.sharding.Mesh):
        return where.devices.flat[0].platform
    return where.platform  # a device


def compiler_options(where: jax.sharding.Mesh | jax.Device | str | None = None, *,
                     cpu_ynn: bool | None = None, models=()) -> dict | None:
    """The `compiler_options` for `jax.jit` on `where`'s platform (a mesh, a device, a platform name, or None for
    the default backend), or None for XLA's defaults; `models`: the Flax modules the program runs.

    CPU: `CPU_YNN_OPTIONS` (YNNPACK for dots, elementwise ops and reductions), or `CPU_YNN_OPTIONS_DEPTHWISE` when
    one of `models` is depthwise-separable (`cpu_elementwise_in_xla`, module docstring), unless turned off by
    `cpu_ynn=False` or `JAXKD_CPU_YNN=0`, or `XLA_FLAGS` already sets the option, or this jaxlib rejects it
    (a warning then). Other platforms: None."""
    if _platform_of(where) != "cpu" or not cpu_ynn_enabled(cpu_ynn):
        return None
    if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None  # the user's flag decides
    depthwise = any(getattr(model, "cpu_elementwise_in_xla", False) for model in models)
    options = CPU_YNN_OPTIONS_DEPTHWISE if depthwise else CPU_YNN_OPTIONS
    return dict(options) if _cpu_accepts(tuple(options.items())) else None


@functools.cache
def _cpu_accepts(options: tuple) -> bool:
    """Whether XLA:CPU compiles a trivial program with `options` (a few ms, once per process)."""
    cpu = jax.devices("cpu")[0]
    probe = jax.ShapeDtypeStruct((1,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(cpu))
    try:
        jax.jit(lambda x: x + 1).lower(probe).compile(compiler_options=dict(options))
    except Exception as error:  # jaxlib raises its runtime error type for an unknown option or value
        warnings.warn(f"this jaxlib rejects the XLA:CPU options {dict(options)} ({str(error).splitlines()[0]}); "
                      f"compiling with XLA's defaults (set {ENV_VAR}=0 to silence this)", stacklevel=3)
        return False
    return True
