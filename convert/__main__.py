"""Command line: move checkpoints between PyTorch (.pth) and jaxkd (Orbax model checkpoints).

    python -m convert import wrn40_2.pth --out checkpoints/wrn40_2 [--arch NAME] [--layout auto]
    python -m convert export checkpoints/wrn40_2 --out wrn40_2_jax.pth [--layout pytorch-kd|repdistiller] [--verify]
    python -m convert import resnet34-b627a593.pth --out checkpoints/tv_resnet34    # torchvision's files too

User mistakes print one line starting with "error:" and exit with status 2; nothing is written then.
"""

import argparse
import sys

from jaxkd.errors import UserError, run_command
from jaxkd.io.paths import absolute
from jaxkd.io.safe_write import check_output

LAYOUTS = ("pytorch-kd", "repdistiller", "torchvision", "mdistiller")  # jaxkd.pytorch.layout's, without importing JAX
VERIFY_BATCH = 8
VERIFY_IMAGE_SIZE = {"imagenet": 64, "cifar": 32}  # 64: the ImageNet networks' last maps are 2x2, pooled
VERIFY_TOLERANCE = 1e-4  # max |diff| relative to max |logit|; fp32 on CPU gives ~1e-6


def _count_parameters(variables) -> int:
    import jax
    return sum(int(leaf.size) for leaf in jax.tree.leaves(variables["params"]))


def run_import(args) -> None:
    from jaxkd import __version__
    from jaxkd.io.model_checkpoint import save_model_checkpoint
    from jaxkd.pytorch.converter import import_torch
    from jaxkd.pytorch.torch_files import sha256_of

    out = check_output(args.out, args.force, directory=True)
    imported = import_torch(args.src, arch=args.arch, layout=args.layout)
    how = "inferred from the tensor shapes" if imported.arch_inferred else "as given by --arch"
    print(f"read {args.src} ({imported.layout} layout): {imported.arch} ({how}), {imported.num_classes} classes, "
          f"{_count_parameters(imported.variables):,} parameters")
    metadata = {
        "arch": imported.arch,
        "num_classes": imported.num_classes,
        "source": str(absolute(args.src)),
        "source_sha256": sha256_of(args.src),
        "source_layout": imported.layout,
        "written_by": f"jaxkd {__version__} convert import",
    }
    path = save_model_checkpoint(out, imported.variables, metadata, force=args.force)
    print(f"wrote {path}")


def verify_export(state_dict, variables, arch: str, num_classes: int) -> tuple[float, float]:
    """Loads `state_dict` strictly into the PyTorch reference model and compares its eval logits with JAX's
    on a random batch; returns (max |diff|, max |PyTorch logit|)."""
    import jax
    import numpy as np
    import torch

    from jaxkd.models import IMAGENET_ARCHITECTURES, canonical_name, get_model
    from jaxkd.pytorch.torch_models import get_torch_model

    torch_model = get_torch_model(arch, num_classes)
    torch_model.load_state_dict(state_dict, strict=True)
    torch_model.eval()
    size = VERIFY_IMAGE_SIZE["imagenet" if canonical_name(arch) in IMAGENET_ARCHITECTURES else "cifar"]
    images = np.random.default_rng().standard_normal((VERIFY_BATCH, size, size, 3), dtype=np.float32)
    with torch.no_grad():
        reference = torch_model.forward_all(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits
    with jax.default_matmul_precision("highest"):
        _, logits = get_model(arch, num_classes).apply(variables, images, train=False)
    reference = reference.numpy()
    return float(np.max(np.abs(np.asarray(logits) - reference))), float(np.max(np.abs(reference)))


def run_export(args) -> None:
    from jaxkd.io.model_reference import open_model
    from jaxkd.pytorch.converter import flax_to_torch, native_layout
    from jaxkd.pytorch.layout import rename_repdistiller_key
    from jaxkd.pytorch.torch_files import torch_file_contents, write_torch_file

    out = check_output(args.out, args.force)
    opened = open_model(args.src)
    variables, arch, num_classes, metadata = opened.variables, opened.arch, opened.num_classes, opened.metadata or {}
    # default: the layout an imported model came in (its metadata), so that its own code loads it back strictly
    layout = args.layout or metadata.get("source_layout") or native_layout(arch)
    state_dict = flax_to_torch(variables, arch, layout=layout)
    if args.verify:
        # the reference has the architecture's own layout: RepDistiller's WRN names are renamed onto it
        native = (state_dict if layout == native_layout(arch)
                  else {rename_repdistiller_key(key): value for key, value in state_dict.items()})
        diff, scale = verify_export(native, variables, arch, num_classes)
        ok = diff <= VERIFY_TOLERANCE * scale
        print(f"verify: strict load into the PyTorch {arch} ok; eval logits on a random batch of "
              f"{VERIFY_BATCH}: max |diff| = {diff:.3g} (max |logit| {scale:.3g}) "
              f"{'ok' if ok else 'TOO LARGE'}")
        if not ok:
            raise UserError(f"verification failed: max |diff| {diff:.3g} exceeds {VERIFY_TOLERANCE:g} x "
                            f"{scale:.3g}; {out} not written")
    write_torch_file(torch_file_contents(state_dict, layout, accuracy=metadata.get("test_top1")), out,
                     force=args.force)
    wrapped = {"repdistiller": ", under 'model' as RepDistiller saves it",
               "mdistiller": ", under 'model' as mdistiller saves a student"}.get(layout, "")
    why = ", the layout it was imported from" if not args.layout and metadata.get("source_layout") else ""
    print(f"wrote {out} ({layout} layout{why}{wrapped}, {arch}, {len(state_dict)} tensors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    importer = commands.add_parser("import", help="a .pth state_dict -> an Orbax model checkpoint directory")
    importer.add_argument("src", help="the .pth file (seed, RepDistiller, torchvision or mdistiller layout, plain "
                                      "or wrapped)")
    importer.add_argument("--out", required=True, help="the checkpoint directory to write")
    importer.add_argument("--arch", help="architecture name (default: inferred from the tensor shapes)")
    importer.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS)
    importer.add_argument("--force", action="store_true", help="replace an existing --out")
    importer.set_defaults(run=run_import)

    exporter = commands.add_parser("export", help="an Orbax model checkpoint -> a .pth state_dict")
    exporter.add_argument("src", help="the model: a checkpoint directory (from `convert import`), a training "
                                      "workdir or a .pth (written again in --layout)")
    exporter.add_argument("--out", required=True, help="the .pth file to write")
    exporter.add_argument("--layout", choices=LAYOUTS,
                          help="default: the layout an imported model came in (its metadata's source_layout), "
                               "else the architecture's own (pytorch-kd for the seed's family, repdistiller for "
                               "RepDistiller's other architectures, torchvision for tv_*, mdistiller for "
                               "MobileNetV1)")
    exporter.add_argument("--verify", action="store_true",
                          help="load the export strictly into the PyTorch reference and compare logits with JAX")
    exporter.add_argument("--force", action="store_true", help="replace an existing --out")
    exporter.set_defaults(run=run_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
