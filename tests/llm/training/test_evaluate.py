"""`scratchbot evaluate`: answers for the book's test split, the book's response file, and a judge on 127.0.0.1.

The fake judge speaks both chat APIs (OpenAI-compatible ``/v1/chat/completions`` and Ollama ``/api/chat``), records
what it was sent, answers from a script of replies (scores, sometimes not a number) and can fail a request with 500.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from bot.cli.main import main
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.decoding.sampling import SamplingParams
from llm.prompts import clean_response, render_prompt
from llm.tokenizer import Tokenizer
from llm.training.data import Record
from llm.training.evaluate import (
    EvaluationError,
    Judge,
    generate_responses,
    judge_prompt,
    load_responses,
    parse_score,
    responses_path,
    score_responses,
    select,
    write_responses,
)
from tests.llm.conftest import generate_ids, make_model
from tests.llm.local_http import QuietHandler, closed_port_url, refuse_non_local_urls, serve

CONFIG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_heads=4, n_layers=2)
SIMILE = {
    "instruction": "Rewrite the sentence using a simile.",
    "input": "The car is very fast.",
    "output": "The car is as fast as lightning.",
    "model_response": "The car is as fast as a bullet.",
}


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_non_local_urls(monkeypatch)


def records(n: int) -> list[dict[str, str]]:
    return [
        {"instruction": f"Name animal number {i}.", "input": "" if i % 2 else f"zoo {i}", "output": f"Animal {i}."}
        for i in range(n)
    ]


def answered(n: int) -> list[dict[str, str]]:
    return [{**r, "model_response": f"Animal {i}!"} for i, r in enumerate(records(n))]


class FakeJudge:
    """Replies in order from ``replies``; request number ``fail_at`` (0-based) gets a 500 and consumes no reply."""

    def __init__(self, replies: list[str], fail_at: int | None = None, status: int | None = None) -> None:
        self.replies = list(replies)
        self.fail_at = fail_at
        self.status = status  # every request fails with this status
        self.requests: list[tuple[str, dict[str, Any], str | None]] = []  # (path, body, Authorization)
        self._lock = threading.Lock()

    def handler(self) -> type[QuietHandler]:
        judge = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge._lock:
                    number = len(judge.requests)
                    judge.requests.append((self.path, body, self.headers.get("Authorization")))
                    fail = judge.status or (500 if number == judge.fail_at else None)
                    reply = None if fail else judge.replies.pop(0)
                if fail == 404:  # as Ollama answers for a model it does not have
                    self._send(404, {"error": f"model '{body['model']}' not found"})
                    return
                if fail:
                    self.send_error(fail, "overloaded")
                    return
                message = {"role": "assistant", "content": reply}
                if self.path == "/v1/chat/completions":
                    out = {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
                elif self.path == "/api/chat":
                    out = {"model": body["model"], "message": message, "done": True}
                else:
                    self.send_error(404)
                    return
                self._send(200, out)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(make_model(CONFIG, seed=3), path)
    return path


# ------------------------------------------------------------------------------------------------- answering


def test_the_test_split_is_the_books_ten_percent_after_the_first_eighty_five() -> None:
    data = [Record(**r) for r in records(100)]
    assert select(data, "test") == data[85:95]
    assert select(data, "validation") == data[95:]
    assert select(data, "all") == data
    with pytest.raises(EvaluationError, match="unknown split"):
        select(data, "dev")


def test_batched_answers_equal_one_prompt_at_a_time_greedy_answers() -> None:
    model = make_model(CONFIG, seed=3)
    data = [Record(**r) for r in records(5)]
    out = generate_responses(model, data, batch_size=2, max_new_tokens=6, progress=False)
    tokenizer = Tokenizer()
    assert [list(r) for r in out] == [["instruction", "input", "output", "model_response"]] * 5
    for record, row in zip(data, out, strict=True):
        ids = tokenizer.encode(render_prompt(record.instruction, record.input))
        alone = generate_ids(model, ids, SamplingParams(max_new_tokens=6))
        assert row["model_response"] == clean_response(tokenizer.decode(alone))
        assert row["instruction"] == record.instruction and row["output"] == record.output


def test_responses_are_written_in_the_books_shape_beside_the_data(tmp_path: Path) -> None:
    data_file = tmp_path / "instruction-data.json"
    out = write_responses(answered(3), responses_path(data_file))
    assert out == tmp_path / "instruction-data-with-response.json"
    text = out.read_text(encoding="utf-8")
    assert text.startswith('[\n    {\n        "instruction": ')  # json.dump(..., indent=4), as the book writes it
    assert json.loads(text) == answered(3)
    assert load_responses(out) == answered(3)


def test_a_responses_file_without_answers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(records(2)))
    with pytest.raises(EvaluationError, match="model_response"):
        load_responses(path)


# ---------------------------------------------------------------------------------------------------- judging


def test_the_judge_prompt_is_the_books_word_for_word() -> None:
    assert judge_prompt(SIMILE) == (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence using a simile.\n\n### Input:\n"
        "The car is very fast.` and correct output `The car is as fast as lightning.`, score the model response "
        "`The car is as fast as a bullet.` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )


@pytest.mark.parametrize(("reply", "score"), [("85", 85), (" 40\n", 40), ("0", 0), ("100", 100)])
def test_integer_replies_are_scores(reply: str, score: int) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", ["eighty", "85.5", "Score: 85", "101", "-3", ""])
def test_other_replies_are_not_scores(reply: str) -> None:
    assert parse_score(reply) is None


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_scores_average_and_unscored_count_over_either_api(api: str) -> None:
    fake = FakeJudge(["80", "not a number", "60", "100", "I would say 90"], fail_at=2)
    data = answered(5)
    with serve(fake.handler()) as url:
        report = score_responses(data, Judge(url=url, model="llama3", api=api, backoff=0), progress=False)
    assert report.scores == [80, None, 60, 100, None]
    assert report.average == 80.0 and report.unscored == 2
    paths = {path for path, _, _ in fake.requests}
    assert paths == {"/api/chat" if api == "ollama" else "/v1/chat/completions"}
    assert len(fake.requests) == 6  # one retried after the 500
    for (_, body, _), record in zip(fake.requests[:2] + fake.requests[3:], data, strict=True):
        assert body["model"] == "llama3"
        assert body["messages"] == [{"role": "user", "content": judge_prompt(record)}]
        sampling = body["options"] if api == "ollama" else body
        assert sampling["temperature"] == 0 and sampling["seed"] == 123
    if api == "ollama":
        assert fake.requests[0][1]["stream"] is False


def test_an_openai_compatible_judge_gets_the_api_key_as_a_bearer_token() -> None:
    fake = FakeJudge(["70"])
    with serve(fake.handler()) as url:
        judge = Judge(url=url + "/v1", model="gpt-4o", api="openai", api_key="sk-test", backoff=0)
        assert score_responses([SIMILE], judge, progress=False).scores == [70]
    assert fake.requests[0][0] == "/v1/chat/completions"
    assert fake.requests[0][2] == "Bearer sk-test"


def test_an_empty_answer_scores_zero_without_asking() -> None:
    fake = FakeJudge(["50"])
    with serve(fake.handler()) as url:
        report = score_responses([{**SIMILE, "model_response": "  "}, SIMILE], Judge(url, "m", backoff=0))
    assert report.scores == [0, 50] and len(fake.requests) == 1


def test_a_judge_that_keeps_failing_leaves_records_unscored() -> None:
    fake = FakeJudge([], status=503)
    with serve(fake.handler()) as url:
        report = score_responses([SIMILE], Judge(url, "m", retries=1, backoff=0), progress=False)
    assert report.scores == [None] and report.average is None and len(fake.requests) == 2


@pytest.mark.parametrize(
    ("url", "timeout", "refused"),
    [("localhost:11434", 1.0, "must start with http:// or https://"),
     ("file:///etc/passwd", 1.0, "must start with http:// or https://"),
     ("http://127.0.0.1:9", 0.0, "--judge-timeout must be a positive number"),
     ("http://127.0.0.1:9", float("nan"), "--judge-timeout must be a positive number")],
)  # fmt: skip
def test_a_judge_that_could_never_answer_is_refused_before_any_request(url: str, timeout: float, refused: str) -> None:
    with pytest.raises(EvaluationError, match=refused):
        Judge(url, "m", timeout=timeout)


def test_a_wrong_model_or_url_stops_with_a_clear_error() -> None:
    fake = FakeJudge([], status=404)
    refused = r"HTTP 404: model 'nope' not found\); check --judge-url.*'nope' exists"
    with serve(fake.handler()) as url, pytest.raises(EvaluationError, match=refused):
        score_responses([SIMILE], Judge(url, "nope", backoff=0))
    with pytest.raises(EvaluationError, match="nothing answers"):
        score_responses([SIMILE], Judge(closed_port_url(), "m", backoff=0))


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate_writes_answers_for_the_test_split_and_prints_the_judges_average(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    data_file = tmp_path / "instruction-data.json"
    data_file.write_text(json.dumps(records(40)))  # test split: records 34 to 37
    fake = FakeJudge(["90", "n/a", "70", "20"])
    with serve(fake.handler()) as url:
        code = main([
            "evaluate", "--checkpoint", str(checkpoint), "--data", str(data_file), "--max-new-tokens", "4",
            "--batch-size", "3", "--judge-url", url, "--judge-model", "judge", "--judge-api", "openai", "--quiet",
        ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "instruction-data-with-response.json").read_text())
    assert [r["instruction"] for r in written] == [r["instruction"] for r in records(40)[34:38]]
    assert all(isinstance(r["model_response"], str) for r in written)
    assert "wrote 4 responses" in out
    assert "average score 60.00 / 100 over 3 of 4 responses; 1 could not be scored" in out


def test_cli_evaluate_scores_an_existing_responses_file(tmp_path: Path, capsys) -> None:
    path = write_responses(answered(2), tmp_path / "r.json")
    fake = FakeJudge(["10", "30"])
    with serve(fake.handler()) as url:
        code = main(["evaluate", "--responses", str(path), "--judge-url", url, "--judge-model", "j", "--quiet"])
    assert code == 0
    assert "average score 20.00 / 100 over 2 of 2 responses; 0 could not be scored" in capsys.readouterr().out


def test_cli_evaluate_defaults_to_the_bundled_data_and_writes_here(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from llm.assets import INSTRUCTION_DATA

    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--checkpoint", str(checkpoint), "--split", "validation", "--max-new-tokens", "1", "--quiet"]
    assert main(args) == 0
    # Named for its split, so that it never overwrites the test split's answers.
    written = json.loads((tmp_path / "instruction-data-validation-with-response.json").read_text())
    bundled = json.loads(INSTRUCTION_DATA.read_text())
    assert [r["instruction"] for r in written] == [r["instruction"] for r in bundled[1045:]]  # the book's 55
    assert f"wrote 55 responses to {Path('instruction-data-validation-with-response.json')}" in capsys.readouterr().out
    assert not (tmp_path / "instruction-data-with-response.json").exists()


def test_cli_evaluate_of_bad_data_is_a_one_line_error(tmp_path: Path, checkpoint: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "no output here"}]')
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchbot: error:") and "'output'" in err and "\n" not in err


def test_the_cli_offers_the_splits_the_library_knows() -> None:
    from bot.cli.models import EVAL_SPLITS
    from llm.training.evaluate import SPLITS

    assert sorted(EVAL_SPLITS) == sorted(SPLITS)


def test_cli_evaluate_refuses_a_bad_judge_before_generating(tmp_path: Path, checkpoint: Path, capsys) -> None:
    data_file = tmp_path / "instruction-data.json"
    data_file.write_text(json.dumps(records(40)))
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data_file), "--quiet"]
    assert main([*argv, "--judge-url", "localhost:11434", "--judge-model", "j"]) == 2
    assert "--judge-url must start with http://" in capsys.readouterr().err
    assert not (tmp_path / "instruction-data-with-response.json").exists()  # nothing generated for nothing


@pytest.mark.parametrize(
    ("extra", "refused"),
    [(["--batch-size", "0"], "--batch-size must be 1..64"), (["--batch-size", "100000"], "--batch-size must be 1..64"),
     (["--responses", "r.json"], "give --judge-url and --judge-model too")],
)  # fmt: skip
def test_cli_evaluate_refuses_options_that_cannot_work(
    checkpoint: Path, capsys, extra: list[str], refused: str
) -> None:
    source = [] if "--responses" in extra else ["--checkpoint", str(checkpoint)]
    assert main(["evaluate", *source, *extra]) == 2
    assert refused in capsys.readouterr().err
