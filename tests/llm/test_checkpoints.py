"""Checkpoints: every format loads, saves and converts bit-exactly; bad or hostile files fail with a clear error."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llm.checkpoints.common import CONFIG_KEY, SOURCE_FORMAT_KEY, SOURCE_SHA256_KEY, CheckpointError
from llm.checkpoints.load import inspect_checkpoint, load_checkpoint, load_state_dict
from llm.checkpoints.save import convert_checkpoint, save_checkpoint
from llm.config import GPTConfig, UnknownHeadCountError, infer_config
from llm.model import GPTModel
from tests.llm.book_reference import BookGPTModel
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=97, context_length=16, emb_dim=128, n_heads=2, n_layers=2)
# A bare state dict (torch.save of model.state_dict(), as the book's own code writes) records no config: the head count
# is given, as a user does with --n-heads.
HEADS = CONFIG.n_heads


def random_model(config: GPTConfig = CONFIG, seed: int = 0, *, tied: bool = False) -> GPTModel:
    """Random weights with no trivial tensor (see `make_model`); ``tied``: the head equals the token embedding."""
    model = make_model(config, seed)
    if tied:
        with torch.no_grad():
            model.out_head.weight.copy_(model.tok_emb.weight)
    return model


def book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """The state dict the book's own code saves for these weights: ours plus an ``att.mask`` buffer per block."""
    book = BookGPTModel(model.config.to_dict())
    missing, unexpected = book.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".att.mask") for k in missing)
    return book.state_dict()


