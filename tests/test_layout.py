"""The package layers: the library (`jaxkd`) imports neither the recipes (`configs`) nor the converter's command
line (`convert`), which both build on it, so no import cycle runs between the top-level packages; and no module
of the library imports another of its modules inside a function (where a cycle would hide), except the optional
heavy dependencies' users listed here with their reason."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module -> the jaxkd modules it may import inside a function, and why
LAZY_IMPORTS = {
    "jaxkd/io/workdir.py": {"jaxkd.pytorch.converter", "jaxkd.pytorch.torch_files"},  # torch is optional
    "jaxkd/io/model_reference.py": {"jaxkd.pytorch.converter"},  # torch is optional: only a .pth needs it
    "jaxkd/tools/bench_torch.py": {"jaxkd.pytorch.torch_models"},  # torch is optional: only the PyTorch side
}


def imports(path: Path):
    """(module imported, whether inside a function or class body) for every import statement of `path`."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.col_offset > 0))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.col_offset > 0) for alias in node.names]
    return found


def library_modules():
    return sorted(REPO.glob("jaxkd/**/*.py"))


def test_the_library_imports_neither_configs_nor_convert():
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in library_modules()
                 for module, _ in imports(path) if module.split(".")[0] in ("configs", "convert")]
    assert not offenders, offenders


def test_no_library_module_imports_another_inside_a_function_unless_listed():
    offenders = []
    for path in library_modules():
        name = str(path.relative_to(REPO))
        for module, nested in imports(path):
            if nested and module.split(".")[0] == "jaxkd" and module not in LAZY_IMPORTS.get(name, set()):
                offenders.append(f"{name}: {module}")
    assert not offenders, offenders


def test_tests_import_helpers_never_another_test_module():
    """Test files share code through tests/helpers/ (and fixtures through tests/conftest.py), never by importing
    one another or conftest."""
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in sorted(REPO.glob("tests/**/*.py"))
                 for module, _ in imports(path)
                 if module.startswith(("tests.test_", "tests.conftest")) or module.split(".")[0] == "conftest"]
    assert not offenders, offenders


def test_conftest_holds_only_pytest_hooks_and_fixtures():
    """tests/conftest.py defines no helper functions or classes: every top-level function is a fixture or a
    `pytest_` hook (helpers live in tests/helpers/ by concern)."""
    tree = ast.parse((REPO / "tests" / "conftest.py").read_text())
    helpers = [node.name for node in tree.body if isinstance(node, ast.ClassDef) or (
        isinstance(node, ast.FunctionDef) and not node.name.startswith("pytest_")
        and not any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list))]
    assert not helpers, helpers


# jaxkd/methods/ modules that are no method but code the methods share (base.py has its own test file)
SHARED_METHOD_MODULES = {"__init__", "base", "functional", "pooling", "crd_kernels"}


def test_one_test_file_per_method_file():
    """Every method's file jaxkd/methods/<name>.py has its tests/test_method_<name>.py, and every such test file
    names one module there (no file grouping several methods)."""
    modules = {path.stem for path in (REPO / "jaxkd" / "methods").glob("*.py")}
    tested = {path.stem.removeprefix("test_method_") for path in (REPO / "tests").glob("test_method_*.py")}
    assert sorted(modules - SHARED_METHOD_MODULES - tested) == [], "methods without a test file"
    assert sorted(tested - modules) == [], "test files that name no method file"
