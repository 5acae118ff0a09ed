"""Distributed data-parallel helpers for training under `torchrun`: one process per device, a
`DistributedContext` that says which process this is, and the few collectives a trainer needs
(metrics averaged over ranks, evaluation features gathered, an object broadcast, a barrier).

Every helper also works in a single process, where it does no communication, so a trainer is one
code path whether it runs alone or under `torchrun --nproc-per-node=N`.

- `init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT), checks it and the `device` argument before creating anything, and initialises the
  default process group with NCCL on CUDA or gloo on the CPU (or joins one already initialised).
- Collectives that need the same call on every rank (the same keys to average, the same trailing
  shape and dtype to gather) check that first with a small fixed-size all_gather of a CRC-32 of
  what must agree, so a rank that differs is a ValueError on every rank naming each rank's
  keys (or shape), not a hang or a silently wrong sum. That check is one extra latency-bound
  collective of a few int64 per call; the data itself then moves in one collective. Two different
  descriptions with the same CRC-32 (a chance of 2**-32) would go unnoticed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections.abc import Mapping

import torch
import torch.distributed as dist

from reidfast._checks import check_int

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Which process of the job this is, and where it computes.

    Attributes:
        rank: this process's index among all processes, in [0, world_size).
        world_size: the number of processes; 1 when not distributed.
        local_rank: this process's index on its machine (the CUDA device it uses).
        device: the device this process computes on (``cuda:local_rank`` under torchrun on CUDA).
        backend: the default process group's backend ("nccl", "gloo", ...), or None in a single
            process without a process group.
        owned_group: the default process group if `init_distributed` created it (so that
            `destroy_distributed` destroys it), else None.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    owned_group: object | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        check_int("world_size", self.world_size, minimum=1)
        check_int("rank", self.rank, minimum=0)
        check_int("local_rank", self.local_rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={self.world_size}, got {self.rank}")
        if not isinstance(self.device, torch.device):
            raise TypeError(f"device must be a torch.device, got {type(self.device).__name__} {self.device!r}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise TypeError(f"backend must be a str or None, got {type(self.backend).__name__} {self.backend!r}")

    @property
    def is_distributed(self) -> bool:
        """More than one process: the collectives communicate."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and plots."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistributedContext:
    """The context of this process, initialising the default process group under `torchrun`.

    Without RANK, WORLD_SIZE and LOCAL_RANK in the environment, or with WORLD_SIZE=1, this is a
    single process and no group is created. With WORLD_SIZE > 1, the default process group is
    initialised from the environment (``env://``: MASTER_ADDR, MASTER_PORT) with NCCL when the
    device is CUDA (after `torch.cuda.set_device(cuda:LOCAL_RANK)`) and gloo on the CPU. If a
    default group is already initialised, it is used as it is (its rank, size and backend) and
    not created again; `destroy_distributed` then leaves it alone.

    Args:
        device: "auto" (CUDA if available, else the CPU; with an existing group, CUDA only if
            its backend is NCCL), "cpu", "cuda" (``cuda:LOCAL_RANK``, or ``cuda:0`` in a single
            process) or "cuda:N" (a single process only: under torchrun every process uses the
            GPU of its LOCAL_RANK).

    Raises:
        TypeError, ValueError: a bad `device`; an environment variable that is not an integer, out
            of range, or set without the others it needs (RANK without WORLD_SIZE, RANK >=
            WORLD_SIZE, WORLD_SIZE > 1 without LOCAL_RANK, MASTER_ADDR or MASTER_PORT); CUDA asked
            where it is absent; LOCAL_RANK without a GPU of that index. All checked before any
            group is created.
        RuntimeError: WORLD_SIZE > 1 where this PyTorch build lacks torch.distributed or the
            backend the device needs.
    """
    kind, index = _parse_device(device)
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return _join_existing_group(device, kind, index, rank, world_size, local_rank)
    if rank is None and world_size is None and local_rank is None:
        return DistributedContext(0, 1, 0, _resolve_device(device, kind, index, 0), None)
    if rank is None or world_size is None:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        missing = " and ".join(name for name in names if name not in os.environ)
        present = ", ".join(f"{name}={os.environ[name]!r}" for name in names if name in os.environ)
        raise ValueError(
            f"environment variable {missing} not set but {present} set: "
            "a distributed launch (torchrun) sets RANK, WORLD_SIZE and LOCAL_RANK together"
        )
    if rank >= world_size:
        raise ValueError(f"environment variable RANK={rank} must be < WORLD_SIZE={world_size}")
    if local_rank is None:
        if world_size > 1:
            raise ValueError(f"environment variable LOCAL_RANK must be set when WORLD_SIZE={world_size} > 1")
        local_rank = 0
    if local_rank >= world_size:
        raise ValueError(f"environment variable LOCAL_RANK={local_rank} must be < WORLD_SIZE={world_size}")
    if world_size == 1:
        return DistributedContext(0, 1, local_rank, _resolve_device(device, kind, index, local_rank), None)

    _refuse_device_index(device, index, world_size)
    if not os.environ.get("MASTER_ADDR"):
        raise ValueError(f"environment variable MASTER_ADDR must be set when WORLD_SIZE={world_size} > 1")
    port = _env_int("MASTER_PORT", 1)
    if port is None:
        raise ValueError(f"environment variable MASTER_PORT must be set when WORLD_SIZE={world_size} > 1")
    if port > 65535:
        raise ValueError(f"environment variable MASTER_PORT must be <= 65535, got {port}")
    resolved = _resolve_device(device, kind, None, local_rank)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} asks for torch.distributed, which this PyTorch build lacks")
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_backend_available(backend):
        raise RuntimeError(f"device={device!r} needs the {backend} backend, which this PyTorch build lacks")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        device_id=resolved if resolved.type == "cuda" else None,
    )
    return DistributedContext(rank, world_size, local_rank, resolved, backend, owned_group=dist.group.WORLD)


