"""Several processes sharing one evaluation or training run, started by PyTorch's ``torchrun``.

    torchrun --nproc_per_node 4 -m tipsomaly_lite evaluate --dataset mvtec --released visa
    torchrun --nproc_per_node 2 -m tipsomaly_lite train --dataset mvtec --out runs/mvtec   # CPU: gloo

``torchrun`` starts one process per GPU (or CPU share) and tells each its ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment. :func:`init_from_env` joins them into one
process group (``nccl`` on CUDA, ``gloo`` on the CPU) on PyTorch's own engine; the rest of this
module is what evaluation and training need from it:

- :func:`shard`: which images are mine. Whole batches are dealt round-robin, so no image is
  dropped or seen twice and every batch holds the same images as in one process (the model sees
  the same inputs, so the scores are the same);
- :func:`all_gather_objects`, :func:`all_reduce`, :func:`broadcast_object`: combining the
  processes' results (image score rows, histogram counts, gradients);
- :func:`agree`, :func:`main_only`: when one process fails (rank 0 refusing its output folder,
  say), every process stops instead of waiting for it at the next collective step.

Nothing here changes a single-process run: without ``torchrun`` (or with one process) every
function is the identity and :func:`world` is ``(0, 1)``.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

# torch is imported inside the functions: the CLI imports this module and stays quick to start.

__all__ = ["ENV_VARS", "PeerFailed", "world", "is_main", "launched_by_torchrun", "init_from_env", "shutdown",
           "command_processes", "shard", "all_gather_objects", "all_reduce", "broadcast_object", "agree", "main_only"]

T = TypeVar("T")

#: What torchrun sets for every process it starts.
ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class PeerFailed(RuntimeError):
    """Another process of the run failed (and said why); this one stops too instead of waiting for it."""


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0, or the only process)."""
    return world()[0] == 0


#: Set by torchrun itself (its elastic agent) in every process it starts; a shell never sets it by accident.
TORCHRUN_MARKER = "TORCHELASTIC_RUN_ID"
def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several.

    torchrun's own marker (``TORCHELASTIC_RUN_ID``) must be present, not merely ``WORLD_SIZE`` > 1: a
    ``WORLD_SIZE`` left over in a shell would otherwise make a plain run wait for peers that never come.
    """
    return bool(os.environ.get(TORCHRUN_MARKER)) and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")


def _env_int(name: str, low: int, high: int | None = None) -> int:
    text = os.environ.get(name)
    try:
        value = int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name}={text!r}: expected an integer (torchrun sets it); "
                         "start several processes with `torchrun --nproc_per_node N -m tipsomaly_lite ...`") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"environment variable {name}={value}: expected {low}..{high if high is not None else ''}")
    return value


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; returns this process's device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. On CUDA every process takes the GPU
            ``LOCAL_RANK`` and the ``nccl`` backend; on the CPU the ``gloo`` backend.
    Returns:
        ``cuda:<LOCAL_RANK>`` or ``cpu``. Without torchrun (``WORLD_SIZE`` unset or 1) nothing is
        joined and the device is resolved as in one process.
    Raises:
        ValueError: a torchrun variable is missing or not an integer, ``device`` is unknown, or
            there are fewer GPUs than processes on this machine.
    """
    import torch
    import torch.distributed as dist

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: expected auto, cpu or cuda")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not launched_by_torchrun():
        return torch.device("cuda" if use_cuda else "cpu") if device == "auto" else torch.device(device)
    if dist.is_initialized():
        return _device()
    for name in ENV_VARS[2:]:
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE is set but {name} is not; start the processes with torchrun")
    size = _env_int("WORLD_SIZE", 1)
    _env_int("RANK", 0, size - 1)
    local = _env_int("LOCAL_RANK", 0, size - 1)
    if use_cuda:
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ValueError(f"process LOCAL_RANK={local} needs GPU {local}, but this machine has "
                             f"{torch.cuda.device_count()}; use --nproc_per_node <= the number of GPUs, or "
                             "--device cpu")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    return _device()


#: How long the processes wait for each other at the end of a run before leaving anyway (seconds).
LEAVE_SECONDS = 60.0


