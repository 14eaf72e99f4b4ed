"""``medseg`` under torchrun, for the DDP tests in ``tests/test_train.py``.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py
RANK_DIR [--die-after EPOCH] train -c CONFIG ...``.

It runs the real CLI on every rank and then saves, per rank, what the tests compare
(``RANK_DIR/rank<r>.pt``): the weights this rank's DDP replica ended with and the first
training batch it drew. ``--die-after E`` makes rank 0 exit abruptly right after writing
``last.pt`` of epoch ``E``, as a killed run would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import medseg.train as train_module
from medseg.cli import main


def run(argv: list[str]) -> int:
    rank_dir = Path(argv.pop(0))
    die_after = None
    if argv[0] == "--die-after":
        die_after = int(argv[1])
        argv = argv[2:]

    replicas: list[torch.nn.Module] = []
    ddp = torch.nn.parallel.DistributedDataParallel

    class Recording(ddp):  # type: ignore[misc, valid-type]
        def __init__(self, module, *args, **kwargs):
            super().__init__(module, *args, **kwargs)
            replicas.append(module)

    torch.nn.parallel.DistributedDataParallel = Recording  # type: ignore[misc]

    batches: list[torch.Tensor] = []
    sample = train_module.PatchSampler.sample

    def recording_sample(self, n):
        out = sample(self, n)
        if not batches:
            batches.append(out[0].clone())
        return out

    train_module.PatchSampler.sample = recording_sample  # type: ignore[method-assign]

    if die_after is not None:
        save = train_module.save_checkpoint

        def save_then_die(path, **kwargs):
            save(path, **kwargs)
            if Path(path).name == "last.pt" and kwargs["epoch"] == die_after:
                os._exit(3)

        train_module.save_checkpoint = save_then_die

    code = main(argv)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().clone() for k, v in replicas[0].state_dict().items()}
    torch.save({"state": state, "first_batch": batches[0]}, rank_dir / f"rank{rank}.pt")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
