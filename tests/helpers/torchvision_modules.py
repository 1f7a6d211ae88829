"""torchvision's pure-Python modules (transforms, datasets.folder, models) as the tests' reference.

The torchvision wheel on the package index is built against CUDA torch: `import torchvision` fails beside the
CPU torch build (`operator torchvision::nms does not exist`) when its package `__init__` registers the C
extension's operators. The modules the tests need never call those operators, so `torchvision` is entered as a
bare namespace over the installed files, without running that `__init__`.
"""

import importlib
import importlib.util
import sys
import types


def load_torchvision_module(name: str) -> types.ModuleType:
    """Import `torchvision.<name>` (e.g. "models.resnet", "transforms.functional") without the C extension."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise ImportError("torchvision is not installed (it is a test dependency: pip install -e '.[test]')")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["torchvision"] = package
    return importlib.import_module(f"torchvision.{name}")
