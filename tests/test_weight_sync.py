"""The checks and reads behind System.load_policy, on small folders written here (no engine: see
tests/learner/test_weight_sync.py for a checkpoint loaded into a running vLLM engine)."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save_file

from orchestra_rl.weight_sync import CollectiveTransport, checkpoint_tensors, interchangeable

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 300,
          "tie_word_embeddings": True, "_name_or_path": "/models/base", "transformers_version": "4.57.0",
          "torch_dtype": "float32"}
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def model_folder(path, config=None, tokenizer='{"model": {"vocab": {"a": 0}}}', template=TEMPLATE):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config or CONFIG))
    (path / "tokenizer.json").write_text(tokenizer)
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return str(path)


def test_only_a_checkpoint_of_the_same_shape_and_tokenizer_is_interchangeable(tmp_path):
    base = model_folder(tmp_path / "base")
    # Where it came from and how it was stored do not matter; what the engine computes does.
    saved_elsewhere = {**CONFIG, "_name_or_path": "/runs/sft/hf", "transformers_version": "4.58.0",
                       "torch_dtype": "bfloat16", "dtype": "bfloat16"}
    assert interchangeable(base, model_folder(tmp_path / "sft", saved_elsewhere)) is None

    wider = interchangeable(base, model_folder(tmp_path / "wider", {**CONFIG, "hidden_size": 128}))
    assert wider == "its config.json differs from the running model's in ['hidden_size']"
    other_tokens = interchangeable(base, model_folder(tmp_path / "tok", tokenizer='{"model": {"vocab": {"b": 0}}}'))
    other_template = interchangeable(base, model_folder(tmp_path / "tpl", template="{{ messages }}"))
    assert other_tokens == other_template == "its tokenizer.json or chat template differs from the running model's"
    # A chat template of its own file wins over the tokenizer config's entry.
    own_file = model_folder(tmp_path / "jinja", template="ignored")
    (tmp_path / "jinja" / "chat_template.jinja").write_text(TEMPLATE)
    assert interchangeable(base, own_file) is None
    # Not a model folder (a hub name, a run folder): not interchangeable, so it gets engines of its own.
    assert interchangeable(base, str(tmp_path)) == f"no config.json in {tmp_path}"


def test_checkpoint_tensors_reads_every_shard_and_unties_the_lm_head(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    embed, norm = torch.randn(300, 64), torch.ones(64)
    save_file({"model.embed_tokens.weight": embed}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"model.norm.weight": norm}, str(folder / "model-00002-of-00002.safetensors"))
    tensors = dict(checkpoint_tensors(str(folder)))
    assert sorted(tensors) == ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]
    assert torch.equal(tensors["lm_head.weight"], embed) and torch.equal(tensors["model.norm.weight"], norm)

    (folder / "config.json").write_text(json.dumps({**CONFIG, "tie_word_embeddings": False}))
    assert "lm_head.weight" not in dict(checkpoint_tensors(str(folder)))  # untied: the file's own, or none
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors in"):
        checkpoint_tensors(str(tmp_path))


def test_the_collective_group_forms_on_a_store_bound_before_its_port_is_handed_out():
    """Rank 0's store takes a port the OS picks and holds it from then on: no other process can take the port
    between its choice and the members' connecting (the race a port picked first and bound later has)."""
    store = CollectiveTransport.host_store("127.0.0.1", 2)
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", store.port))
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    metadata = CollectiveTransport.metadata(weights)
    with ThreadPoolExecutor(2) as pool:  # two members of one gloo group, each in its own thread
        member = pool.submit(CollectiveTransport.join, "127.0.0.1", store.port, 1, 2, "gloo")
        rank0 = CollectiveTransport(store, 0, 2, "gloo")
        member = member.result(timeout=60)
        received = pool.submit(member.receive, metadata)
        assert rank0.send(weights, metadata) == 4 * 9
        assert {name: t.tolist() for name, t in received.result(timeout=60)} == \
            {name: t.tolist() for name, t in weights.items()}
