"""How far jaxkd's KDSVD sign rule is from `torch.svd`'s, on the CIFAR pairs' real feature shapes.

    OPENBLAS_NUM_THREADS=1 python benchmarks/kdsvd_signs.py [--pairs rd_resnet32x4:rd_resnet8x4,...] [--batch 64]

Upstream's term depends on the sign `torch.svd` gives each teacher vector (per example, through the RBF between
consecutive stages); jaxkd makes each one's largest-magnitude component positive (jaxkd/methods/kdsvd.py). For
each teacher -> student pair of RepDistiller's two tables (mdistiller's pairs are among them) and each
`kdsvd.layout`: the stage outputs (`ModelOutput.features`) of jaxkd's models with random weights, in train mode
(batch statistics), on one batch of N(0, 1) 32x32 images, float32; then
- jaxkd: the method's term (`jaxkd.methods.kdsvd.kdsvd_losses`, summed);
- torch.svd: the upstream function as it runs on this machine's CPU (tests/reference/repdistiller_kdsvd.py,
  mdistiller_kdsvd.py with `teacher_sign="torch"`);
- sign flips: per stage transition, the share of examples where torch.svd's teacher sign, relative to jaxkd's,
  changes between the two stages: exactly where the two terms part (with none, they are equal);
- same rule: the reference with jaxkd's rule (`teacher_sign="largest_positive"`), which must equal jaxkd's term.
A pair whose paired stages differ in vector length (channels; map width for mdistiller) is refused by the method,
as listed. Results in docs/methods.md ("Where jaxkd differs": KDSVD).
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxkd.methods.base import apply_module  # noqa: E402
from jaxkd.methods.kdsvd import LAYOUTS, as_matrices, kdsvd_losses, vector_length  # noqa: E402
from jaxkd.models import get_model  # noqa: E402
from jaxkd.tools.published import REPDISTILLER_PAIRS_DIFFERENT, REPDISTILLER_PAIRS_SAME  # noqa: E402
from tests.reference import mdistiller_kdsvd, repdistiller_kdsvd  # noqa: E402

REFERENCES = {"repdistiller": repdistiller_kdsvd, "mdistiller": mdistiller_kdsvd}


def stage_outputs(arch: str, images, seed: int) -> list[np.ndarray]:
    """The NHWC stage outputs of `arch` with random weights, in train mode."""
    model = get_model(arch, 100)
    variables = model.init(jax.random.PRNGKey(seed), images[:2], train=False)
    forward = jax.jit(lambda v, x: apply_module(model, v, x, train=True, method=model.forward)[0].features)
    return [np.asarray(f, np.float32) for f in forward(variables, images)]


def torch_sign_flips(teacher: list[np.ndarray], layout: str) -> str:
    """Per stage transition, the share of examples where torch.svd's teacher sign relative to jaxkd's changes."""
    signs = []
    for f in teacher:
        _, _, v = torch.svd(torch.from_numpy(np.array(as_matrices(jnp.asarray(f), layout))))
        first = v[:, :, 0]
        signs.append(torch.sign(first.gather(1, first.abs().argmax(dim=1, keepdim=True)))[:, 0])
    return " ".join(f"{(a != b).float().mean().item():.0%}" for a, b in zip(signs, signs[1:]))


def measure(teacher_arch: str, student_arch: str, batch: int) -> list[str]:
    images = jax.random.normal(jax.random.PRNGKey(0), (batch, 32, 32, 3))
    teacher, student = stage_outputs(teacher_arch, images, 1), stage_outputs(student_arch, images, 2)
    rows = []
    for layout in LAYOUTS:
        pairs = list(zip(student, teacher))
        lengths = [(vector_length(s.shape, layout), vector_length(t.shape, layout)) for s, t in pairs]
        shapes = " ".join(f"{t.shape[1]}x{t.shape[2]}x{t.shape[3]}" for _, t in pairs)
        name = f"{teacher_arch} -> {student_arch}"
        if any(a != b for a, b in lengths):
            rows.append(f"| {name} | {layout} | {shapes} | refused: vector lengths (S, T) {lengths} | | | | |")
            continue
        ours = float(sum(kdsvd_losses([jnp.asarray(f) for f in student], [jnp.asarray(f) for f in teacher], 1, layout)))
        nchw = [[torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2))) for f in side]
                for side in (student, teacher)]
        theirs = float(sum(REFERENCES[layout].kdsvd_losses(*nchw, teacher_sign="torch")))
        same_rule = float(sum(REFERENCES[layout].kdsvd_losses(*nchw, teacher_sign="largest_positive")))
        flips = torch_sign_flips(teacher, layout)
        rows.append(f"| {name} | {layout} | {shapes} | {ours:.4g} | {theirs:.4g} | {ours / theirs:.3g} | "
                    f"{flips} | {abs(same_rule - ours) / abs(ours):.1e} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="", help="TEACHER:STUDENT,... (default: RepDistiller's two tables)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    pairs = ([tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs
             else REPDISTILLER_PAIRS_SAME + REPDISTILLER_PAIRS_DIFFERENT)
    print(f"batch {args.batch}, float32, torch {torch.__version__} on CPU, jax {jax.__version__} "
          f"{jax.default_backend()}")
    print("| pair (teacher -> student) | layout | teacher stages (HxWxC) | jaxkd term | torch.svd term | "
          "jaxkd / torch.svd | sign flips | same rule, rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for teacher_arch, student_arch in pairs:
        for row in measure(teacher_arch, student_arch, args.batch):
            print(row, flush=True)


if __name__ == "__main__":
    main()
