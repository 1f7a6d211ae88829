"""Distillation methods by name (`config.method`): the registry, and each method's config section."""

from ml_collections import ConfigDict

from jaxkd.errors import UserError
from jaxkd.methods.ab import AB
from jaxkd.methods.at import AT
from jaxkd.methods.base import Batch, Method, MethodInit, Probe, TermOutput, apply_module, section_over_defaults
from jaxkd.methods.byot import BYOT
from jaxkd.methods.catkd import CATKD
from jaxkd.methods.cc import CC
from jaxkd.methods.crd import CRD
from jaxkd.methods.ctkd import CTKD
from jaxkd.methods.dist import DIST
from jaxkd.methods.dkd import DKD
from jaxkd.methods.dml import DML
from jaxkd.methods.fitnets import FitNets
from jaxkd.methods.fsp import FSP
from jaxkd.methods.ft import FT
from jaxkd.methods.kd import KD
from jaxkd.methods.kdsvd import KDSVD
from jaxkd.methods.mlkd import MLKD
from jaxkd.methods.nkd import NKD
from jaxkd.methods.nst import NST
from jaxkd.methods.ofd import OFD
from jaxkd.methods.pkt import PKT
from jaxkd.methods.reviewkd import ReviewKD
from jaxkd.methods.rkd import RKD
from jaxkd.methods.sdd import SDD
from jaxkd.methods.sp import SP
from jaxkd.methods.vid import VID
from jaxkd.methods.wttm import WTTM

METHODS: dict[str, type[Method]] = {
    "none": Method,  # the baseline: cross-entropy only
    "kd": KD,  # Hinton et al. 2015, RepDistiller's `--distill kd` (its term, `kd_term`, is alpha's)
    "fitnet": FitNets,  # Romero et al. 2015, hint on the second stage
    "at": AT,  # Zagoruyko & Komodakis 2017, attention transfer
    "crd": CRD,  # Tian et al. 2020, contrastive representation distillation
    "sp": SP,  # Tung & Mori 2019, similarity-preserving (RepDistiller's `similarity`)
    "cc": CC,  # Peng et al. 2019, correlation congruence (RepDistiller's `correlation`)
    "vid": VID,  # Ahn et al. 2019, variational information distillation
    "rkd": RKD,  # Park et al. 2019, relational (distance and angle)
    "pkt": PKT,  # Passalis & Tefas 2018, probabilistic knowledge transfer
    "nst": NST,  # Huang & Wang 2017, neuron selectivity transfer
    "kdsvd": KDSVD,  # Lee et al. 2018, singular vectors of consecutive stages (mdistiller's recipe)
    "ab": AB,  # Heo et al. 2019, activation boundaries (RepDistiller's `abound`), init stage only
    "ft": FT,  # Kim et al. 2018, factor transfer (RepDistiller's `factor`), paraphraser trained in the init stage
    "fsp": FSP,  # Yim et al. 2017, flow of solution procedure, init stage only
    "dml": DML,  # Zhang et al. 2018, deep mutual learning (peers trained together)
    "byot": BYOT,  # Zhang et al. 2019, be your own teacher (self-distillation heads)
    "dkd": DKD,  # Zhao et al. 2022, decoupled KD (mdistiller)
    "dist": DIST,  # Huang et al. 2022, KD from a stronger teacher (Pearson relations)
    "reviewkd": ReviewKD,  # Chen et al. 2021, knowledge review (ABF + HCL, mdistiller)
    "nkd": NKD,  # Yang et al. 2023, normalized KD (target and non-target parts, cls_KD)
    "wttm": WTTM,  # Zheng & Yang 2024, weighted transformed teacher matching (zkxufo/TTM)
    "ctkd": CTKD,  # Li et al. 2023, curriculum temperature (KD or DKD at a learned, adversarial temperature)
    "sdd": SDD,  # Wei et al. 2024, scale decoupled distillation (KD or DKD over the classifier's region logits)
    "catkd": CATKD,  # Guo et al. 2023, class attention transfer (the classifier's class activation maps)
    "ofd": OFD,  # Heo et al. 2019, overhaul of feature distillation (margins from the teacher's BNs, mdistiller)
    "mlkd": MLKD,  # Jin et al. 2023, multi-level logit distillation (a weak and a strong view, several temperatures)
}


def display_name(label: str) -> str:
    """A method, or a report's label of one (`crd+kd`, `dkd+ls`, `kd+dot`), as tables print it (each method's
    `display_name`): `CRD+KD`, `DKD+LS`, `KD+DOT`; a name it does not know, unchanged."""
    options = {"ls": "LS", "dot": "DOT"}  # logit standardization, the DOT optimizer
    return "+".join(METHODS[part].display_name if part in METHODS else options.get(part, part)
                    for part in label.split("+"))


def get_method(name: str, config) -> Method:
    """The method `name`, its settings read from `config.<name>` over its defaults."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name](name, config)


def config_section(name: str, **overrides) -> ConfigDict:
    """Method `name`'s config section: its defaults with `overrides` (what a recipe changes). A config holds the
    whole section, so that every key can be overridden on the command line and is recorded in config.json."""
    overrides = ConfigDict(overrides) if overrides else None
    return ConfigDict(section_over_defaults(overrides and ConfigDict({name: overrides}), name,
                                            METHODS[name].defaults))


__all__ = ["Batch", "METHODS", "Method", "MethodInit", "Probe", "TermOutput", "apply_module",
           "config_section", "display_name", "get_method"]
