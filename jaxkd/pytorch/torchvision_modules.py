"""torchvision's pure-Python modules (transforms, datasets.folder, models) without its C extension.

The torchvision wheel on the package index is built against CUDA torch: `import torchvision` fails beside the
CPU torch build (`operator torchvision::nms does not exist`) when its package `__init__` registers the C
extension's operators. The transforms, ImageFolder and model definitions never call those operators, so
`torchvision` is entered as a bare namespace over the installed files, without running that `__init__` (the input
bench's torchvision part, and the tests' references).
"""

import importlib
import importlib.util
import sys
import types

from jaxkd.errors import UserError


def torchvision_module(name: str) -> types.ModuleType:
    """`torchvision.<name>` (e.g. "models.resnet", "transforms.functional") from its pure-Python files. An already
    imported torchvision is used as it is."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise UserError("this needs torchvision, a test dependency: pip install -e '.[test]' (the input bench: or "
                            "pass --notorch)")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__, package.__file__ = spec, spec.origin
        sys.modules["torchvision"] = package
    return importlib.import_module(f"torchvision.{name}")
