"""Reading OpenAI's TensorFlow GPT-2 release without TensorFlow, against a checkpoint TensorFlow itself wrote.

The fixture (fixtures/tf_gpt2, made by make_tf_gpt2.py with tensorflow 2.21) has OpenAI's variable names and
shapes; the values it saved are also in tf_gpt2_expected.npz, written by NumPy. The converted model is checked
against Hugging Face `transformers` given the same values under its own names, an independent path.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.checkpoints.common import SOURCE_FORMAT_KEY, CheckpointError
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.openai import convert_openai_checkpoint
from llm.checkpoints.tf_bundle import CorruptTensorError, TFCheckpoint, TFCheckpointError, mask_crc, masked_crc32c

FIXTURE = Path(__file__).parent / "fixtures" / "tf_gpt2"
EXPECTED = Path(__file__).parent / "fixtures" / "tf_gpt2_expected.npz"
HPARAMS = json.loads((FIXTURE / "hparams.json").read_text())


def expected() -> dict[str, torch.Tensor]:
    with np.load(EXPECTED) as npz:
        return {k.replace(".", "/"): torch.from_numpy(npz[k]) for k in npz.files}


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A writable copy of the fixture release."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "124M"))


def test_every_tensor_reads_back_as_tensorflow_saved_it() -> None:
    checkpoint = TFCheckpoint(FIXTURE / "model.ckpt")
    want = expected()
    assert sorted(checkpoint.entries) == sorted(want)
    for name, tensor in want.items():
        got = checkpoint.read(name)
        assert got.dtype == torch.float32 and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name


def test_crc32c_is_the_castagnoli_crc_masked_as_leveldb_masks_it() -> None:
    assert masked_crc32c(b"123456789") == mask_crc(0xE3069283)  # the standard CRC-32C check value
    assert mask_crc(0) == 0xA282EAD8


def test_a_damaged_tensor_is_reported_as_corrupt(release: Path) -> None:
    checkpoint = TFCheckpoint(release / "model.ckpt")
    entry = checkpoint.entries["model/h1/mlp/c_fc/w"]
    data = release / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(CorruptTensorError, match="model/h1/mlp/c_fc/w fails its CRC32C"):
        checkpoint.read("model/h1/mlp/c_fc/w")
    assert torch.equal(checkpoint.read("model/wte"), expected()["model/wte"])  # the rest still reads


def test_a_truncated_data_file_is_reported_as_corrupt(release: Path) -> None:
    data = release / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-100])
    checkpoint = TFCheckpoint(release / "model.ckpt")
    last = max(checkpoint.entries.values(), key=lambda e: e.offset + e.size)
    with pytest.raises(CorruptTensorError, match="truncated"):
        checkpoint.read(last.name)


def test_a_damaged_index_is_refused_with_a_clear_message(release: Path) -> None:
    index = release / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[40] ^= 0x01  # inside the data block: its CRC32C no longer matches
    index.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"CRC32C.*download it again"):
        TFCheckpoint(release / "model.ckpt")
    index.write_bytes(b"not a table" * 10)
    with pytest.raises(TFCheckpointError, match="magic"):
        TFCheckpoint(release / "model.ckpt")


def test_a_compressed_block_is_refused_not_misread(release: Path) -> None:
    index = release / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    # The first data block starts at 0; find its end from the index block's handle, then mark it snappy.
    checkpoint = TFCheckpoint(release / "model.ckpt")  # readable before the change
    assert checkpoint.entries
    end = _first_block_size(bytes(raw))
    raw[end] = 1
    struct.pack_into("<I", raw, end + 1, masked_crc32c(bytes(raw[: end + 1])))
    index.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match="compressed"):
        TFCheckpoint(release / "model.ckpt")


def _first_block_size(table: bytes) -> int:
    from llm.checkpoints.tf_bundle import FOOTER_SIZE, _block_entries, _block_handle, _read_block

    footer = table[-FOOTER_SIZE:]
    _, pos = _block_handle(footer, 0)
    index_handle, _ = _block_handle(footer, pos)
    _, handle_bytes = next(iter(_block_entries(_read_block(table, index_handle))))
    (offset, size), _ = _block_handle(handle_bytes, 0)
    assert offset == 0
    return size


# ------------------------------------------------------------------------------------------- conversion


def test_conversion_follows_the_books_load_weights_into_gpt(release: Path, tmp_path: Path) -> None:
    dst = convert_openai_checkpoint(release, tmp_path / "gpt2.safetensors")
    loaded = load_checkpoint(dst)
    state = loaded.model.state_dict()
    want = expected()
    e = HPARAMS["n_embd"]
    assert loaded.config.emb_dim == e and loaded.config.n_layers == HPARAMS["n_layer"] and loaded.config.qkv_bias
    assert loaded.metadata[SOURCE_FORMAT_KEY] == "openai-tf"
    # The book: q_w, k_w, v_w = np.split(c_attn w, 3, axis=-1); W_query.weight = q_w.T; out_head = wte.
    c_attn = want["model/h1/attn/c_attn/w"][0]  # [in, 3 * out]
    assert torch.equal(state["trf_blocks.1.att.W_key.weight"], c_attn[:, e : 2 * e].T)
    assert torch.equal(state["trf_blocks.1.att.W_value.bias"], want["model/h1/attn/c_attn/b"][2 * e :])
    assert torch.equal(state["trf_blocks.0.ff.layers.2.weight"], want["model/h0/mlp/c_proj/w"][0].T)
    assert torch.equal(state["trf_blocks.0.norm2.scale"], want["model/h0/ln_2/g"])
    assert torch.equal(state["final_norm.shift"], want["model/ln_f/b"])
    assert torch.equal(state["out_head.weight"], want["model/wte"])


def test_converted_model_computes_what_transformers_computes_on_the_same_weights(release: Path, tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    ours = load_checkpoint(convert_openai_checkpoint(release, tmp_path / "gpt2.safetensors")).model
    config = transformers.GPT2Config(
        vocab_size=HPARAMS["n_vocab"],
        n_positions=HPARAMS["n_ctx"],
        n_embd=HPARAMS["n_embd"],
        n_layer=HPARAMS["n_layer"],
        n_head=HPARAMS["n_head"],
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    # OpenAI's names are Hugging Face's with "/" for "." (h0 -> h.0), g/b/w for weight/bias, and a leading 1 on w.
    renamed = {}
    for name, tensor in expected().items():
        key = re.sub(r"^h(\d+)/", r"h.\1/", name.removeprefix("model/"))
        key = re.sub(r"/(g|w)$", "/weight", re.sub(r"/b$", "/bias", key)).replace("/", ".")
        key = key + ".weight" if key in ("wte", "wpe") else key
        renamed["transformer." + key] = tensor[0] if name.endswith("/w") else tensor
    missing, unexpected = hf.load_state_dict(renamed, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]])
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-4)


def test_a_release_with_a_missing_weight_names_it(release: Path, tmp_path: Path) -> None:
    (release / "hparams.json").write_text(json.dumps({**HPARAMS, "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"trf_blocks\.2"):
        convert_openai_checkpoint(release, tmp_path / "x.safetensors")


def test_a_release_without_hparams_says_to_download_again(release: Path, tmp_path: Path) -> None:
    (release / "hparams.json").unlink()
    with pytest.raises(CheckpointError, match=r"hparams\.json.*download"):
        convert_openai_checkpoint(release, tmp_path / "x.safetensors")