def destroy_distributed(context: DistributedContext) -> None:
    """Destroys the default process group if `init_distributed` created it for `context`; a group
    initialised elsewhere, or already destroyed, is left alone."""
    _check_context(context)
    if context.owned_group is not None and dist.is_initialized() and dist.group.WORLD is context.owned_group:
        dist.destroy_process_group()


def reduce_mean(values: Mapping[str, float | torch.Tensor], context: DistributedContext) -> dict[str, float]:
    """The mean over ranks of each named scalar (losses, accuracies, images/s for logging).

    All values move in one all_reduce (SUM of a float64 tensor [K] in sorted key order, divided
    by world_size), after the check that every rank passed the same keys (see the module
    docstring). Tensors are detached. The all_reduce leaves the same sum on every rank, so every
    rank returns the same means (state updated from them, such as a dynamic loss weighting,
    stays identical across ranks); summing in float64 keeps float32 inputs' digits.

    Args:
        values: name -> a Python int/float or a one-element real Tensor (on any device).
        context: from `init_distributed`.

    Returns:
        dict[str, float]: the means, keys sorted. In a single process: the values as floats.

    Raises:
        ValueError: on every rank, if the ranks' keys differ (naming each rank's keys).
    """
    _check_context(context)
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping of name -> scalar, got {type(values).__name__}")
    for key, value in values.items():
        _check_scalar(key, value)
    names = sorted(values)
    if not context.is_distributed:
        return {name: float(values[name]) for name in names}
    _gather_agreed(repr(names), [], context, what="reduce_mean's keys")
    if not names:
        return {}
    stacked = torch.stack(
        [torch.as_tensor(values[name]).detach().to(context.device, torch.float64).reshape(()) for name in names]
    )
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(names, (stacked / context.world_size).tolist()))


