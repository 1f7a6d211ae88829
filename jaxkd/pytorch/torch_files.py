"""Reading and writing `.pth` files safely.

Reading never runs code from a checkpoint: `torch.load(weights_only=True)`, with one addition to the allowed
types, `argparse.Namespace` (RepDistiller's `*_last.pth` stores its options as one; rebuilding it only sets
attributes). Tensors saved on a GPU are mapped to the CPU. The weights may sit at the top level (the seed's
`model.state_dict()`), or under `model` / `state_dict` (RepDistiller / mdistiller teacher files), with or
without DataParallel's `module.` prefix. Paths may be cloud URLs (`gs://`, `jaxkd.io.paths`): the file is read
whole into memory first.
"""

import argparse
import hashlib
import io
import pickle
import zipfile
from collections.abc import Mapping

import torch

from jaxkd.errors import UserError
from jaxkd.io.paths import as_path, input_exists
from jaxkd.io.safe_write import write_atomically

WRAPPER_KEYS = ("model", "state_dict")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
PICKLE_PROTO = pickle.PROTO  # first byte of a protocol-2+ pickle (the legacy torch.save format)


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with as_path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_torch_file(path) -> object:
    """`torch.load` with weights only, on the CPU, with errors a user can act on."""
    path = as_path(path)
    if not input_exists(path, str(path)):
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a .pth file")
    contents = path.read_bytes()
    if not (contents[:4] == ZIP_MAGIC or contents[:1] == PICKLE_PROTO):
        raise UserError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)")
    archive = contents[:4] == ZIP_MAGIC
    if archive:
        _check_archive(path, contents)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(io.BytesIO(contents), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error) or "Unsupported global" in str(error):
            raise UserError(f"{path}: refused, it holds pickled Python objects beyond tensors and plain "
                            f"containers, and loading them could run code; re-save just the model's "
                            f"state_dict with torch.save") from None
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(error)})") from None
    except Exception as error:  # a damaged file fails in many ways inside torch.load; all mean the same here
        where = "torch.load fails on it" if archive else "the legacy (pickle) format does not unpickle completely"
        raise UserError(f"{path}: not a readable PyTorch checkpoint, truncated or damaged: {where} "
                        f"({type(error).__name__}: {_first_line(error)}); download or copy it again") from None
    return loaded


def _check_archive(path, contents: bytes) -> None:
    """One line for a zip-format file that is cut short (no zip directory at its end), whose member fails its
    CRC (bytes changed in a download: `torch.load` reads such a file without a word, wrong weights and all), or
    whose tensor data member is shorter than its tensor."""
    try:
        with zipfile.ZipFile(io.BytesIO(contents)) as archive:
            damaged = archive.testzip()  # reads every member, checks its CRC-32
            short = None if damaged is not None else _short_member(archive)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable PyTorch checkpoint, truncated or damaged: its zip archive is "
                        f"incomplete (no zip directory at its end: {_first_line(error)}); download or copy it "
                        f"again") from None
    if damaged is not None:
        raise UserError(f"{path}: damaged: member {damaged} fails its CRC-32 check (its bytes changed after "
                        f"torch.save wrote it); download or copy it again")
    if short is not None:
        raise UserError(f"{path}: damaged: {short}; download or copy it again")


ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                 "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16}


class _Inert:
    """What `_StorageSizes` makes of every global a pickle names: accepts any arguments and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _StorageSizes(pickle.Unpickler):
    """Reads a zip-format .pth's `data.pkl` without running anything (every global becomes `_Inert`) to collect
    {storage key: bytes its tensor data needs} from the storages' persistent ids
    ('storage', torch.<Type>Storage, key, location, number of elements)."""

    def __init__(self, file):
        super().__init__(file)
        self.sizes = {}

    def find_class(self, module, name):
        return type(name, (_Inert,), {})

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            element = ELEMENT_BYTES.get(getattr(pid[1], "__name__", "").removesuffix("Storage"))
            if element is not None and isinstance(pid[4], int):
                self.sizes[str(pid[2])] = pid[4] * element
        return _Inert()


def _short_member(archive: zipfile.ZipFile) -> str | None:
    """A line naming the first data member shorter than its tensor needs, or None (none, or not readable)."""
    [pickled] = [name for name in archive.namelist() if name.endswith("/data.pkl")] or [None]
    if pickled is None:
        return None
    reader = _StorageSizes(io.BytesIO(archive.read(pickled)))
    try:
        reader.load()
    except Exception:  # a form this reader does not follow: torch.load's own checks remain
        return None
    folder = pickled[: -len("data.pkl")] + "data/"
    for key, needed in reader.sizes.items():
        try:
            held = archive.getinfo(folder + key).file_size
        except KeyError:
            return f"member {folder + key} is missing"
        if held < needed:
            return f"member {folder + key} holds {held} bytes, its tensor needs {needed}"
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def extract_state_dict(obj, source: str = "checkpoint") -> dict:
    """The tensor mapping inside a loaded checkpoint, unwrapped from `model`/`state_dict` and `module.`."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{source}: expected a state_dict (a mapping of names to tensors), "
                        f"found {type(obj).__name__}")
    for wrapper in WRAPPER_KEYS:
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a "
                            f"state_dict, or a dict holding one under 'model' or 'state_dict'")
        key = str(key)
        tensors[key[len("module."):] if key.startswith("module.") else key] = value.detach().cpu()
    if not tensors:
        raise UserError(f"{source}: holds no tensors")
    return tensors


def torch_file_contents(state_dict, layout: str, **info) -> object:
    """What a `.pth` of `layout` holds: the seed's and torchvision's bare `state_dict()`, RepDistiller's
    `train_teacher.py` dict `{"model": state_dict, ...}` (its `load_teacher` reads `torch.load(path)["model"]`),
    with the known `info` (e.g. `epoch`, `accuracy`) beside it, or mdistiller's student file `{"model":
    state_dict}` (its trainer's `student_state`)."""
    if layout == "mdistiller":
        return {"model": state_dict}
    if layout != "repdistiller":
        return state_dict
    return {"model": state_dict, **{key: value for key, value in info.items() if value is not None}}


def write_torch_file(contents, path, force: bool = False) -> None:
    """`torch.save` to a temporary file beside `path`, then rename it into place (never a half-written file)."""
    write_atomically(path, lambda file: torch.save(contents, file), force, "the state_dict")
