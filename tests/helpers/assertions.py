"""The comparisons the tests share: bitwise equality of two pytrees (exact resume), closeness scaled by the
reference's magnitude (parity), the one-line `error:` a command gives for bad input, and PyTorch's uniform
default initialization."""

import math

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


def relative(actual, reference) -> float:
    """max |actual - reference| / max |reference|, in float64, of two arrays of one shape."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


def assert_uniform(values, bound: float, what: str, edge_slack: int = 10):
    """Values of U(-bound, bound), as PyTorch's default initializations draw: within the bound, the largest
    within edge_slack / n of it, mean 0 and std bound / sqrt(3) to 5 standard errors (the sample std of n uniform
    values has a standard error of ~0.45 std / sqrt(n))."""
    values = np.asarray(values, np.float64).ravel()
    sigma, n = bound / math.sqrt(3), values.size
    assert np.abs(values).max() <= bound and np.abs(values).max() > (1 - edge_slack / n) * bound, what
    assert abs(values.mean()) < 5 * sigma / math.sqrt(n), what
    assert abs(values.std() - sigma) < 5 * 0.45 * sigma / math.sqrt(n), what
