"""The device mesh every jitted function runs on: one `data` axis over the devices.

State and datasets are replicated (but for a method state its method lays out otherwise: CRD's sharded banks),
batches are split along `data`; with jit's sharding propagation the same code runs on one device or many, and
reductions over the batch (BN statistics, losses) span the global batch.
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


def train_state_sharding(mesh: jax.sharding.Mesh, state, method):
    """The shardings of a train state (its arrays or their shapes): replicated, the method state as the method
    lays it out (`Method.state_sharding`)."""
    whole = replicated(mesh)
    return jax.tree.map(lambda _: whole, state).replace(method_state=method.state_sharding(mesh, state.method_state))


def process_rows(sharding: NamedSharding, global_rows: int) -> slice:
    """The rows of a `global_rows`-row batch sharded by `sharding` that this process's devices hold: the part of
    each batch this process reads and passes to `jax.make_array_from_process_local_data`."""
    spans = sorted({(index[0].start or 0, global_rows if index[0].stop is None else index[0].stop)
                    for index in sharding.addressable_devices_indices_map((global_rows,)).values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(end - begin for begin, end in spans) != stop - start:
        raise ValueError(f"this process's devices hold non-contiguous rows {spans} of the batch")
    return slice(start, stop)
