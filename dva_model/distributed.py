"""Splitting a clip's work across processes (``torchrun --nproc-per-node N``) and collecting it in order.

Every process runs the same command. ``Workers.from_environment`` joins the process group torchrun
describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL with one GPU per process when the
device is CUDA, gloo on the CPU. A stream of chunks (the edit's inversion and decoding,
``dva_model.stages``) is dealt round robin (``owner``): each process computes its chunks and
``send``s them to the first process, which ``receive``s them in order and writes the outputs, so no
process holds more than a chunk.

Without torchrun (no WORLD_SIZE) everything here is a no-op on one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

INIT_TIMEOUT = timedelta(minutes=30)  # ranks wait for each other during long stages (alignment, compile)


@dataclass(frozen=True)
class Workers:
    """This process's place among ``world`` cooperating processes (rank 0 writes the outputs)."""

    rank: int = 0
    world: int = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_environment(cls, device: str = "cpu") -> tuple["Workers", str]:
        """Join torchrun's process group if there is one; returns (workers, this process's device).

        On CUDA each process takes GPU ``LOCAL_RANK``; "cuda:K" given explicitly is kept only with one
        process. Raises ValueError when torchrun started more processes than there are GPUs.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(), device
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"Process {rank} needs GPU {local_rank} but only {torch.cuda.device_count()} "
                                 f"are visible; start at most that many processes per node.")
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=INIT_TIMEOUT)
        log.info("process %d of %d on %s", rank, world, device)
        return cls(rank=rank, world=world), device

    def owner(self, chunk: int) -> int:
        """The process that computes chunk number ``chunk`` of a stream: round robin, so the first
        process, which consumes the stream in order, finds the next chunks already computed."""
        return chunk % self.world

    def send(self, tensor: Tensor, *, to: int) -> None:
        """Send ``tensor`` to process ``to`` (which calls ``receive`` with its shape and dtype)."""
        import torch.distributed as dist

        dist.send(tensor.contiguous().to(self._wire_device(tensor.device)), dst=to)

    def receive(self, shape: tuple, dtype: torch.dtype, *, source: int, device: torch.device) -> Tensor:
        """The tensor of ``shape`` and ``dtype`` that process ``source`` sends, on ``device``."""
        import torch.distributed as dist

        tensor = torch.empty(shape, dtype=dtype, device=self._wire_device(device))
        dist.recv(tensor, src=source)
        return tensor.to(device)

    def broadcast_text(self, text: str) -> str:
        """The first process's ``text`` on every process (e.g. the path of a file it created)."""
        if not self.distributed:
            return text
        import torch.distributed as dist

        box = [text if self.is_root else None]
        dist.broadcast_object_list(box, src=0)  # a str between our own processes
        return box[0]

    def _wire_device(self, device: torch.device) -> torch.device:
        """NCCL moves tensors between GPUs (this process's), gloo between CPUs."""
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def close(workers: Optional[Workers]) -> None:
    """Leave the process group (end of a torchrun command)."""
    if workers is not None and workers.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
