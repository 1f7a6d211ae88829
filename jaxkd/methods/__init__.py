"""Distillation methods by name (`config.method`)."""

from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput
from jaxkd.methods.kd import KD

METHODS = {
    "none": Method,  # the baseline: cross-entropy only
    "kd": KD,
}


def get_method(name: str, config) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name](config)


__all__ = ["Batch", "METHODS", "Method", "MethodInit", "Probe", "TermOutput", "get_method"]
