"""FSDP2 plumbing shared by the RL learners and SFT: load an HF causal LM, shard it, gather it, save it.

Every function that touches a sharded model is collective: all ranks of the process group must call it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_for(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_causal_lm(model_path: str, dtype: str = "float32", attn_implementation: str = "sdpa",
                   gradient_checkpointing: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype],
                                                 attn_implementation=attn_implementation)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def shard(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """fully_shard each decoder layer, then the root, over all ranks (FSDP2). One rank: returns the model as is,
    moved to its device (FSDP over a world of 1 buys nothing)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = device_for(backend)
    model.to(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (collective). Every rank gets them; callers usually use rank 0's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_hf_checkpoint(state_dict: dict[str, torch.Tensor], source_dir: str, out_dir: str) -> str:
    """Write an HF model directory (config, tokenizer, chat template from `source_dir`; weights as safetensors).

    The tied lm_head is dropped (safetensors refuses shared tensors; transformers re-ties it on load). Written to a
    temporary folder and renamed, so a crash never leaves a half checkpoint behind.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source_dir)
    tensors = {k: v.contiguous() for k, v in state_dict.items()
               if not (getattr(config, "tie_word_embeddings", False) and k == "lm_head.weight")}
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in os.listdir(source_dir):
        if not name.endswith(".safetensors") and not name.endswith(".bin") and name != "model.safetensors.index.json":
            src = Path(source_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return str(out)
