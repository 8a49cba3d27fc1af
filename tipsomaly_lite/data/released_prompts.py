"""The Tipsomaly authors' released learnable pixel prompts, fetched and loaded without running pickled code.

The authors trained two pairs of prompts (normal, anomalous), each ``(8, 1024)`` for TIPS L/14
at 518 px, and published them under the MIT licence in their repository as
``learnable_params_2.pth`` (epoch 2). Following the zero-shot protocol (docs/method.md §2.3), the prompts
**trained on MVTec AD** are used to evaluate every other dataset, and the prompts **trained on
VisA** are used to evaluate MVTec AD, so a benchmark never sees its own test images in training.

The files are plain ``torch.save`` pickles of a ``torch.nn.ParameterList``. Unpickling an
arbitrary file can run arbitrary code, so :func:`load_prompt_file` only ever uses torch's
weights-only unpickler, with ``ParameterList`` as the single extra class it may rebuild; a file
that names anything else is refused with :class:`UnsafePromptFileError` before any of it runs.

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tipsomaly_lite.io.download import DownloadError, cache_dir, download as download_file, sha256_file

__all__ = [
    "RELEASED_PROMPTS",
    "ReleasedPrompts",
    "UnsafePromptFileError",
    "fetch_released_prompts",
    "load_prompt_file",
    "load_released_prompts",
]

#: File name of the released prompts (epoch 2 of the authors' training run).
PROMPT_FILE_NAME = "learnable_params_2.pth"

_REPO_RAW = "https://raw.githubusercontent.com/AlirezaSalehy/Tipsomaly/main/workspaces"

# The one class the authors' files need beyond what torch's weights-only unpickler already allows.
# torch 2.13 allows by default every other global these files name (torch._utils._rebuild_parameter,
# torch._utils._rebuild_tensor_v2, torch.FloatStorage, collections.OrderedDict, builtins.set).
# Rebuilding a ParameterList there is harmless: the unpickler creates it with ``__new__`` and fills
# its ``__dict__`` through ``Module.__setstate__``, a plain dict update; no __init__, no hooks run,
# and every value in that state must itself pass the same allowlist.
_EXTRA_SAFE_GLOBALS: tuple[type, ...] = (torch.nn.ParameterList,)

_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+) whose module")
# torch wraps the unpickler's own reason in advice text; keep only the reason for our message.
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", re.S)


@dataclass(frozen=True)
class ReleasedPrompts:
    """One released prompt file of the Tipsomaly authors.

    Attributes:
        name: registry key, the dataset the prompts were trained on (``"mvtec"`` or ``"visa"``).
        url: raw download address in the authors' repository (MIT licence).
        sha256: expected SHA-256 of the file.
        trained_on: the data the prompts were trained on, in words.
        evaluate_on_note: which benchmarks these prompts are meant to evaluate.
    """

    name: str
    url: str
    sha256: str
    trained_on: str
    evaluate_on_note: str


#: The authors' released prompts, keyed by the dataset they were trained on.
RELEASED_PROMPTS: dict[str, ReleasedPrompts] = {
    "mvtec": ReleasedPrompts(
        name="mvtec",
        url=f"{_REPO_RAW}/trained_on_mvtec_default/vegan-arkansas/checkpoints/{PROMPT_FILE_NAME}",
        sha256="15546df6300fe8d9e272ee6cba5844f78bf2e1579d69eaf3fdf4f4c81b7a5fbb",
        trained_on="MVTec AD test split",
        evaluate_on_note="Use to evaluate every dataset except MVTec AD (VisA, BTAD, MPDD, KSDD, medical, ...).",
    ),
    "visa": ReleasedPrompts(
        name="visa",
        url=f"{_REPO_RAW}/trained_on_visa_default/vegan-arkansas/checkpoints/{PROMPT_FILE_NAME}",
        sha256="9758adc7e1303ffe991c0ab0052e26067d120b8036a864c9fd9aabc8212ac055",
        trained_on="VisA test split",
        evaluate_on_note="Use to evaluate MVTec AD only.",
    ),
}


class UnsafePromptFileError(ValueError):
    """A prompt file names a Python global that a weights-only load must not touch.

    Attributes:
        path: the refused file, or None.
        refused: the offending globals as ``module.name`` strings.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, refused: tuple[str, ...] = ()):
        super().__init__(message)
        self.path = path
        self.refused = tuple(refused)


def _refuse(path: Path, refused: list[str] | tuple[str, ...]) -> UnsafePromptFileError:
    names = ", ".join(sorted(set(refused)))
    return UnsafePromptFileError(
        f"Refusing to load {path}: its pickle names {names}, which a prompt file never needs and "
        f"which could run arbitrary code. Only tensors and torch.nn.ParameterList are accepted; "
        f"nothing from the file was executed.", path=path, refused=tuple(refused))


