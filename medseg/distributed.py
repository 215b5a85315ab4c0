"""Several processes under ``torchrun``: each one's rank and device, the process group, and
failures that every process reports.

``medseg train`` and ``medseg batch`` run the same way under ``torchrun`` (or any launcher that
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``): :func:`process_group` picks this rank's device
(its own GPU, or the CPU), joins the others (NCCL when each rank has a GPU of its own, else gloo)
and leaves the group however the work ends. A single process gets the same :class:`Ranks` without any group.

A rank that fails must neither leave the others waiting in a collective (an ``all_reduce``, a
barrier) nor stop them without saying why. So work that one rank can fail at while the others
go on (reading its share of the cases, drawing a batch, an epoch's loss turning NaN, rank 0
writing the results) runs in :meth:`Ranks.run`, which ends with :meth:`Ranks.agree`: every rank
contributes whether it failed and, if any did, the one-line message of the first failing rank
is gathered and every rank raises it (the failing rank its own error). A collective that breaks
because another process died without agreeing (killed, out of memory in a step) is one line
too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from .errors import MedsegError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the processes of a run; one process alone is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th one, starting at its rank."""
        return list(items)[self.rank :: self.world_size]


def dist_info() -> DistInfo:
    """This process's place from its launcher's environment (``torchrun``); one process otherwise."""
    values = []
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(key, "").strip()
        try:
            values.append(int(text) if text else default)
        except ValueError:
            raise MedsegError(f"environment variable {key}={text!r}: expected a whole number") from None
    info = DistInfo(*values)
    if not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise MedsegError(f"environment variables RANK={info.rank}, WORLD_SIZE={info.world_size}, "
                          f"LOCAL_RANK={info.local_rank}: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return info


def rank_device(info: DistInfo, requested: str | torch.device | None = "auto") -> torch.device:
    """The device this rank computes on: ``requested`` (see :func:`~medseg.inference.resolve_device`);
    among several processes ``auto`` and ``cuda`` mean this rank's own GPU (``LOCAL_RANK``, modulo
    the GPUs the machine has)."""
    from .inference import resolve_device

    device = resolve_device(requested)
    if info.world_size > 1 and device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    return device


def describe(error: BaseException) -> str:
    """The one line a failure is reported with: medseg's own message, else its type and first line."""
    if isinstance(error, MedsegError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    lines = str(error).strip().splitlines()
    return f"unexpected {type(error).__name__}" + (f": {lines[0]}" if lines else "")


class Ranks:
    """The processes of a run as one of them sees them: its :class:`DistInfo`, its device and the
    collectives they share (each a no-op, or the identity, for one process)."""

    def __init__(self, info: DistInfo, device: torch.device, dist=None) -> None:
        self.info, self.device, self.dist = info, device, dist
        # NCCL reduces tensors on the GPU, gloo on the CPU
        self._on = device if dist is not None and dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def run(self, work: Callable[[], T], *, main_only: bool = False) -> T | None:
        """``work()`` on every rank (on rank 0 alone with ``main_only``; the others wait), then
        :meth:`agree`: when any rank failed, every rank raises. Returns ``work``'s result (None on
        ranks that did not run it)."""
        if self.dist is None:
            return work()
        result, error = None, None
        if self.is_main or not main_only:
            try:
                result = work()
            except BaseException as exc:  # noqa: BLE001 - shared with the other ranks, then raised
                error = exc
        self.agree(error)
        return result

    def agree(self, error: BaseException | None = None) -> None:
        """Every rank says whether it failed (``error``); if any did, every rank raises: the failing
        ranks their own error, the others a :class:`MedsegError` with the first failing rank's message."""
        if self.dist is None:
            if error is not None:
                raise error
            return
        try:
            failed = self.sum(torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64))
            if failed[0] == 0:
                return
            messages = self.gather(None if error is None else describe(error))
        except MedsegError:
            if error is not None:  # the others are gone: this rank's own reason is the one to give
                raise error from None
            raise
        if error is not None:
            raise error
        raise MedsegError(next(m for m in messages if m))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed element-wise over the ranks (on the CPU)."""
        if self.dist is None:
            return values
        total = values.to(self._on)
        self._collective(self.dist.all_reduce, total)
        return total.cpu()

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks."""
        return float(self.sum(torch.tensor([value], dtype=torch.float64))[0]) / self.info.world_size

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.dist is None:
            return [obj]
        out: list = [None] * self.info.world_size
        self._collective(self.dist.all_gather_object, out, obj)
        return out

    def _collective(self, op: Callable, *args) -> None:
        try:
            op(*args)
        except RuntimeError as exc:  # DistBackendError too: a process of the run died (its connection closed)
            raise MedsegError(f"rank {self.info.rank} of {self.info.world_size}: lost contact with the other "
                              f"processes of the run ({describe(exc)}); see their messages") from None


def _backend(info: DistInfo, requested, device: torch.device) -> str:
    """NCCL when every rank on this machine has a GPU of its own; gloo on the CPU and for ranks
    that share a GPU (NCCL refuses two ranks on one device; gloo reduces CUDA tensors too)."""
    if device.type != "cuda" or ":" in str(requested):  # cuda:N: every rank was given the same GPU
        return "gloo"
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or info.world_size)
    except ValueError:
        local = info.world_size
    return "nccl" if torch.cuda.device_count() >= local else "gloo"


@contextmanager
def process_group(device: str | torch.device | None = "auto") -> Iterator[Ranks]:
    """This process's :class:`Ranks`: under a launcher, in the process group (joined here and left
    however the block ends); one process alone needs no group."""
    info = dist_info()
    if info.world_size == 1:
        from .inference import resolve_device

        yield Ranks(info, resolve_device(device))
        return
    import torch.distributed as dist

    dev = rank_device(info, device)
    joined = not dist.is_initialized()
    if joined:
        try:
            dist.init_process_group(_backend(info, device, dev))
        except (RuntimeError, ValueError) as exc:
            raise MedsegError(f"rank {info.rank} of {info.world_size}: cannot join the other processes "
                              f"({describe(exc)})") from None
    try:
        yield Ranks(info, dev, dist)
    finally:
        if joined:
            dist.destroy_process_group()


__all__ = ["DistInfo", "Ranks", "describe", "dist_info", "process_group", "rank_device"]
