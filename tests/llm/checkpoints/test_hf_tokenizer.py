"""A Hugging Face export carries GPT-2's tokenizer (vocab.json, merges.txt and the configs), derived from the shipped
tiktoken ranks, so transformers (and engines such as vLLM) load the directory as it is and encode text to exactly
the ids this project's tokenizer gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llm import assets
from llm.checkpoints.hf_tokenizer import TOKENIZER_FILES, byte_characters, recover_merges
from llm.checkpoints.save import save_checkpoint, written_paths
from llm.config import GPTConfig
from llm.tokenizer import END_OF_TEXT_ID, Tokenizer, mergeable_ranks
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=1)
TORTURE = (
    "Zürich, naïve café — “quotes” ‘and’ … ellipses\n\tTabs,  double  spaces, trailing   \n"
    "日本語のテキスト、한국어 텍스트, العربية, עברית, ελληνικά, русский текст\n"
    "Emoji: 👩‍👩‍👧‍👦 🇩🇪 👍🏽 e\u0301 \u200b zero-width, \U0001f600\n"
    "Code: def f(x):\n    return x**2  # it's 'quoted' & <escaped>\n"
    "Numbers 1234567890 3.14159 1e-9, URLs https://example.com/a?b=c#d, <|endoftext|> as text\n"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(make_model(CONFIG), tmp_path_factory.mktemp("export") / "model", "hf")


def test_the_export_writes_the_tokenizer_beside_the_weights(exported: Path) -> None:
    assert {p.name for p in exported.iterdir()} == {"model.safetensors", "config.json", *TOKENIZER_FILES}
    assert set(written_paths(exported, "hf")) == set(exported.iterdir())  # `convert` refuses to overwrite them all
    config = json.loads((exported / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == config["bos_token"] == config["unk_token"] == "<|endoftext|>"
    assert config["model_max_length"] == CONFIG.context_length
    generation = json.loads((exported / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == END_OF_TEXT_ID


def test_the_merges_recovered_from_the_ranks_are_gpt2s(exported: Path) -> None:
    merges = (exported / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 50_000
    assert merges[1:8] == ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he"]  # GPT-2's own first merges
    assert len(set(byte_characters().values())) == 256


def test_transformers_encodes_every_chapter_7_record_and_a_torture_text_to_our_ids(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs, ours = AutoTokenizer.from_pretrained(exported), Tokenizer()
    records = json.loads(assets.INSTRUCTION_DATA.read_text(encoding="utf-8"))
    texts = [TORTURE, *(" ".join(r[k] for k in ("instruction", "input", "output")) for r in records)]
    for text in texts:
        # As ours, "<|endoftext|>" typed in a text is text, not the end-of-text id.
        assert theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ours.encode(text)
    assert theirs.eos_token_id == END_OF_TEXT_ID


def test_a_token_that_is_no_merge_of_lower_ranks_is_refused() -> None:
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 300}
    assert recover_merges(ranks) == [(b"a", b"b")]
    with pytest.raises(ValueError, match="not one merge"):
        recover_merges(ranks | {b"abc": 299})  # "ab" is ranked after it: "abc" cannot have been made from it


def test_the_ranks_are_the_shipped_ones() -> None:
    assert len(mergeable_ranks()) == 50_256