def all_gather_variable(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order, when ranks hold different
    numbers of rows (evaluation features of a split query or gallery set).

    The row counts are gathered first (with the shape and dtype check), every rank pads its
    tensor with zeros to the largest count, one all_gather moves the padded tensors, and the
    padding is cut off. The result carries no gradient.

    Args:
        tensor (Tensor[N_r, *S]): this rank's rows, on `context.device`; N_r may differ between
            ranks, the trailing shape S and the dtype may not.
        context: from `init_distributed`.

    Returns:
        Tensor[N_0 + ... + N_{R-1}, *S]: the same on every rank. In a single process: `tensor`
        itself.

    Raises:
        ValueError: on every rank, if the ranks' trailing shapes or dtypes differ (naming each
            rank's).
    """
    _check_context(context)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a Tensor [N, *S], got {type(tensor).__name__}")
    if tensor.dim() < 1:
        raise ValueError(f"tensor must have at least 1 dimension [N, *S], got shape {tuple(tensor.shape)}")
    if tensor.device != context.device:
        raise ValueError(f"tensor must be on the context's device {context.device}, got {tensor.device}")
    if not context.is_distributed:
        return tensor
    trailing = tuple(tensor.shape[1:])
    layout = f"[{', '.join(['N', *(str(size) for size in trailing)])}] {tensor.dtype}"
    agreed = _gather_agreed(layout, [tensor.shape[0]], context, what="tensor's trailing shape and dtype")
    counts = [extras[0] for extras in agreed]
    largest = max(counts)
    if largest == 0:
        return tensor.detach()
    padded = tensor.detach().new_zeros((largest, *trailing))
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:count] for rows, count in zip(gathered, counts)])


def broadcast_object(obj, context: DistributedContext, src: int = 0):
    """Rank `src`'s `obj` (any picklable object) on every rank; the `obj` other ranks pass is
    ignored. Pickled, so only for objects from the same job (a resolved config, a run folder's
    name). In a single process: `obj`."""
    _check_context(context)
    check_int("src", src, minimum=0)
    if src >= context.world_size:
        raise ValueError(f"src must be < world_size={context.world_size}, got {src}")
    if not context.is_distributed:
        return obj
    holder = [obj if context.rank == src else None]
    dist.broadcast_object_list(holder, src=src, device=context.device)
    return holder[0]


def barrier(context: DistributedContext) -> None:
    """Waits until every rank gets here; nothing in a single process."""
    _check_context(context)
    if not context.is_distributed:
        return
    if context.device.type == "cuda":
        # Names the device, so that NCCL does not guess it from the rank.
        dist.barrier(device_ids=[context.device.index])
    else:
        dist.barrier()


def convert_sync_batchnorm(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """`model` with its BatchNorm layers replaced by SyncBatchNorm (statistics over the global
    batch of all ranks) when distributed; `model` unchanged in a single process.

    As `torch.nn.SyncBatchNorm.convert_sync_batchnorm`, the layers are replaced in place inside
    `model`, and a model that is itself a BatchNorm layer is returned as a new module: use the
    return value. PyTorch's SyncBatchNorm runs on CUDA only (not on the CPU, so not with gloo on
    the CPU), hence a distributed CPU context is refused here rather than at the first forward.
    """
    _check_context(context)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not context.is_distributed:
        return model
    if context.device.type != "cuda":
        raise ValueError(
            f"SyncBatchNorm needs CUDA, but the context's device is {context.device} "
            f"(world_size={context.world_size}, backend {context.backend}): train without SyncBatchNorm on the CPU"
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _parse_device(device) -> tuple[str, int | None]:
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a str ('auto', 'cpu', 'cuda' or 'cuda:N'), got {type(device).__name__} {device!r}"
        )
    match = _DEVICE_PATTERN.match(device)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def _resolve_device(device: str, kind: str, index: int | None, local_rank: int) -> torch.device:
    """The torch.device of a parsed `device` argument: "cuda" and "auto" with CUDA mean cuda:local_rank."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False")
    count = torch.cuda.device_count()
    if index is not None:
        if index >= count:
            raise ValueError(f"device={device!r} asks for a GPU this machine lacks: it has {count}")
        return torch.device("cuda", index)
    if local_rank >= count:
        raise ValueError(f"environment variable LOCAL_RANK={local_rank} names a GPU this machine lacks: it has {count}")
    return torch.device("cuda", local_rank)


