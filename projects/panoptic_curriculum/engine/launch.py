"""Multi-process launching through PyTorch distributed: NCCL on GPUs, gloo on CPUs.

detectron2 v0.6's ``launch`` hard-codes NCCL and CUDA; this one has the same signature and
picks the backend from the hardware (``backend="auto"``), so ``--num-gpus N`` on a machine
without GPUs starts N CPU processes.
"""

import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.utils import comm

__all__ = ["launch", "release_process_groups", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
    backend: str = "auto",
):
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes (one per
    GPU, or per CPU process without GPUs), or directly when that is 1.

    Args:
        dist_url: ``tcp://host:port`` or ``file://...``; "auto" picks a free local port
            (single machine only).
        backend: "nccl", "gloo" or "auto" (NCCL when CUDA is available, else gloo).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < num_gpus_per_machine:
        raise RuntimeError(
            f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA devices"
        )
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url 'auto' works on a single machine only")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        start_method="spawn",
        daemon=False,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
            backend,
        ),
    )


def _worker(
    local_rank,
    main_func,
    world_size,
    num_gpus_per_machine,
    machine_rank,
    dist_url,
    args,
    timeout,
    backend,
):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(
        backend=backend,
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # detectron2's comm.get_local_rank() needs the per-machine group
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        release_process_groups()


def release_process_groups() -> None:
    """Destroy every process group of this process and drop the references detectron2 keeps
    (``comm._LOCAL_PROCESS_GROUP`` and the cached gloo group of ``comm.gather``), so that
    the groups' communication threads are joined now rather than during interpreter
    shutdown, where a group still alive can abort the process as it exits (SIGABRT)."""
    import gc

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
    cache_clear = getattr(comm._get_global_gloo_group, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    gc.collect()
