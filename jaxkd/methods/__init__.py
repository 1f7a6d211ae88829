"""Distillation methods by name (`config.method`).

Each entry names the module and class of one method; a method's module is imported only when it is used.
"""

import importlib

from jaxkd.errors import UserError
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput

METHODS = {
    "none": "jaxkd.methods.base:Method",  # the baseline: cross-entropy only
    "kd": "jaxkd.methods.kd:KD",  # Hinton et al. 2015 (the KD term itself is the engine's alpha term)
    "fitnet": "jaxkd.methods.fitnets:FitNets",  # Romero et al. 2015, hint on the second stage
    "at": "jaxkd.methods.at:AT",  # Zagoruyko & Komodakis 2017, attention transfer
    "crd": "jaxkd.methods.crd:CRD",  # Tian et al. 2020, contrastive representation distillation
    "dml": "jaxkd.methods.dml:DML",  # Zhang et al. 2018, deep mutual learning (peers trained together)
    "byot": "jaxkd.methods.byot:BYOT",  # Zhang et al. 2019, be your own teacher (self-distillation heads)
}


def get_method(name: str, config) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(config)


__all__ = ["Batch", "METHODS", "Method", "MethodInit", "Probe", "TermOutput", "get_method"]
