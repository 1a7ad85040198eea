"""Checkpoints from elsewhere: the Hugging Face layout, and bad or hostile files that fail with a clear error."""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llm.checkpoints.common import CheckpointError
from llm.checkpoints.load import inspect_checkpoint, load_checkpoint, load_state_dict
from llm.checkpoints.save import convert_checkpoint, save_checkpoint
from llm.config import GPTConfig
from tests.llm.checkpoints.helpers import (
    CONFIG,
    HEADS,
    assert_same_tensors,
    hf_state_dict,
    load_safetensors,
    random_model,
    sha256,
)

# ------------------------------------------------------------------------------------------- Hugging Face layout


@pytest.mark.parametrize("body_prefix", [True, False])
def test_hf_pytorch_model_bin_with_old_attention_buffers_loads(tmp_path, body_prefix):
    model = random_model()
    tensors = hf_state_dict(model, tmp_path)
    for n in range(CONFIG.n_layers):  # what transformers < 4.3x saved: constant masks, nothing learned
        tensors[f"transformer.h.{n}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        tensors[f"transformer.h.{n}.attn.masked_bias"] = torch.tensor(-1e4)
    if not body_prefix:
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    (tmp_path / "hf").mkdir()
    torch.save(tensors, tmp_path / "hf" / "pytorch_model.bin")

    for path in (tmp_path / "hf", tmp_path / "hf" / "pytorch_model.bin"):  # no config.json: the heads are given
        loaded = load_checkpoint(path, n_heads=HEADS)
        assert (loaded.format, loaded.config) == ("hf", CONFIG)
        assert_same_tensors(model.state_dict(), loaded.model.state_dict())


def test_hf_head_count_comes_from_config_json(tmp_path):
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=1)
    path = save_checkpoint(random_model(config), tmp_path / "hf", "hf")
    tensors = load_safetensors(path / "model.safetensors")
    torch.save(tensors, path / "pytorch_model.bin")  # no metadata: only config.json knows the heads
    (path / "model.safetensors").unlink()

    assert load_checkpoint(path).config == config


def test_hf_config_describing_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "hf", "hf")
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, "activation_function": "relu"}))

    with pytest.raises(CheckpointError, match="activation_function"):
        load_checkpoint(path)


def test_hf_tensor_of_wrong_shape_is_named_by_its_hf_name(tmp_path):
    tensors = hf_state_dict(random_model(), tmp_path)
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(512, 128)  # (out, in): not transposed
    torch.save(tensors, tmp_path / "pytorch_model.bin")

    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.weight.*\(128, 512\)") as error:
        load_checkpoint(tmp_path / "pytorch_model.bin", n_heads=HEADS)
    assert "trf_blocks.1.ff.layers.0.weight" in str(error.value)


# ------------------------------------------------------------------------------------------- hostile files


