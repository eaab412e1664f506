"""What several processes need to agree on: whether there is an accelerator, a flag raised on any process, and a
model sharded by FSDP2 gathered whole for the parts of a run that call it outside its `forward`."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate import Accelerator


def has_accelerator() -> bool:
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available()


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any of them (so that all stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    flag = torch.tensor(float(flag), device=accelerator.device)
    return accelerator.reduce(flag, reduction="sum").item() > 0


@contextmanager
def whole_parameters(model: torch.nn.Module):
    """The parameters whole, as evaluation and catalogue encoding need them: they call the model's parts directly,
    outside its `forward`, and each process encodes its own share of the items, so under FSDP2 (which keeps only each
    process's shard of the parameters, gathering them in every wrapped module's forward) processes would gather
    different numbers of times. Every FSDP module is gathered once up front and kept whole until the end. A no-op
    for a model that FSDP2 did not wrap."""
    if not torch.distributed.is_available():
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    # FSDP2 takes the first module to run as its root; evaluation before any training step would run an encoder
    # layer first. Initialize from the real root, as its forward would (torch has no public call for this).
    model._get_fsdp_state()._lazy_init()
    wrapped = [module for module in model.modules() if isinstance(module, FSDPModule)]
    model.set_reshard_after_forward(False)  # torch's documented way to keep parameters whole for evaluation
    for module in wrapped:
        module.unshard()
    try:
        yield
    finally:
        model.set_reshard_after_forward(True)  # as accelerate wraps (fsdp_reshard_after_forward), the root
        model.set_reshard_after_forward(False, recurse=False)  # excepted, as FSDP2 sets it
        for module in wrapped:
            module.reshard()
