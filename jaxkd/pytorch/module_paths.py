"""The one rule that maps RepDistiller's state_dicts onto jaxkd's Flax variables, for every architecture whose
Flax module paths mirror its PyTorch module paths (all of RepDistiller's but the WideResNets, which keep the
seed's layout table in `jaxkd.pytorch.layout`).

A Flax module at path (`layer1.0`, `downsample.0`) is the PyTorch module `layer1.0.downsample.0`; its leaves
map by kind, read off the Flax tree itself:
- a conv (params `kernel`, 4-D, HWIO): `weight` (OIHW, transposed), `bias` if it has one;
- a linear layer (params `kernel`, 2-D, (in, out)): `weight` ((out, in), transposed), `bias`;
- a BatchNorm (params `scale`): `weight`, `bias`, and from batch_stats `running_mean` (`mean`), `running_var`
  (`var`) and the counter `num_batches_tracked`, which Flax does not keep.
The entries come out in the order the forward pass first calls each module, which is the PyTorch modules'
registration order for these models, so an export lists its keys as PyTorch's `state_dict()` does. Adding an
architecture whose Flax paths mirror its PyTorch paths adds nothing here.
"""

from functools import lru_cache

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models import get_model
from jaxkd.pytorch.layout import BN_TENSORS, Entry

PROBE_SHAPE = (1, 32, 32, 3)


@lru_cache(maxsize=None)
def _variable_shapes(arch: str, num_classes: int) -> tuple[dict, dict]:
    """(the variables' shapes, {module path: index of its first call}), from one trace of `init`."""
    call_order = {}

    def record(next_fun, args, kwargs, context):
        call_order.setdefault(tuple(context.module.path), len(call_order))
        return next_fun(*args, **kwargs)

    model = get_model(arch, num_classes)
    with nn.intercept_methods(record):
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(PROBE_SHAPE))  # traced, never computed
    return shapes, call_order


def _module_entries(path: tuple, params: dict, stats: dict) -> list[Entry]:
    prefix = ".".join(path)
    if "scale" in params:  # a BatchNorm
        entries = []
        for torch_name, collection, leaf in BN_TENSORS:
            if collection is None:
                entries.append(Entry(f"{prefix}.{torch_name}", (), None, (), "counter"))
            else:
                source = params if collection == "params" else stats
                entries.append(Entry(f"{prefix}.{torch_name}", tuple(source[leaf].shape), collection,
                                     path + (leaf,), "vector"))
        return entries
    kernel = params["kernel"].shape
    if len(kernel) == 4:  # HWIO -> OIHW
        entries = [Entry(f"{prefix}.weight", (kernel[3], kernel[2], kernel[0], kernel[1]), "params",
                         path + ("kernel",), "conv")]
    else:  # (in, out) -> (out, in)
        entries = [Entry(f"{prefix}.weight", (kernel[1], kernel[0]), "params", path + ("kernel",), "linear")]
    if "bias" in params:
        entries.append(Entry(f"{prefix}.bias", tuple(params["bias"].shape), "params", path + ("bias",), "vector"))
    return entries


def _walk(path: tuple, params: dict, stats: dict):
    """(module path, its entries) for every leaf module under `path`."""
    if any(not isinstance(value, dict) for value in params.values()):  # a leaf module
        yield path, _module_entries(path, params, stats)
        return
    for name, child in params.items():
        yield from _walk(path + (name,), child, stats.get(name, {}))


def mirrored_layout(arch: str, num_classes: int) -> tuple[Entry, ...]:
    """Every tensor of RepDistiller's `state_dict()` for `arch` (canonical name), derived from the Flax model."""
    shapes, call_order = _variable_shapes(arch, num_classes)
    modules = sorted(_walk((), dict(shapes["params"]), dict(shapes.get("batch_stats", {}))),
                     key=lambda module: call_order[module[0]])
    return tuple(entry for _, entries in modules for entry in entries)
