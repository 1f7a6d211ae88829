"""The device mesh every jitted function runs on: one `data` axis over the devices.

State and datasets are replicated, batches are split along `data`; with jit's sharding propagation the same
code runs on one device or many, and reductions over the batch (BN statistics, losses) span the global batch.
"""

import functools

import jax
from jax.sharding import NamedSharding, PartitionSpec


@functools.cache
def data_mesh(devices: tuple | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with a `data` axis over `devices` (default: all devices). Auto axis types: permutation
    gathers (mixing partners, batch selection) fail under Explicit sharding."""
    devices = tuple(jax.devices()) if devices is None else tuple(devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))
