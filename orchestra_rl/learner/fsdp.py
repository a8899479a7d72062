"""FSDP2 plumbing shared by the RL learners and SFT: load an HF causal LM (or a critic), shard it, gather it, save it,
and move full (unsharded) weights and optimiser state in and out for checkpoints.

Every function that touches a sharded model is collective: all ranks of the process group must call it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from orchestra_rl.weight_sync import with_tied_lm_head

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_for(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def model_config(model_path: str, **overrides):
    """The model's HF config with every dropout rate set to 0: a learner's forward pass must be deterministic, or
    its logprobs differ from the inference engine's and the importance ratio is noise."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def load_causal_lm(model_path: str, dtype: str = "float32", attn_implementation: str = "sdpa",
                   gradient_checkpointing: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, config=model_config(model_path), dtype=DTYPES[dtype],
                                                 attn_implementation=attn_implementation)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_value_model(model_path: str, dtype: str = "float32", attn_implementation: str = "sdpa",
                     gradient_checkpointing: bool = False) -> torch.nn.Module:
    """PPO's critic: the policy's architecture and weights with a scalar head (`score`, freshly initialised from the
    global torch seed, so every rank starts from the same values). Output [B, T, 1]: the value after token t."""
    from transformers import AutoModelForTokenClassification

    config = model_config(model_path, num_labels=1, classifier_dropout=0.0)
    model = AutoModelForTokenClassification.from_pretrained(model_path, config=config, dtype=DTYPES[dtype],
                                                            attn_implementation=attn_implementation)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def shard(model: torch.nn.Module, backend: str, compute_dtype: str = "float32") -> torch.nn.Module:
    """fully_shard each decoder layer, then the root, over all ranks (FSDP2).

    The parameters keep the dtype they were loaded in (fp32: the master weights the optimiser updates). With a
    lower compute_dtype, FSDP2's MixedPrecisionPolicy casts them for forward and backward and reduces gradients
    in fp32, as veRL and torchtitan do; pure bf16 weights would lose small AdamW updates to rounding. One rank
    in fp32: returns the model as is, moved to its device (FSDP over a world of 1 buys nothing)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = device_for(backend)
    model.to(device)
    mixed = DTYPES[compute_dtype] != torch.float32
    if not mixed and not _is_distributed():
        return model
    if not dist.is_initialized():
        raise RuntimeError(f"compute dtype {compute_dtype}: FSDP2 mixed precision needs torch.distributed initialised")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[compute_dtype], reduce_dtype=torch.float32) if mixed \
        else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _is_distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (collective). Only rank 0 gets them (others: an empty dict), so a large model
    is gathered into one process's memory, not into every rank's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not _is_distributed():
        return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights (collective): rank 0 passes them, the others an empty dict; each rank keeps its shard.
    A tied lm_head missing from the file (see save_hf_checkpoint) is re-tied to the embeddings."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if state_dict:
        state_dict = with_tied_lm_head(state_dict, hasattr(model, "lm_head")
                                       and getattr(model.config, "tie_word_embeddings", False))
    if not _is_distributed():
        model.load_state_dict(state_dict)
        return
    set_model_state_dict(model, state_dict,
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state keyed by parameter name, unsharded, on CPU, on rank 0 (collective). Keyed by name, it
    loads into any number of ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of full_optimizer_state (collective): rank 0 passes the state, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=_is_distributed()))


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
