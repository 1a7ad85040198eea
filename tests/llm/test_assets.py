"""What ships inside the package: the chapter-7 data with its attribution, and a demo model that loads and answers."""

from __future__ import annotations

import hashlib

from llm.assets import ASSETS, DEMO_CHECKPOINT, INSTRUCTION_DATA
from llm.checkpoints.load import load_checkpoint
from llm.decoding.sampling import SamplingParams
from llm.prompts import RESPONSE_STOPS, clean_response, render_prompt
from tests.llm.conftest import generate_text

# The sha256 llm/assets/NOTICE.md records for the file copied unmodified.
DATA_SHA256 = "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
SIZE_LIMIT = 50 * 1000 * 1000


def test_the_chapter_7_data_ships_unmodified_with_its_attribution() -> None:
    assert hashlib.sha256(INSTRUCTION_DATA.read_bytes()).hexdigest() == DATA_SHA256
    notice = (ASSETS / "NOTICE.md").read_text()
    assert "Apache License 2.0" in notice and "Sebastian Raschka" in notice
    assert "rasbt/LLMs-from-scratch" in notice and "ch07/01_main-chapter-code/instruction-data.json" in notice


def test_the_demo_checkpoint_is_small_loads_and_answers() -> None:
    assert DEMO_CHECKPOINT.stat().st_size <= SIZE_LIMIT
    loaded = load_checkpoint(DEMO_CHECKPOINT)
    assert loaded.format == "safetensors" and loaded.config.vocab_size == 50257
    assert loaded.metadata["origin"] == "scratchbot finetune"
    params = SamplingParams(max_new_tokens=24, stop=RESPONSE_STOPS)
    result = generate_text(loaded.model, render_prompt("Name three primary colors."), params)
    assert clean_response(result.text)  # weak, but it says something
    assert (ASSETS / "demo-model.md").is_file()