def shutdown() -> None:
    """Leave the process group (at the end of a run), if this process joined one.

    Under gloo the processes first meet at a barrier with a time limit, so no process tears its
    connections down while another still uses them (which aborted a process now and then); a peer that
    is gone already does not hold the others longer than :data:`LEAVE_SECONDS`.
    """
    import datetime

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=LEAVE_SECONDS))
            except RuntimeError:  # a peer left or failed first: leave anyway
                pass
        dist.destroy_process_group()


def _device() -> torch.device:
    """The device collectives run on: this process's GPU under ``nccl``, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(n_items: int, batch_size: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """The item indices of one process: batches ``rank, rank + W, rank + 2W, ...`` of ``range(n_items)``.

    Every item is in exactly one process's share, in order, and each batch of a share holds
    the same items as the same batch of a single process (the last batch may be short, as in one
    process). Processes may get one batch more or less than others (or none).

    Args:
        n_items: dataset length.
        batch_size: items per batch (>= 1).
        rank, world_size: default: this process's (:func:`world`).
    Returns:
        The sorted indices this process handles.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rank is None or world_size is None:
        rank, world_size = world()
    return [i for start in range(rank * batch_size, n_items, world_size * batch_size)
            for i in range(start, min(start + batch_size, n_items))]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable; sent between our own processes only), in rank order.

    Returns ``[obj]`` in a single process.
    """
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` in every process (the others' argument is ignored)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def all_reduce(value: np.ndarray | torch.Tensor, op: str = "sum") -> np.ndarray | torch.Tensor:
    """Combine ``value`` over all processes element-wise (``sum``, ``min`` or ``max``), in place.

    Args:
        value: a numpy array or a tensor, the same shape and dtype in every process (int64 sums
            are exact). Moved to the collective's device and back when needed.
        op: ``sum``, ``min`` or ``max``.
    Returns:
        ``value`` itself, now holding the combined values (unchanged in a single process).
    """
    import numpy as np
    import torch
    import torch.distributed as dist

    if op not in _OPS:
        raise ValueError(f"op must be one of {tuple(_OPS)}, got {op!r}")
    if world()[1] == 1:
        return value
    reduce_op = getattr(dist.ReduceOp, _OPS[op])
    tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    on_device = tensor.to(_device())
    dist.all_reduce(on_device, op=reduce_op)
    if on_device is not tensor:
        tensor.copy_(on_device)
    return value


def agree(error: Exception | None = None) -> None:
    """Every process calls this after a step that may fail in some of them (e.g. rank 0's checks of its run folder).

    Args:
        error: what went wrong in this process, or None.
    Raises:
        ``error``: in a process that failed (in a single process: whenever it is given).
        PeerFailed: in the others, when any process failed, so none is left waiting for it.
    """
    if world()[1] == 1:
        if error is not None:
            raise error
        return
    failed = [rank for rank, e in enumerate(all_gather_objects(error is not None)) if e]
    if error is not None:
        raise error
    if failed:
        raise PeerFailed(f"process(es) {failed} failed; see their error above")


def main_only(func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``func(*args, **kwargs)`` in rank 0 alone (writing a file, say); its result there, None elsewhere.

    When it fails, rank 0 raises its error and every other process :class:`PeerFailed` (:func:`agree`),
    so none waits for rank 0 at the next collective step. In a single process: just the call.
    """
    result, error = None, None
    if is_main():
        try:
            result = func(*args, **kwargs)
        except Exception as exc:  # told to every process, then raised
            error = exc
    agree(error)
    return result


@contextlib.contextmanager
def command_processes(command: str, device: str, shared: tuple[str, ...]) -> Iterator[str]:
    """Run a CLI command in this process's part of a torchrun run; yields the device to use.

    Outside torchrun it yields ``device`` as given. Under torchrun: only commands in ``shared`` may
    run (one line otherwise), the process group is joined, and only rank 0 prints.

    Raises:
        ValueError: ``command`` is not one that shares its work among processes.
    """
    if not launched_by_torchrun():
        yield device
        return
    if command not in shared:
        raise ValueError(f"{command} runs in one process; start it without torchrun (only "
                         f"{', '.join(shared)} share their work among processes)")
    device = str(init_from_env(device))
    try:
        with open(os.devnull, "w") as quiet, \
                contextlib.redirect_stdout(quiet) if not is_main() else contextlib.nullcontext():
            yield device
    finally:
        shutdown()
