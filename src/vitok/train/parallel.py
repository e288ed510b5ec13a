"""FSDP sharding of the tokenizer and full (unsharded) state dicts for checkpoints and exports.

With `train.parallel=fsdp` every Transformer block and the model root are sharded with
torch's `fully_shard` (FSDP2): each rank holds 1/world of the weights, gradients and AdamW
moments, which is what lets large decoders fit. Checkpoints hold full tensors (gathered here),
so a run's files look the same whichever way it was trained. The helpers are no-ops on
unsharded models, so the loop calls them unconditionally.
"""

from __future__ import annotations

import torch
from torch import nn


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # older torch: FSDP2 not available
        return None
    return DTensor


def is_sharded(model: nn.Module) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def shard(model) -> None:
    """fully_shard each Transformer block, then the root (embeddings, bottleneck, unembedding)."""
    from torch.distributed.fsdp import fully_shard

    for block in [*model.encoder.blocks, *model.decoder.blocks]:
        fully_shard(block)
    fully_shard(model)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded one), detached."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(t, dtensor):
        return t.full_tensor().detach()
    return t.detach()


def local_like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` cut into this rank's shard the way `param` is sharded (just `full` when unsharded)."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(param, dtensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements)
    return full


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def model_state(model: nn.Module, to_rank0_cpu: bool = False) -> dict[str, torch.Tensor]:
    """Full state dict (collective when sharded): on every rank, or only on rank 0 in CPU memory
    (what checkpoints need: no rank holds a second full copy on its GPU)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=to_rank0_cpu))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, to_rank0_cpu: bool = False) -> dict:
    """Full optimizer state (keyed by parameter names when sharded); collective when sharded."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=to_rank0_cpu))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
