"""Checkpoints: every format loads, saves and converts bit-exactly, head counts included, never guessed."""

from __future__ import annotations

import json

import pytest
import torch

from llm.checkpoints.common import CONFIG_KEY, SOURCE_FORMAT_KEY, SOURCE_SHA256_KEY, CheckpointError
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.save import convert_checkpoint, save_checkpoint
from llm.config import GPTConfig, UnknownHeadCountError, infer_config
from tests.llm.book_reference import BookGPTModel
from tests.llm.checkpoints.helpers import (
    CONFIG,
    HEADS,
    assert_same_tensors,
    book_state_dict,
    hf_state_dict,
    load_safetensors,
    random_model,
    sha256,
)

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
