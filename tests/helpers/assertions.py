"""The comparisons the tests share: bitwise equality of two pytrees (exact resume), closeness scaled by the
reference's magnitude (parity), and the one-line `error:` a command gives for bad input."""

import jax
import numpy as np


def assert_bitwise_equal(a, b):
    """Two pytrees with the same leaves at the same paths (none missing or extra) and equal dtypes, shapes and
    values, bit for bit (exact resume)."""
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    paths_a, paths_b = ([jax.tree_util.keystr(path) for path, _ in leaves] for leaves in (leaves_a, leaves_b))
    assert paths_a == paths_b, f"leaves only in the first: {sorted(set(paths_a) - set(paths_b))}, only in the " \
                               f"second: {sorted(set(paths_b) - set(paths_a))}"
    for (path, x), (_, y) in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), jax.tree_util.keystr(path)


def assert_close_scaled(actual, reference, rel: float, what: str = ""):
    """max |actual - reference| <= rel * max |reference|: the parity criterion of the converter tests."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} vs {reference.shape}"
    diff, scale = float(np.max(np.abs(actual - reference))), float(np.max(np.abs(reference)))
    assert diff <= rel * scale, f"{what}: max|diff| {diff:.3g} > {rel:g} * max|ref| {scale:.3g}"


def assert_one_line_error(code, stdout, err, expected):
    """A command's exit for bad input: status 2, nothing on stdout, one `error:` line containing `expected`."""
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err