def _refuse_device_index(device: str, index: int | None, world_size: int) -> None:
    # The same device string reaches every rank, so a fixed index would put them all on one GPU;
    # refusing it on every rank (not only on those it does not fit) keeps the ranks in step.
    if index is not None:
        raise ValueError(
            f"device={device!r} names one GPU, but each of the WORLD_SIZE={world_size} processes uses "
            "cuda:LOCAL_RANK: pass 'cuda' or 'auto'"
        )


def _env_int(name: str, minimum: int) -> int | None:
    """The integer value of environment variable `name`, None when unset."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be >= {minimum}, got {value}")
    return value


def _join_existing_group(
    device: str, kind: str, index: int | None, rank: int | None, world_size: int | None, local_rank: int | None
) -> DistributedContext:
    """The context of a default process group initialised before `init_distributed` was called."""
    group_rank, group_size, backend = dist.get_rank(), dist.get_world_size(), dist.get_backend()
    for name, from_env, from_group in (("RANK", rank, group_rank), ("WORLD_SIZE", world_size, group_size)):
        if from_env is not None and from_env != from_group:
            raise ValueError(
                f"environment variable {name}={from_env} differs from the initialised process group's {from_group}"
            )
    if local_rank is None:
        if group_size > 1:
            raise ValueError(
                f"environment variable LOCAL_RANK must be set to use the initialised process group of size {group_size}"
            )
        local_rank = 0
    if group_size > 1:
        _refuse_device_index(device, index, group_size)
    if kind == "auto":
        # A gloo group computes on the CPU even on a machine with GPUs.
        kind = "cuda" if torch.cuda.is_available() and "nccl" in backend else "cpu"
    resolved = _resolve_device(device, kind, index, local_rank)
    if resolved.type == "cpu" and backend == "nccl":
        raise ValueError(
            f"device={device!r} means the CPU, but the initialised process group's backend is nccl (CUDA only)"
        )
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return DistributedContext(group_rank, group_size, local_rank, resolved, backend)


def _gather_agreed(description: str, extras: list[int], context: DistributedContext, what: str) -> list[list[int]]:
    """Every rank's `extras` (the same count of ints on every rank), in rank order, after checking
    that every rank passed the same `description`.

    One all_gather of int64 [1 + len(extras)] per rank: the CRC-32 of `description`, then `extras`.
    Every rank sees the same gathered rows, so either all ranks go on or all raise; only then are
    the descriptions themselves gathered (pickled) to name them in the error.
    """
    digest = zlib.crc32(description.encode())
    local = torch.tensor([digest, *extras], dtype=torch.int64, device=context.device)
    gathered = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(gathered, local)
    rows = torch.stack(gathered).tolist()
    if any(row[0] != digest for row in rows):
        descriptions: list[str | None] = [None] * context.world_size
        dist.all_gather_object(descriptions, description)
        listed = "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(descriptions))
        raise ValueError(f"{what} must be the same on every rank, got {listed}")
    return [row[1:] for row in rows]


def _check_scalar(key, value) -> None:
    if not isinstance(key, str):
        raise TypeError(f"values' keys must be str, got {type(key).__name__} {key!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"values[{key!r}] must be a one-element Tensor, got shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise TypeError(f"values[{key!r}] must be a real number, got a Tensor of dtype {value.dtype}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"values[{key!r}] must be an int, float or one-element Tensor, got {type(value).__name__} {value!r}"
        )


def _check_context(context) -> None:
    if not isinstance(context, DistributedContext):
        raise TypeError(f"context must be a DistributedContext (from init_distributed), got {type(context).__name__}")