class CreatesMarkerWhenUnpickled:
    """A pickle payload: unpickling it runs code that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def write_torch_zip(path: Path, marker: Path) -> Path:
    torch.save({"tok_emb.weight": torch.zeros(2, 2), "x": CreatesMarkerWhenUnpickled(marker)}, path)
    return path


def write_legacy_torch(path: Path, marker: Path) -> Path:
    payload = {"tok_emb.weight": torch.zeros(2, 2), "x": CreatesMarkerWhenUnpickled(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    return path


def write_plain_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"tok_emb.weight": CreatesMarkerWhenUnpickled(marker)}, protocol=4))
    return path


def write_hf_directory(path: Path, marker: Path) -> Path:
    path.mkdir()
    write_torch_zip(path / "pytorch_model.bin", marker)
    return path


def test_the_payload_really_runs_code_when_unpickled_unsafely(tmp_path):
    """Control for the tests below: without weights_only, loading this file creates the marker."""
    marker = tmp_path / "marker"
    write_torch_zip(tmp_path / "evil.pth", marker)

    torch.load(tmp_path / "evil.pth", weights_only=False)

    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the protocol-4 pickle, then refuses it
@pytest.mark.parametrize("write", [write_torch_zip, write_legacy_torch, write_plain_pickle, write_hf_directory])
def test_pickle_that_needs_code_is_refused_without_running_it(tmp_path, write):
    marker = tmp_path / "marker"
    path = write(tmp_path / "evil", marker)

    for load in (load_checkpoint, load_state_dict, inspect_checkpoint):
        with pytest.raises(CheckpointError, match=r"refused.*arbitrary code"):
            load(path)
    with pytest.raises(CheckpointError, match="refused"):
        convert_checkpoint(path, tmp_path / "out.safetensors", "safetensors")

    assert not marker.exists()


# ------------------------------------------------------------------------------------------- broken files


def test_missing_file_says_so(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        load_checkpoint(tmp_path / "nowhere.pth")


@pytest.mark.parametrize("size", [0, 5, 4096])
def test_random_bytes_are_not_a_checkpoint(tmp_path, size):
    data = random.Random(size).randbytes(size)
    assert data[:1] != b"\x80" and data[:2] != b"PK" and data[8:9] != b"{"  # really none of the formats
    (tmp_path / "noise.pth").write_bytes(data)

    with pytest.raises(CheckpointError, match="neither a PyTorch nor a safetensors file"):
        load_checkpoint(tmp_path / "noise.pth")


@pytest.mark.parametrize(
    "cut", [lambda n: 100, lambda n: n // 2, lambda n: n - 1], ids=["inside-header", "half", "last-byte-missing"]
)
def test_truncated_safetensors_is_reported_as_truncated(tmp_path, cut):
    data = save_checkpoint(random_model(), tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: cut(len(data))])

    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_file_is_reported_as_corrupt(tmp_path, legacy):
    torch.save(random_model().state_dict(), tmp_path / "full.pth", _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pth")


def test_tensor_of_wrong_shape_is_named_with_both_shapes(tmp_path):
    state_dict = random_model().state_dict()
    state_dict["trf_blocks.1.ff.layers.0.weight"] = torch.zeros(100, 128)
    torch.save(state_dict, tmp_path / "m.pth")

    with pytest.raises(
        CheckpointError, match=r"trf_blocks\.1\.ff\.layers\.0\.weight has shape \(100, 128\).*\(512, 128\)"
    ):
        load_checkpoint(tmp_path / "m.pth", n_heads=HEADS)


def test_missing_tensor_is_named(tmp_path):
    state_dict = random_model().state_dict()
    del state_dict["trf_blocks.1.norm2.shift"]
    torch.save(state_dict, tmp_path / "m.pth")

    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*trf_blocks\.1\.norm2\.shift"):
        load_checkpoint(tmp_path / "m.pth", n_heads=HEADS)


def test_unexpected_tensor_is_named(tmp_path):
    state_dict = random_model().state_dict()
    state_dict["trf_blocks.0.att.rotary.freqs"] = torch.zeros(8)
    torch.save(state_dict, tmp_path / "m.pth")

    with pytest.raises(CheckpointError, match=r"does not use.*rotary\.freqs"):
        load_checkpoint(tmp_path / "m.pth", n_heads=HEADS)


def test_missing_block_is_reported(tmp_path):
    state_dict = {k: v for k, v in random_model().state_dict().items() if not k.startswith("trf_blocks.0.")}
    torch.save(state_dict, tmp_path / "m.pth")

    with pytest.raises(CheckpointError, match="not numbered"):
        load_checkpoint(tmp_path / "m.pth")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "holds a list, not a state dict"),
        ({"tok_emb.weight": torch.zeros(2), "step": 3}, "'step' is a int, not a tensor"),
        ({"encoder.weight": torch.zeros(2)}, "not a GPT-2 checkpoint"),
    ],
)
def test_pickles_that_are_not_gpt_state_dicts_are_refused(tmp_path, content, message):
    torch.save(content, tmp_path / "m.pth")

    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "m.pth")


def test_directory_without_weights_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors or pytorch_model\.bin"):
        load_checkpoint(tmp_path)


def test_unknown_save_format_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'onnx'"):
        save_checkpoint(random_model(), tmp_path / "m.onnx", "onnx")


def test_saving_a_state_dict_that_does_not_fit_its_config_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(random_model().state_dict(), tmp_path / "m.safetensors", config=replace(CONFIG, n_layers=3))
    assert not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------------------------------- dtype and inspect


def test_loading_as_bfloat16_casts_every_parameter(tmp_path):
    model = random_model()
    path = save_checkpoint(model, tmp_path / "m.safetensors")

    loaded = load_checkpoint(path, dtype=torch.bfloat16)

    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert_same_tensors(expected, loaded.model.state_dict())


def test_loaded_model_computes_what_the_saved_model_computed(tmp_path):
    model = random_model()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.pth", "book"))
    ids = torch.tensor([[5, 17, 42, 3]])

    with torch.no_grad():
        assert torch.equal(loaded.model(ids), model(ids))


@pytest.mark.parametrize("fmt", ["safetensors", "book", "hf"])
def test_inspect_reports_format_config_parameters_dtype_and_sha256(tmp_path, fmt):
    model = random_model()
    path = save_checkpoint(model, tmp_path / "ckpt", fmt)
    weights = path / "model.safetensors" if fmt == "hf" else path

    info = inspect_checkpoint(path)

    assert info["format"] == fmt
    assert GPTConfig.from_dict(info["config"]) == CONFIG
    assert info["parameters"] == model.num_parameters
    assert info["dtypes"] == ["float32"]
    assert info["sha256"] == sha256(weights) == load_checkpoint(path).sha256
    assert info["file_size"] == weights.stat().st_size
