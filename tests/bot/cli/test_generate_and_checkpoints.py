"""`scratchbot generate | convert | inspect | init-model` as a user meets them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bot.cli.main import main
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.decoding.sampling import SamplingParams
from llm.prompts import render_prompt
from llm.tokenizer import Tokenizer
from tests.llm.conftest import generate_ids, make_model

CONFIG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_heads=4, n_layers=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=5), path, format="safetensors")
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_wraps_the_prompt_in_the_alpaca_template(checkpoint: Path, capsys) -> None:
    out = run_json(capsys, "generate", "--checkpoint", str(checkpoint), "--json", "--max-new-tokens", "12", "Hi")
    assert set(out) >= {"text", "token_ids", "prompt_tokens", "new_tokens", "seconds"}
    tokenizer = Tokenizer()
    prompt_ids = tokenizer.encode(render_prompt("Hi"))
    model = load_checkpoint(checkpoint).model
    expected = generate_ids(model, prompt_ids, SamplingParams(max_new_tokens=12))
    assert out["prompt_tokens"] == len(prompt_ids)
    assert out["token_ids"][: len(expected)] == expected[: len(out["token_ids"])]
    assert out["new_tokens"] == len(out["token_ids"]) > 0
    assert out["text"] == out["text"].strip()


def test_generate_raw_sends_the_prompt_as_it_is(checkpoint: Path, capsys) -> None:
    args = ["generate", "--checkpoint", str(checkpoint), "--json", "--raw", "--max-new-tokens", "10"]
    out = run_json(capsys, *args, "Once upon a time")
    model = load_checkpoint(checkpoint).model
    ids = Tokenizer().encode("Once upon a time")
    assert out["prompt_tokens"] == len(ids)
    assert out["token_ids"] == generate_ids(model, ids, SamplingParams(max_new_tokens=10))
    assert out["text"] == Tokenizer().decode(out["token_ids"])


def test_generate_with_a_seed_is_repeatable(checkpoint: Path, capsys) -> None:
    args = ["generate", "--checkpoint", str(checkpoint), "--json", "--raw", "--temperature", "1.0"]
    args += ["--top-k", "50", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "15", "Hello"]
    assert run_json(capsys, *args)["token_ids"] == run_json(capsys, *args)["token_ids"]


def test_generate_streams_text_and_reports_speed_on_stderr(checkpoint: Path, capsys) -> None:
    assert main(["generate", "--checkpoint", str(checkpoint), "--raw", "--max-new-tokens", "8", "Hello"]) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith("\n") and len(captured.out) > 1
    assert "tokens/s" in captured.err


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_generate_in_reduced_precision(checkpoint: Path, capsys, precision: str) -> None:
    out = run_json(capsys, "generate", "--checkpoint", str(checkpoint), "--json", "--precision", precision, "Hi")
    assert out["new_tokens"] == len(out["token_ids"])


def user_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchbot: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_missing_checkpoint_is_one_clear_line(tmp_path: Path, capsys) -> None:
    err = user_error(capsys, "generate", "--checkpoint", str(tmp_path / "nope.pth"), "Hi")
    assert "nope.pth" in err


def test_corrupt_checkpoint_is_one_clear_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 100)
    user_error(capsys, "generate", "--checkpoint", str(bad), "Hi")
    user_error(capsys, "inspect", str(bad))


def test_invalid_sampling_setting_is_one_clear_line(checkpoint: Path, capsys) -> None:
    err = user_error(capsys, "generate", "--checkpoint", str(checkpoint), "--top-p", "2", "Hi")
    assert "--top-p: Input should be less than or equal to 1" in err
    for flag, value in (("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "1e9")):
        assert flag in user_error(capsys, "generate", "--checkpoint", str(checkpoint), flag, value, "Hi")


def test_prompt_too_long_under_no_truncate_is_one_clear_line(checkpoint: Path, capsys) -> None:
    err = user_error(capsys, "generate", "--checkpoint", str(checkpoint), "--no-truncate", "--raw", "word " * 300)
    assert "shorten it" in err


def test_convert_and_inspect_every_format(checkpoint: Path, tmp_path: Path, capsys) -> None:
    source = load_checkpoint(checkpoint).model.state_dict()
    for fmt, dst in [("book", tmp_path / "m.pth"), ("hf", tmp_path / "hf"), ("safetensors", tmp_path / "m.st")]:
        assert main(["convert", str(checkpoint), str(dst), "--format", fmt]) == 0
        capsys.readouterr()
        info = run_json(capsys, "inspect", str(dst), "--json")
        assert info["format"] == fmt
        converted = load_checkpoint(dst).model.state_dict()
        assert all(torch.equal(source[k], converted[k]) for k in source)
    info = run_json(capsys, "inspect", str(checkpoint), "--json")
    assert info["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_init_model_writes_a_loadable_preset(tmp_path: Path, capsys) -> None:
    dst = tmp_path / "small.safetensors"
    assert main(["init-model", "gpt2-small", str(dst), "--seed", "1"]) == 0
    assert "163,037,184 parameters" in capsys.readouterr().out  # 124M + the untied output head
    loaded = load_checkpoint(dst)
    assert loaded.config == GPTConfig.from_name("gpt2-small")


def test_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "inspect", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing.safetensors" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# Settings that cannot work are refused; checkpoints are never silently changed


def test_an_answer_length_the_context_cannot_hold_is_refused_not_a_prompt_cut_to_nothing(
    checkpoint: Path, capsys
) -> None:
    # CONFIG's context is 128 tokens; the template needs about 70 of them with room for a message.
    err = user_error(capsys, "generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "128", "Hi")
    assert "--max-new-tokens 128 is too long for this model: a context of 128 tokens holds at most 60" in err
    err = user_error(capsys, "generate", "--checkpoint", str(checkpoint), "--raw", "--max-new-tokens", "128", "Hi")
    assert "holds at most 96 new tokens beside the 32 tokens always kept for the prompt" in err
    out = run_json(capsys, "generate", "--checkpoint", str(checkpoint), "--json", "--max-new-tokens", "60", "Hi")
    assert out["truncated_prompt_tokens"] == 0 and out["prompt_tokens"] == len(Tokenizer().encode(render_prompt("Hi")))


def test_the_default_answer_length_is_lowered_to_fit_a_small_model(checkpoint: Path, capsys) -> None:
    out = run_json(capsys, "generate", "--checkpoint", str(checkpoint), "--json", "--raw", "Once")
    assert out["truncated_prompt_tokens"] == 0  # the default of 256 would have cut the prompt to one token


def test_an_answer_length_set_in_the_environment_is_checked_too(checkpoint: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SCRATCHBOT_MAX_NEW_TOKENS", "100")
    err = user_error(capsys, "generate", "--checkpoint", str(checkpoint), "Hi")
    assert "SCRATCHBOT_MAX_NEW_TOKENS=100 is too long for this model" in err


def test_generate_reads_its_defaults_from_the_settings(checkpoint: Path, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        f"SCRATCHBOT_CHECKPOINT={checkpoint}\nSCRATCHBOT_MAX_NEW_TOKENS=3\nSCRATCHBOT_PRECISION=fp32\n"
    )
    out = run_json(capsys, "generate", "--json", "--raw", "Hello")
    model = load_checkpoint(checkpoint).model
    ids = Tokenizer().encode("Hello")
    assert out["token_ids"] == generate_ids(model, ids, SamplingParams(max_new_tokens=3))
    assert run_json(capsys, "generate", "--json", "--raw", "--max-new-tokens", "5", "Hello")["new_tokens"] == 5


def test_a_bad_setting_is_one_line_naming_it_for_every_command(checkpoint: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SCRATCHBOT_TEMPERATURE", "warm")
    for argv in (["generate", "--checkpoint", str(checkpoint), "Hi"], ["db", "upgrade"], ["run"]):
        assert "SCRATCHBOT_TEMPERATURE" in user_error(capsys, *argv)


def test_a_book_file_without_its_head_count_asks_for_it(tmp_path: Path, capsys) -> None:
    model = make_model(CONFIG, seed=5)  # 32 wide, 4 heads: no GPT-2 size
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # what the book's own code writes: no config
    err = user_error(capsys, "inspect", str(tmp_path / "bare.pth"))
    assert "--n-heads N" in err and "bare.json" in err
    bare = str(tmp_path / "bare.pth")
    assert run_json(capsys, "inspect", bare, "--n-heads", "4", "--json")["config"]["n_heads"] == 4
    assert main(["convert", bare, str(tmp_path / "m.pth"), "--format", "book", "--n-heads", "4"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n_heads"] == 4
    assert load_checkpoint(tmp_path / "m.pth").config == CONFIG  # read back with no flag


def test_convert_and_init_model_refuse_to_overwrite_without_force(checkpoint: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "copy.safetensors"
    dst.write_bytes(b"hours of training")
    err = user_error(capsys, "convert", str(checkpoint), str(dst), "--format", "safetensors")
    assert "already exists" in err and "--force" in err and dst.read_bytes() == b"hours of training"
    user_error(capsys, "init-model", "gpt2-small", str(dst))
    assert dst.read_bytes() == b"hours of training"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    user_error(capsys, "convert", str(checkpoint), str(tmp_path / "hf"), "--format", "hf")
    assert main(["convert", str(checkpoint), str(dst), "--format", "safetensors", "--force"]) == 0
    assert load_checkpoint(dst).config == CONFIG


def test_convert_refuses_to_write_over_its_own_source(checkpoint: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "only-copy.safetensors"
    src.write_bytes(checkpoint.read_bytes())
    err = user_error(capsys, "convert", str(src), str(src), "--format", "safetensors", "--force")
    assert "is the checkpoint being converted" in err and src.read_bytes() == checkpoint.read_bytes()


def test_convert_into_a_directory_asks_for_a_file_name(checkpoint: Path, tmp_path: Path, capsys) -> None:
    err = user_error(capsys, "convert", str(checkpoint), str(tmp_path), "--format", "safetensors")
    assert "is a directory; give the checkpoint's file path" in err and "--force" not in err


def test_top_k_without_a_temperature_is_pointed_out(checkpoint: Path, capsys) -> None:
    assert main(["generate", "--checkpoint", str(checkpoint), "--top-k", "5", "--max-new-tokens", "2", "Hi"]) == 0
    assert "at temperature 0 the answer is greedy" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(checkpoint), "--top-k", "5", "--temperature", "0.7", "--seed", "1",
                 "--max-new-tokens", "2", "Hi"]) == 0  # fmt: skip
    assert "greedy" not in capsys.readouterr().err
