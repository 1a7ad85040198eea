"""What ships inside the package: the chapter-7 data with its attribution, and a demo model that loads and answers."""

from __future__ import annotations

import hashlib

import pytest

from llm.assets import ASSETS, DEMO_CHECKPOINT, INSTRUCTION_DATA, demo_checkpoint
from llm.checkpoints import load_checkpoint
from llm.generate import SamplingParams, generate
from llm.prompts import RESPONSE_STOPS, clean_response, render_prompt
from llm.tokenizer import Tokenizer

DATA_SHA256 = "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"  # /work/shared/data/README.md
SIZE_LIMIT = 50 * 1000 * 1000


def test_the_chapter_7_data_ships_unmodified_with_its_attribution() -> None:
    assert hashlib.sha256(INSTRUCTION_DATA.read_bytes()).hexdigest() == DATA_SHA256
    notice = (ASSETS / "NOTICE.md").read_text()
    assert "Apache License 2.0" in notice and "Sebastian Raschka" in notice
    assert "rasbt/LLMs-from-scratch" in notice and "ch07/01_main-chapter-code/instruction-data.json" in notice


def test_the_demo_checkpoint_is_small_loads_and_answers() -> None:
    assert demo_checkpoint() == DEMO_CHECKPOINT
    assert DEMO_CHECKPOINT.stat().st_size <= SIZE_LIMIT
    loaded = load_checkpoint(DEMO_CHECKPOINT)
    assert loaded.format == "safetensors" and loaded.config.vocab_size == 50257
    assert loaded.metadata["origin"] == "scratchbot finetune"
    params = SamplingParams(max_new_tokens=24, stop=RESPONSE_STOPS)
    result = generate(loaded.model, Tokenizer(), render_prompt("Name three primary colors."), params)
    assert clean_response(result.text)  # weak, but it says something
    assert (ASSETS / "demo-model.md").is_file()


def test_a_missing_demo_checkpoint_says_how_to_get_a_model(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import llm.assets

    monkeypatch.setattr(llm.assets, "DEMO_CHECKPOINT", tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="scratchbot download gpt2-medium"):
        llm.assets.demo_checkpoint()
