"""Files shipped inside the package: the tokenizer's ranks, the chapter-7 instruction data and the demo model.

See ``NOTICE.md`` here for where each came from and its licence, and ``demo-model.md`` for the demo model's card.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent
# 1,100 Alpaca-style records of the book's chapter 7 (Apache-2.0, Sebastian Raschka); `scratchbot finetune`'s default.
INSTRUCTION_DATA = ASSETS / "instruction-data.json"
# A small model trained from scratch on INSTRUCTION_DATA by `scratchbot finetune` (see demo-model.md). It is weak:
# it lets the bot start on a fresh machine without downloading anything, nothing more.
DEMO_CHECKPOINT = ASSETS / "demo-model.safetensors"
