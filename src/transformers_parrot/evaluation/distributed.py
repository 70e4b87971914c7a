"""Data parallel evaluation: one process per device under ``torchrun`` or ``accelerate launch``.

Both launchers set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each process's environment.
The ranks share the output folder and only exchange small Python objects (bad rows, results), over a gloo group of
their own, so the same code runs on CPUs and GPUs and beside any process group the caller already made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

WAIT_POLL_SECONDS = 0.5
"""How often a rank waiting for the others refreshes its progress bar."""


def launched_world_size() -> int:
    """The number of processes a launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class RankContext:
    """This process's place in the run: ``rank`` of ``world_size``, and the gloo group the ranks talk over."""

    rank: int = 0
    world_size: int = 1
    group: Any = None
    _torch_dist: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, timeout_minutes: int = 120) -> RankContext:
        """One rank of a launched run, or the single process of a plain run (no process group then)."""
        world_size = launched_world_size()
        if world_size <= 1:
            return cls()
        import torch.distributed as dist

        timeout = timedelta(minutes=timeout_minutes)
        # The process group lives as long as the process (a group cannot be made again after being destroyed
        # under torchrun's rendezvous), so a second `evaluate` in the same processes reuses it.
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timeout)
        if dist.get_backend() == "gloo":
            group = dist.group.WORLD
        else:  # e.g. accelerate already made an NCCL group: talk over a gloo group of our own
            group = dist.new_group(backend="gloo", timeout=timeout)
        return cls(dist.get_rank(), dist.get_world_size(), group, dist)

    def wait_for_all(self, poll: Callable[[], None] | None = None) -> None:
        """Barrier over all ranks; ``poll`` is called while waiting (rank 0 refreshes its progress bar)."""
        if not self.distributed:
            return
        work = self._torch_dist.barrier(group=self.group, async_op=True)
        while not work.is_completed():
            if poll is not None:
                poll()
            time.sleep(WAIT_POLL_SECONDS)
        work.wait()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._torch_dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        self._torch_dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


__all__ = ["RankContext", "WAIT_POLL_SECONDS", "launched_local_rank", "launched_world_size"]