def assert_same_tensors(expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["safetensors", "book", "hf"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_each_format_round_trips_bit_exactly_with_its_config(tmp_path, fmt, qkv_bias):
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=128, n_heads=2, n_layers=2, qkv_bias=qkv_bias)
    model = random_model(config)
    path = save_checkpoint(model, tmp_path / "ckpt", fmt)

    loaded = load_checkpoint(path)

    assert loaded.format == fmt
    assert loaded.config == config
    assert_same_tensors(model.state_dict(), loaded.model.state_dict())
    assert not loaded.model.training


@pytest.mark.parametrize("fmt", ["safetensors", "book", "hf"])
def test_tied_head_round_trips_and_hf_export_marks_it_tied(tmp_path, fmt):
    model = random_model(tied=True)
    path = save_checkpoint(model, tmp_path / "ckpt", fmt)

    assert_same_tensors(model.state_dict(), load_checkpoint(path).model.state_dict())
    if fmt == "hf":
        assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True


def test_hf_export_of_untied_head_writes_lm_head_and_says_untied(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "hf", "hf")

    assert "lm_head.weight" in load_safetensors(path / "model.safetensors")
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False


@pytest.mark.parametrize("fmt", ["safetensors", "book", "hf"])
def test_bfloat16_weights_round_trip_in_bfloat16(tmp_path, fmt):
    model = random_model().to(torch.bfloat16)
    path = save_checkpoint(model, tmp_path / "ckpt", fmt)

    assert_same_tensors(model.state_dict(), load_checkpoint(path).model.state_dict())


def test_conversion_through_every_format_and_back_is_bit_exact(tmp_path):
    model = random_model()
    chain = [("book", tmp_path / "a.pth"), ("safetensors", tmp_path / "b.safetensors"), ("hf", tmp_path / "c")]
    chain += [("book", tmp_path / "d.pth"), ("hf", tmp_path / "e"), ("safetensors", tmp_path / "f.safetensors")]
    src = save_checkpoint(model, tmp_path / "start.safetensors")
    for fmt, dst in chain:
        convert_checkpoint(src, dst, fmt)
        loaded = load_checkpoint(dst)
        assert (loaded.format, loaded.config) == (fmt, CONFIG)
        assert_same_tensors(model.state_dict(), loaded.model.state_dict())
        src = dst


def test_conversion_records_the_source_sha256_and_format(tmp_path):
    src = save_checkpoint(random_model(), tmp_path / "model.pth", "book")

    convert_checkpoint(src, tmp_path / "model.safetensors", "safetensors")

    metadata = load_checkpoint(tmp_path / "model.safetensors").metadata
    assert metadata[SOURCE_SHA256_KEY] == sha256(src)
    assert metadata[SOURCE_FORMAT_KEY] == "book"
    assert GPTConfig.from_dict(json.loads(metadata[CONFIG_KEY])) == CONFIG


def test_safetensors_keeps_caller_metadata(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "m.safetensors", metadata={"run": "sft-3", "epoch": 2})

    assert load_checkpoint(path).metadata["run"] == "sft-3"
    assert load_checkpoint(path).metadata["epoch"] == "2"


# ------------------------------------------------------------------------------------------- the book's files


def test_book_file_loads_strictly_into_the_books_own_model(tmp_path):
    model = random_model()
    path = save_checkpoint(model, tmp_path / "model.pth", "book")

    book = BookGPTModel(CONFIG.to_dict()).eval()
    book.load_state_dict(torch.load(path, weights_only=True), strict=True)

    assert torch.equal(book.trf_blocks[1].att.mask, torch.triu(torch.ones(16, 16), diagonal=1))
    ids = torch.tensor([[5, 17, 42, 3, 96]])
    with torch.no_grad():
        torch.testing.assert_close(book(ids), model(ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module.", "module._orig_mod."])
@pytest.mark.parametrize("with_masks", [True, False])
def test_book_state_dict_loads_with_or_without_masks_and_wrapper_prefixes(tmp_path, prefix, with_masks):
    model = random_model()
    state_dict = book_state_dict(model) if with_masks else model.state_dict()
    torch.save({prefix + k: v for k, v in state_dict.items()}, tmp_path / "model.pth")

    loaded = load_checkpoint(tmp_path / "model.pth", n_heads=HEADS)

    assert (loaded.format, loaded.config) == ("book", CONFIG)
    assert_same_tensors(model.state_dict(), loaded.model.state_dict())


def test_chapter5_training_checkpoint_with_optimizer_state_loads(tmp_path):
    model = random_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    torch.save(
        {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, tmp_path / "m.pth"
    )

    loaded = load_checkpoint(tmp_path / "m.pth", n_heads=HEADS)

    assert_same_tensors(model.state_dict(), loaded.model.state_dict())


def test_legacy_non_zip_torch_file_loads(tmp_path):
    torch.save(random_model().state_dict(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)

    loaded = load_checkpoint(tmp_path / "old.pth", n_heads=HEADS)
    assert_same_tensors(random_model().state_dict(), loaded.model.state_dict())


def test_format_is_detected_from_content_not_extension(tmp_path):
    save_checkpoint(random_model(), tmp_path / "model.bin", "safetensors")
    save_checkpoint(random_model(), tmp_path / "model.safetensors", "book")

    assert load_checkpoint(tmp_path / "model.bin").format == "safetensors"
    assert load_checkpoint(tmp_path / "model.safetensors").format == "book"


def test_a_book_file_without_its_config_is_refused_unless_the_head_count_is_given(tmp_path):
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=1)
    torch.save(random_model(config).state_dict(), tmp_path / "m.pth")  # the book's way: no config anywhere

    with pytest.raises(CheckpointError, match=r"number of attention heads.*m\.json.*--n-heads N") as refused:
        load_checkpoint(tmp_path / "m.pth")
    assert "width 32, 1 layers, context 16" in str(refused.value)
    assert load_checkpoint(tmp_path / "m.pth", n_heads=4).config == config
    for other in (1, 2):  # what a guess from the width would have given: another model, with other outputs
        assert load_checkpoint(tmp_path / "m.pth", n_heads=other).config.n_heads == other


def test_the_book_format_writes_its_config_beside_the_file_and_reads_it_back(tmp_path):
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=1, drop_rate=0.1)
    path = save_checkpoint(random_model(config), tmp_path / "m.pth", "book")

    written = json.loads((tmp_path / "m.json").read_text())
    assert written == {
        "vocab_size": 97,
        "context_length": 16,
        "emb_dim": 32,
        "n_heads": 4,
        "n_layers": 1,
        "drop_rate": 0.1,
        "qkv_bias": True,
    }  # the book's GPT_CONFIG keys, so its own code can build the model from it
    assert load_checkpoint(path).config == config
    with pytest.raises(CheckpointError, match=r"m\.json says 4 attention heads, but 2 were asked for"):
        load_checkpoint(path, n_heads=2)


def test_a_config_beside_a_book_file_that_does_not_fit_its_tensors_is_refused(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "m.pth", "book")
    (tmp_path / "m.json").write_text(json.dumps({**CONFIG.to_dict(), "emb_dim": 64}))
    with pytest.raises(CheckpointError, match=r"does not describe m's tensors: emb_dim 64 \(the tensors have 128\)"):
        load_checkpoint(path)
    (tmp_path / "m.json").write_text(json.dumps({"n_heads": "four"}))
    with pytest.raises(CheckpointError, match="not a positive whole number"):
        load_checkpoint(path)


def test_a_config_beside_any_single_file_of_the_books_names_is_read(tmp_path):
    from safetensors.torch import save_file

    save_file(random_model().state_dict(), tmp_path / "plain.safetensors")  # no metadata: written by other code
    with pytest.raises(CheckpointError, match=r"plain\.json.*--n-heads N"):
        load_checkpoint(tmp_path / "plain.safetensors")
    (tmp_path / "plain.json").write_text(json.dumps({"n_heads": 2}))
    assert load_checkpoint(tmp_path / "plain.safetensors").config == CONFIG


def test_a_hugging_face_file_without_its_config_asks_for_config_json(tmp_path):
    torch.save(hf_state_dict(random_model(), tmp_path), tmp_path / "weights.bin")
    with pytest.raises(CheckpointError, match=r"config\.json \(with n_head\).*--n-heads N"):
        load_checkpoint(tmp_path / "weights.bin")


def test_metadata_and_config_json_that_disagree_are_refused(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "hf", "hf")
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, "n_head": 4}))
    with pytest.raises(CheckpointError, match=r"metadata says 2 attention heads but .*config\.json says 4"):
        load_checkpoint(path)


