"""`scratchbot finetune` as a user meets it: a tiny model trained, saved, loaded back by `generate`; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli.main import main
from llm.assets import INSTRUCTION_DATA
from llm.checkpoints.load import load_checkpoint

TINY = ["--init", "gpt2-small", "--emb-dim", "32", "--n-layers", "2", "--n-heads", "4", "--context-length", "128"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "records.jsonl"
    records = json.loads(INSTRUCTION_DATA.read_text())[:30]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_finetune_a_tiny_model_then_generate_with_it(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tiny.safetensors"
    argv = ["finetune", *TINY, "--data", str(data), "--out", str(out), "--lr", "1e-3", "--max-steps", "2"]
    assert main([*argv, "--eval-every", "1", "--eval-batches", "1", "--quiet", "--save-book"]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps on 25 records" in printed and "validation loss" in printed
    for path in (out, out.with_suffix(".pth"), tmp_path / "tiny-loss.png", tmp_path / "tiny-history.json"):
        assert f"wrote {path}" in printed and path.is_file()
    assert load_checkpoint(out).config.emb_dim == 32
    # The book's .pth records no head count: the config written beside it keeps the 4 heads (not 32 / 64 = 1).
    assert load_checkpoint(out.with_suffix(".pth")).config == load_checkpoint(out).config
    assert json.loads(out.with_suffix(".json").read_text())["n_heads"] == 4
    assert f"wrote {out.with_suffix('.json')}" in printed

    assert main([*argv, "--quiet"]) == 2  # hours of training are not overwritten unless asked
    assert "already exists" in capsys.readouterr().err

    assert main(["generate", "--checkpoint", str(out), "--json", "--max-new-tokens", "4", "Name a color."]) == 0
    assert json.loads(capsys.readouterr().out)["new_tokens"] >= 1


def test_finetune_continues_from_a_checkpoint_with_lora(data: Path, tmp_path: Path, capsys) -> None:
    base = tmp_path / "base.safetensors"
    assert main(["finetune", *TINY, "--data", str(data), "--out", str(base), "--max-steps", "1", "--quiet"]) == 0
    assert "trained 1 step on 25 records" in capsys.readouterr().out
    out = tmp_path / "lora.safetensors"
    argv = ["finetune", "--checkpoint", str(base), "--data", str(data), "--out", str(out), "--lora-rank", "2"]
    assert main([*argv, "--max-steps", "1", "--mask-instruction", "--no-plot", "--quiet"]) == 0
    assert "lora" not in " ".join(load_checkpoint(out).model.state_dict())
    assert not (tmp_path / "lora-loss.png").exists()


def test_bad_data_is_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json\n")
    assert main(["finetune", *TINY, "--data", str(bad), "--out", str(tmp_path / "x.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchbot: error:") and "line 1 is not JSON" in err and "\n" not in err


def test_bad_options_are_user_errors(data: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "x.safetensors")
    assert main(["finetune", *TINY, "--data", str(data), "--out", out, "--exact", "--grad-accum", "2"]) == 2
    assert "--exact" in capsys.readouterr().err
    assert main(["finetune", "--init", "gpt2-huge", "--data", str(data), "--out", out]) == 2
    assert "unknown model preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --checkpoint and --init exclude each other
        main(["finetune", "--init", "gpt2-small", "--checkpoint", out, "--out", out])


@pytest.mark.parametrize(
    ("extra", "refused"),
    [(["--lr", "inf"], "--lr must be a finite number"), (["--lr", "nan"], "--lr must be a finite number"),
     (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
     (["--lora-rank", "2", "--lora-alpha", "inf"], "--lora-alpha must be a finite number")],
)  # fmt: skip
def test_numbers_that_would_train_nothing_but_nan_are_refused(
    data: Path, tmp_path: Path, capsys, extra: list[str], refused: str
) -> None:
    out = tmp_path / "x.safetensors"
    assert main(["finetune", *TINY, "--data", str(data), "--out", str(out), *extra, "--quiet"]) == 2
    assert refused in capsys.readouterr().err and not out.exists()


def test_save_book_never_writes_over_the_checkpoint_itself(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sft.pth"
    assert main(["finetune", *TINY, "--data", str(data), "--out", str(out), "--save-book", "--quiet"]) == 2
    assert "give --out a .safetensors name" in capsys.readouterr().err and not out.exists()
