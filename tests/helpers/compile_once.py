"""`jit_once`: `jax.jit` for a test's program that runs once or a few times, compiled without XLA's backend
optimizations on CPU (the options `create_train_state` uses for its one-off program). Eager mode compiles one
small program per operation and shape, and an initializer's random draws take XLA's optimizing compile seconds:
BYOT's two heads' `init`, jitted, 4.4 s to compile by default and 1.3 s this way."""

import jax

from jaxkd.engine.initial_state import INITIAL_STATE_CPU_OPTIONS

ONCE = INITIAL_STATE_CPU_OPTIONS


def jit_once(fun, **jit_kwargs):
    """`fun` jitted with the ONCE compiler options."""
    return jax.jit(fun, compiler_options=ONCE, **jit_kwargs)