def test_a_config_beside_a_book_file_with_impossible_values_is_one_clear_error(tmp_path):
    path = save_checkpoint(random_model(), tmp_path / "m.pth", "book")
    (tmp_path / "m.json").write_text(json.dumps({**CONFIG.to_dict(), "drop_rate": 5}))
    with pytest.raises(CheckpointError, match="drop_rate is a probability"):
        load_checkpoint(path)


def test_only_the_exact_shape_of_a_gpt2_size_tells_its_head_count() -> None:
    def shapes(vocab: int, context: int, width: int, layers: int) -> dict[str, torch.Tensor]:
        meta = {"tok_emb.weight": (vocab, width), "pos_emb.weight": (context, width)}
        meta |= {f"trf_blocks.{i}.att.W_query.weight": (width, width) for i in range(layers)}
        return {k: torch.empty(v, device="meta") for k, v in meta.items()}

    assert infer_config(shapes(50257, 1024, 1024, 24)).n_heads == 16  # gpt2-medium, e.g. the book's SFT .pth
    assert infer_config(shapes(50257, 1024, 1600, 48)).n_heads == 25  # gpt2-xl
    for not_gpt2 in (shapes(50257, 1024, 1024, 12), shapes(50257, 512, 768, 12), shapes(97, 1024, 768, 12)):
        with pytest.raises(UnknownHeadCountError):
            infer_config(not_gpt2)
    assert infer_config(shapes(50257, 512, 768, 12), n_heads=6).n_heads == 6


def test_the_bundled_demo_model_survives_every_format_with_identical_logits(tmp_path):
    """Its width (256, 4 heads) is no GPT-2 size: the case a head count read from the width got wrong."""
    from llm.assets import DEMO_CHECKPOINT

    original = load_checkpoint(DEMO_CHECKPOINT)
    assert original.config.n_heads == 4 and original.config.preset_name() is None
    ids = torch.tensor([[464, 3290, 318, 257, 1332, 286, 262, 4067]])
    with torch.no_grad():
        expected = original.model(ids)
    src = DEMO_CHECKPOINT
    chain = [("book", tmp_path / "a.pth"), ("hf", tmp_path / "b"), ("book", tmp_path / "c.pth")]
    chain += [("safetensors", tmp_path / "d.safetensors"), ("hf", tmp_path / "e"), ("safetensors", tmp_path / "f")]
    for fmt, dst in chain:
        convert_checkpoint(src, dst, fmt)
        loaded = load_checkpoint(dst)
        assert loaded.config == original.config, fmt
        with torch.no_grad():
            assert torch.equal(loaded.model(ids), expected), fmt
        src = dst


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        for fmt, dst in [
            ("safetensors", tmp_path / "m.safetensors"),
            ("book", tmp_path / "m.pth"),
            ("hf", tmp_path / "h"),
        ]:
            save_checkpoint(random_model(), dst, fmt)
    finally:
        os.umask(old)
    files = [tmp_path / "m.safetensors", tmp_path / "m.pth", tmp_path / "m.json", *(tmp_path / "h").iterdir()]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o644" for f in files}


# ------------------------------------------------------------------------------------------- Hugging Face layout


def hf_state_dict(model: GPTModel, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = save_checkpoint(model, tmp_path / "export", "hf")
    return load_safetensors(path / "model.safetensors")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


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
