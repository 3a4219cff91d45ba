"""Sharded data parallel for the shared training loop: FSDP2 (`torch.distributed.fsdp.fully_shard`).

Why the loop shards itself instead of handing accelerate an FSDP plugin: accelerate 1.12 only turns
FSDP on for GPU-type process groups, so its FSDP path cannot run (or be tested) on CPU; torch's
`fully_shard` runs on gloo as well as NCCL. So the code a GPU user runs is the code the 2-process CPU
test runs (tests/unit/test_fsdp.py).

Wrap policy (what accelerate calls TRANSFORMER_BASED_WRAP): every submodule whose class is named in
the HF model's `_no_split_modules` (its decoder block) becomes one FSDP unit; the root (embeddings,
final norm, output head, any small extra module such as a hidden-state projector) is the last unit.
Each rank holds 1/N of every unit's parameters, gradients and AdamW state; a unit's full weights
exist only while it computes (all-gathered before, freed after).

Checkpoints under FSDP hold the FULL state dict (weights gathered to rank 0's CPU, optimizer state
keyed by parameter name), in the same per-module safetensors files as a DDP checkpoint: one format,
readable without a process group. Resume loads the full weights before sharding and the full
optimizer state after (torch.distributed.checkpoint.state_dict), so it is exact.
"""

from __future__ import annotations

import torch

from distill.errors import DistillError

FSDP = "fsdp"


def block_class_names(module: torch.nn.Module) -> set[str]:
    """Decoder-block class names an HF model declares (`_no_split_modules`); empty for other modules."""
    return set(getattr(module, "_no_split_modules", None) or [])


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    names = block_class_names(module)
    return [m for m in module.modules() if m is not module and type(m).__name__ in names]


def check_shardable(modules: dict[str, torch.nn.Module]) -> None:
    """Refuse FSDP for a model the wrap policy would leave in one unit (nothing would be sharded
    per layer, so every rank would all-gather the whole model at once: no memory saved)."""
    for name, module in modules.items():
        if not any(p.requires_grad for p in module.parameters()):
            continue
        if not _blocks(module) and (block_class_names(module) or module is next(iter(modules.values()))):
            raise DistillError(
                f"train.parallel fsdp cannot shard '{name}' ({type(module).__name__}): the wrap policy "
                f"finds no decoder-block class in it (_no_split_modules = {sorted(block_class_names(module))})",
                "use train.parallel: ddp for this model, or a HF transformer model that declares its blocks",
            )


def shard(stepper: torch.nn.Module, modules: dict[str, torch.nn.Module], experts: bool) -> torch.nn.Module:
    """fully_shard every decoder block, then the root (in place). -> the root, now an FSDPModule.

    experts: mixture-of-experts models, where a rank's tokens may skip an expert: its gradient is
    then None on that rank, and FSDP must still reduce-scatter zeros so the ranks' collectives match.
    """
    from torch.distributed.fsdp import fully_shard

    for module in modules.values():
        for block in _blocks(module):
            fully_shard(block)
    fully_shard(stepper)
    if experts:
        stepper.set_reduce_scatter_unused_params(True)
    return stepper


def drop_unused_grads(params: list[torch.nn.Parameter]) -> None:
    """Give back None to the gradients of parameters no rank used this step (an expert no token was
    routed to). FSDP reduce-scatters zeros for them, and AdamW would then move them with stale
    momentum, where one process or DDP (grad None) leaves them untouched. One all-reduce of flags."""
    import torch.distributed as dist

    local = [p.grad.to_local() if p.grad is not None else None for p in params]
    device = next((g.device for g in local if g is not None), torch.device("cpu"))
    used = torch.tensor([0.0 if g is None else float(bool(g.count_nonzero())) for g in local], device=device)
    dist.all_reduce(used)
    for param, flag in zip(params, used.tolist()):
        if not flag:
            param.grad = None


def set_gradient_sync(stepper, sync: bool) -> None:
    """Gradient accumulation: skip the reduce-scatter on all micro-batches but the last."""
    stepper.set_requires_gradient_sync(sync)


def full_state(stepper, optimizer=None) -> tuple[dict, dict | None]:
    """Full model (and optimizer) state dicts on rank 0's CPU, empty on other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(stepper, options=opts)
    optim_sd = get_optimizer_state_dict(stepper, optimizer, options=opts) if optimizer is not None else None
    return model_sd, optim_sd


def load_optimizer(stepper, optimizer, full_optim_sd: dict) -> None:
    """Load a full (name-keyed) optimizer state into the sharded optimizer, every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(stepper, optimizer, full_optim_sd,
                             options=StateDictOptions(full_state_dict=True))


def split_by_module(full_sd: dict[str, torch.Tensor], names) -> dict[str, dict[str, torch.Tensor]]:
    """`parts.<name>.<key>` entries of the root's state dict -> {name: {key: tensor}}; tied tensors
    are cloned so each key can be saved on its own (safetensors refuses shared storage)."""
    out: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
    seen: set[int] = set()
    for key, tensor in full_sd.items():
        name, _, rest = key.removeprefix("parts.").partition(".")
        ptr = tensor.data_ptr()
        out[name][rest] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def load_full(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full weights into a plain (not yet sharded) module; tied parameters may appear once."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    by_id: dict[int, set[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), set()).add(name)
    loaded = set(state)
    untied = [k for k in missing if not (by_id.get(id(module.get_parameter(k)), set()) & loaded)]
    if unexpected or untied:
        raise DistillError(f"checkpoint does not match the model (missing {untied[:3]}, unexpected "
                           f"{unexpected[:3]})", "resume with the recipe the run was started with")


def unwrap(stepper) -> None:
    """Turn the sharded modules back into plain ones holding the full trained weights, on every
    rank (the stage then saves and evaluates them as it would without FSDP). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(stepper, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    owners: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for name, param in stepper.named_parameters(remove_duplicate=False):
        mod_name, _, attr = name.rpartition(".")
        owners.setdefault(id(param), []).append((stepper.get_submodule(mod_name), attr, name, param.requires_grad))
    for module in stepper.modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        for handle in (state._pre_forward_hook_handle, state._post_forward_hook_handle):
            handle.remove()
        group = state._fsdp_param_group
        if group is not None:
            for handles in (group._module_to_pre_save_state_dict_hook_handle,
                            group._module_to_pre_load_state_dict_hook_handle):
                for handle in handles.values():
                    handle.remove()
        # fully_shard swapped the class for FSDP<cls>(FSDPModule, cls): restore cls.
        module.__class__ = module.__class__.__bases__[1]
    for users in owners.values():
        _, _, key, requires_grad = users[0]
        plain = torch.nn.Parameter(full[key].detach(), requires_grad=requires_grad)
        for module, attr, _, _ in users:
            module._parameters[attr] = plain