def _torch_detail(err: BaseException) -> str:
    """torch's error text on one line, without its advice to retry with ``weights_only=False``.

    That advice means "run the file's code": never what to do with a prompt file from the internet.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(err).split()))
    unsafe = ("weights_only", "trusted source", "trust the source", "arbitrary code", "two options")
    kept = [s for s in re.split(r"(?<=[.!?])\s+", text) if not any(u in s for u in unsafe)]
    return " ".join(kept).strip() or type(err).__name__


def _load_torch_zip(path: Path) -> object:
    """``torch.load`` a zip archive with the weights-only unpickler plus ParameterList only."""
    # We use torch's weights-only unpickler rather than a hand-written pickle.Unpickler: it is the
    # one torch maintains and hardens against crafted pickles, it already rebuilds tensors,
    # storages and Parameters, and we only widen it by one harmless container class.
    with torch.serialization.safe_globals(list(_EXTRA_SAFE_GLOBALS)):
        try:
            # A static scan that names every refused global at once. It never executes anything,
            # but it does not know every opcode; if it gives up, torch.load below still decides.
            refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (pickle.UnpicklingError, ValueError):
            refused = []
        except (RuntimeError, OSError, EOFError, KeyError) as err:
            raise ValueError(f"{path} is not a readable torch archive (corrupt or truncated?): "
                             f"{_torch_detail(err)}") from None
        if refused:
            raise _refuse(path, refused)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = [a or b for a, b in _REFUSED_GLOBAL.findall(str(err))]
            if found:
                raise _refuse(path, found) from None
            match = _UNPICKLER_DETAIL.search(str(err))
            detail = _torch_detail(match.group(1) if match else err)
            raise ValueError(f"{path} could not be read with the weights-only unpickler ({detail}). "
                             "Re-save the two tensors with torch.save's default settings.") from None
        except (RuntimeError, OSError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            raise ValueError(f"{path} is not a readable torch archive (corrupt or truncated?): "
                             f"{_torch_detail(err)}") from None


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .safetensors file: {err}") from err


def _tensors_from(obj: object, path: Path) -> list[object]:
    """The candidate (normal, anomalous) tensors inside whatever the file held."""
    if type(obj) is torch.nn.ParameterList:
        # Read the parameters straight from the instance dict: no Module method runs on state
        # that came from the file.
        params = vars(obj).get("_parameters")
        if not isinstance(params, dict):
            raise ValueError(f"{path} holds a ParameterList without parameters.")
        if list(params) != [str(i) for i in range(len(params))]:
            raise ValueError(f"{path} holds a ParameterList with unexpected keys {list(params)}.")
        return list(params.values())
    if isinstance(obj, Tensor):
        if obj.ndim != 3 or obj.shape[0] != 2:
            raise ValueError(f"{path} holds one tensor of shape {tuple(obj.shape)}; a single tensor must be "
                             "(2, n, D) = (normal, anomalous) stacked.")
        return [obj[0], obj[1]]
    if isinstance(obj, dict):
        if "normal" not in obj or "anomalous" not in obj:
            raise ValueError(f"{path} holds a dict with keys {sorted(map(str, obj))}; expected 'normal' and "
                             "'anomalous'.")
        return [obj["normal"], obj["anomalous"]]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    raise ValueError(f"{path} holds a {type(obj).__name__}; expected a ParameterList or list of two tensors, "
                     "a (2, n, D) tensor, or a dict with 'normal' and 'anomalous'.")


def _validated(tensors: list[object], path: Path) -> tuple[Tensor, Tensor]:
    if len(tensors) != 2:
        raise ValueError(f"{path} holds {len(tensors)} prompt tensors; expected exactly 2 (normal, anomalous).")
    for label, t in zip(("normal", "anomalous"), tensors):
        if not isinstance(t, Tensor):
            raise ValueError(f"{path}: the {label} prompts are a {type(t).__name__}, not a tensor.")
        if not t.is_floating_point():
            raise ValueError(f"{path}: the {label} prompts have dtype {t.dtype}; expected floating point.")
        if t.ndim != 2 or t.numel() == 0:
            raise ValueError(f"{path}: the {label} prompts have shape {tuple(t.shape)}; expected (n, D).")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: the {label} prompts contain NaN or infinite values.")
    normal, anomalous = tensors
    if normal.shape != anomalous.shape:
        raise ValueError(f"{path}: normal prompts {tuple(normal.shape)} and anomalous prompts "
                         f"{tuple(anomalous.shape)} differ in shape.")
    # Fresh float32 leaves: no link to the file's Parameters, no gradient until the caller asks.
    return tuple(t.detach().to(device="cpu", dtype=torch.float32).clone().contiguous() for t in tensors)


def load_prompt_file(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read a pair of learnable prompts without executing any pickled code.

    Accepted: the authors' ``torch.save``-d ``torch.nn.ParameterList`` of two tensors; a
    ``torch.save``-d list/tuple of two tensors, ``(2, n, D)`` tensor, or dict with keys
    ``normal`` and ``anomalous``; a ``.safetensors`` file with keys ``normal`` and ``anomalous``.

    Args:
        path: the prompt file.
    Returns:
        ``(normal, anomalous)``, each ``(n, D)`` float32 on the CPU with ``requires_grad=False``
        (``(8, 1024)`` for the released files).
    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafePromptFileError: the pickle names a global outside torch's weights-only allowlist
            and ``torch.nn.ParameterList`` (e.g. ``os.system``); nothing from it was run.
        ValueError: not a torch zip archive or safetensors file, corrupt or truncated, or not
            exactly two finite floating-point ``(n, D)`` tensors of the same shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prompt file at {path}.")
    if zipfile.is_zipfile(path):
        obj = _load_torch_zip(path)
    elif path.suffix == ".safetensors" or _looks_like_safetensors(path):
        obj = _load_safetensors(path)
    else:
        raise ValueError(f"{path} is neither a torch zip archive (torch.save) nor a .safetensors file; it may "
                         "be truncated, an HTML error page, or a legacy non-zip torch file.")
    return _validated(_tensors_from(obj, path), path)


def _entry(name: str) -> ReleasedPrompts:
    try:
        return RELEASED_PROMPTS[name]
    except KeyError:
        raise ValueError(f"Unknown released prompts {name!r}; choose one of {sorted(RELEASED_PROMPTS)} "
                         "(the dataset they were trained on).") from None


def _hand_fetch_hint(entry: ReleasedPrompts, dest: Path) -> str:
    return (f"Fetch {entry.url} by hand (browser, curl -L -o, wget) and save it as {dest} "
            f"(SHA-256 {entry.sha256}); set TIPSOMALY_HOME to move the cache folder.")


def fetch_released_prompts(name: str, download: bool = True) -> Path:
    """Path of a released prompt file in the cache, downloading and checksum-verifying it if needed.

    The file lives at ``cache_dir()/released_prompts/<name>/learnable_params_2.pth``.

    Args:
        name: ``"mvtec"`` (trained on MVTec AD; evaluate everything else) or ``"visa"``
            (trained on VisA; evaluate MVTec AD).
        download: fetch the file when it is missing; False only looks in the cache.
    Returns:
        Path of the verified file.
    Raises:
        ValueError: unknown ``name``, or a cached file whose SHA-256 is wrong (with ``download=False``).
        FileNotFoundError: ``download=False`` and the file is not in the cache; the message says
            where to put a hand-fetched copy.
        DownloadError: the download failed or its checksum did not match; same hint.
    """
    entry = _entry(name)
    dest = cache_dir() / "released_prompts" / entry.name / PROMPT_FILE_NAME
    if not download:
        if not dest.is_file():
            raise FileNotFoundError(f"The released '{entry.name}' prompts are not in the cache and download=False. "
                                    + _hand_fetch_hint(entry, dest))
        actual = sha256_file(dest)
        if actual != entry.sha256:
            raise ValueError(f"{dest} has SHA-256 {actual}, expected {entry.sha256}: it is not the released "
                             f"'{entry.name}' file. Delete it, or use load_prompt_file for your own prompts. "
                             + _hand_fetch_hint(entry, dest))
        return dest
    try:
        return download_file(entry.url, dest, sha256=entry.sha256, desc=f"{entry.name} prompts")
    except DownloadError as err:
        # err already says where to put a hand-fetched copy; add only what it cannot know.
        raise DownloadError(f"Could not fetch the released '{entry.name}' prompts: {err} Its SHA-256 must be "
                            f"{entry.sha256}; set TIPSOMALY_HOME to move the cache folder.") from err


def load_released_prompts(name: str, download: bool = True) -> tuple[Tensor, Tensor]:
    """The authors' released prompts, fetched if needed and loaded safely.

    Args:
        name: ``"mvtec"`` or ``"visa"``, the dataset the prompts were trained on (see
            :data:`RELEASED_PROMPTS` for which benchmarks each one evaluates).
        download: fetch the file when it is not in the cache.
    Returns:
        ``(normal, anomalous)``, each ``(8, 1024)`` float32, ``requires_grad=False``.
    Raises:
        See :func:`fetch_released_prompts` and :func:`load_prompt_file`.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    return load_prompt_file(fetch_released_prompts(name, download=download))
