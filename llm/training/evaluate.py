"""``scratchbot evaluate``: chapter 7's evaluation. Answer the test split, save the answers, let a judge score them.

1. The data is read and split as finetuning reads and splits it (`llm.training.data`): in file order, the first 85%
   train, the next 10% test, the rest validation (1,100 records -> 935 / 110 / 55).
2. Each record's prompt is the shared Alpaca template (`llm.prompts.render_prompt`, which ends with the response
   header; the book's loop lets the model write that header itself). Answers are greedy, several prompts at a time
   (`llm.decoding.runs.generate_all`, on the engine the service uses), cleaned as the bot cleans them
   (`llm.prompts.clean_response`).
3. The records plus ``model_response`` are written as JSON, the book's ``instruction-data-with-response.json``.
4. Optionally a judge model behind an OpenAI-compatible (``/v1/chat/completions``) or Ollama (``/api/chat``)
   endpoint scores each answer 0-100 with the book's prompt, temperature 0 and seed 123; a reply that is not an
   integer from 0 to 100 is counted as unscored, as the book skips it. An empty answer scores 0 without a query,
   as the book's ``ollama_evaluate.py`` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from llm.decoding.engine import Engine
from llm.decoding.runs import generate_all
from llm.decoding.sampling import SamplingParams
from llm.model import GPTModel
from llm.prompts import clean_response, format_input, render_prompt
from llm.tokenizer import Tokenizer
from llm.training.data import Record, split_records

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "validation", "all")
RESPONSE_KEY = "model_response"

# The book's judge prompt (chapter 7, `generate_model_scores`), word for word.
JUDGE_PROMPT = (
    "Given the input `{input}` "
    "and correct output `{output}`, "
    "score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
JUDGE_SEED = 123  # as the book, for repeatable scores
JUDGE_TEMPERATURE = 0
OLLAMA_NUM_CTX = 2048  # the book's context for the judge; Ollama's own default is smaller
JudgeAPI = Literal["openai", "ollama"]
_SCORE = re.compile(r"\s*(\d{1,3})\s*")


class EvaluationError(Exception):
    """The data or the judge cannot be used; the message says what is wrong and what to do."""


# ---------------------------------------------------------------------------------------------------------- data


def select(records: Sequence[Record], split: str) -> list[Record]:
    """One part of the book's split (`llm.training.data.split_records`), or every record for ``"all"``."""
    if split == "all":
        return list(records)
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return getattr(split_records(records), split)


def load_responses(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A file `write_responses` (or the book) wrote: records with ``instruction``, ``output`` and ``model_response``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EvaluationError(f"cannot read {path}: {e.strerror or e}; check the path") from e
    except ValueError as e:  # not UTF-8, not JSON
        raise EvaluationError(f"{path} is not a JSON array of answered records ({e})") from e
    if not isinstance(data, list) or not data:
        raise EvaluationError(f"{path} is not a non-empty JSON array of answered records")
    wanted = ("instruction", "output", RESPONSE_KEY)
    for i, record in enumerate(data, start=1):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in wanted):
            raise EvaluationError(f"{path} record {i} lacks one of the text fields {', '.join(wanted)}")
        if not isinstance(record.get("input", ""), str):
            raise EvaluationError(f"{path} record {i}: 'input' must be text")
    return data


def responses_path(data_path: str | os.PathLike[str], split: str = "test") -> Path:
    """Where the answers go by default: beside the data, ``<stem>-with-response.json`` as the book names it for
    the test split; other splits put their name in (``<stem>-validation-with-response.json``) so that they
    never overwrite the test split's answers."""
    data_path = Path(data_path)
    part = "" if split == "test" else f"-{split}"
    return data_path.with_name(f"{data_path.stem}{part}-with-response.json")


def write_responses(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """The records as the book writes them (a JSON array, indent 4), written beside and renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(list(records), indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise EvaluationError(f"cannot write {path}: {e.strerror or e}; check the path and free space") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------- answering


def generate_responses(
    model: GPTModel,
    records: Sequence[Record],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    tokenizer: Tokenizer | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """The records as dicts with the model's greedy answer added under ``model_response``, in the same order."""
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    tokenizer = tokenizer or Tokenizer()
    params = SamplingParams(max_new_tokens=max_new_tokens)  # greedy, as the book; long prompts keep their end
    prompts = [tokenizer.encode(render_prompt(r.instruction, r.input)) for r in records]
    if not prompts:
        return []
    # The cache holds what the longest prompt and its answer need, not the whole context, for each row.
    longest = min(max(len(p) for p in prompts) + max_new_tokens, model.config.context_length)
    engine = Engine(model, tokenizer, max_batch=batch_size, max_len=longest)
    answered: list[dict[str, Any]] = []
    with tqdm(total=len(records), desc="answering", unit="record", disable=_disable(progress)) as bar:
        for start in range(0, len(records), batch_size):
            outputs = generate_all(engine, prompts[start : start + batch_size], params)
            for record, output in zip(records[start : start + batch_size], outputs, strict=True):
                answered.append({**asdict(record), RESPONSE_KEY: clean_response(tokenizer.decode(output.token_ids))})
            bar.update(len(outputs))
    return answered


# -------------------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class Judge:
    url: str  # the server's base URL (http://localhost:11434), or the full chat endpoint
    model: str  # the judge's model name on that server, e.g. "llama3"
    api: JudgeAPI = "ollama"
    api_key: str | None = None  # sent as a bearer token to OpenAI-compatible servers that want one
    timeout: float = 120.0  # seconds for one answer
    retries: int = 2  # extra tries after a server error (5xx, 429) or a dropped connection
    backoff: float = 1.0  # seconds before the first retry, doubled each time

    def __post_init__(self) -> None:
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "https"):
            raise EvaluationError(f"--judge-url must start with http:// or https://, got {self.url!r}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise EvaluationError(f"--judge-timeout must be a positive number of seconds, got {self.timeout}")

    @property
    def endpoint(self) -> str:
        path = "/v1/chat/completions" if self.api == "openai" else "/api/chat"
        base = self.url.rstrip("/")
        if base.endswith(path):
            return base
        if self.api == "openai" and base.endswith("/v1"):
            return base + "/chat/completions"
        return base + path

    def payload(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        if self.api == "openai":
            return {"model": self.model, "messages": messages, "temperature": JUDGE_TEMPERATURE, "seed": JUDGE_SEED}
        options = {"seed": JUDGE_SEED, "temperature": JUDGE_TEMPERATURE, "num_ctx": OLLAMA_NUM_CTX}
        return {"model": self.model, "messages": messages, "stream": False, "options": options}


@dataclass
class JudgeReport:
    scores: list[int | None] = field(default_factory=list)  # per record, None where the reply was not a score
    replies: list[str | None] = field(default_factory=list)  # the judge's raw replies (None: no answer)

    @property
    def scored(self) -> list[int]:
        return [s for s in self.scores if s is not None]

    @property
    def unscored(self) -> int:
        return sum(s is None for s in self.scores)

    @property
    def average(self) -> float | None:
        return sum(self.scored) / len(self.scored) if self.scored else None


def judge_prompt(record: dict[str, Any]) -> str:
    return JUDGE_PROMPT.format(
        input=format_input(record["instruction"], record.get("input", "")),
        output=record["output"],
        response=record[RESPONSE_KEY],
    )


def parse_score(reply: str) -> int | None:
    """The integer 0-100 the judge was asked for, or None (the book's ``int(score)``, with a range check)."""
    found = _SCORE.fullmatch(reply)
    if not found or not 0 <= int(found.group(1)) <= 100:
        return None
    return int(found.group(1))


def score_responses(records: Sequence[dict[str, Any]], judge: Judge, *, progress: bool | None = None) -> JudgeReport:
    """Ask ``judge`` to score every record's ``model_response``."""
    report = JudgeReport()
    for record in tqdm(records, desc="scoring", unit="record", disable=_disable(progress)):
        if not record[RESPONSE_KEY].strip():
            report.scores.append(0)
            report.replies.append(None)
            continue
        try:
            reply = query_judge(judge, judge_prompt(record))
        except _JudgeUnavailableError as e:
            log.warning("the judge gave no answer for %r: %s", record["instruction"][:60], e)
            report.scores.append(None)
            report.replies.append(None)
            continue
        score = parse_score(reply)
        if score is None:
            log.info("the judge's reply %r is not a score from 0 to 100", reply[:80])
        report.scores.append(score)
        report.replies.append(reply)
    return report


class _JudgeUnavailableError(Exception):
    """The judge failed on one request even after retries (server errors, timeouts): that record goes unscored."""


def query_judge(judge: Judge, prompt: str) -> str:
    """The judge's reply text. A server error is retried; a client error (wrong URL or model) stops everything."""
    body = json.dumps(judge.payload(prompt)).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if judge.api_key:
        headers["Authorization"] = f"Bearer {judge.api_key}"
    delay = judge.backoff
    for attempt in range(judge.retries + 1):
        request = urllib.request.Request(judge.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=judge.timeout) as response:
                return _reply_text(response.read().decode("utf-8"), judge)
        except urllib.error.HTTPError as e:
            detail = _error_detail(e.read().decode("utf-8", errors="replace"))
            e.close()
            if e.code < 500 and e.code not in (408, 429):
                raise EvaluationError(
                    f"the judge at {judge.endpoint} refused the request (HTTP {e.code}: {detail}); check "
                    f"--judge-url, --judge-api and that the model {judge.model!r} exists there"
                ) from None
            problem = f"HTTP {e.code}: {detail}"
        except urllib.error.URLError as e:
            if attempt == 0 and isinstance(e.reason, ConnectionRefusedError):
                raise EvaluationError(
                    f"nothing answers at {judge.endpoint} ({e.reason}); start the judge server or fix --judge-url"
                ) from None
            problem = str(e.reason)
        except (OSError, ValueError) as e:  # timeouts, resets; a reply that is not the API's JSON
            problem = str(e) or type(e).__name__
        if attempt < judge.retries:
            log.info("judge request failed (%s); retrying in %.1f s", problem, delay)
            time.sleep(delay)
            delay *= 2
    raise _JudgeUnavailableError(problem)


def _reply_text(text: str, judge: Judge) -> str:
    """The message content of an OpenAI or Ollama chat reply (Ollama may stream JSON lines even when asked not to)."""
    try:
        if judge.api == "openai":
            return str(json.loads(text)["choices"][0]["message"]["content"])
        return "".join(str(json.loads(line)["message"]["content"]) for line in text.splitlines() if line.strip())
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"the reply is not a {judge.api} chat response: {text[:120]!r}") from e


def _error_detail(body: str) -> str:
    """The message of an error reply on one line: Ollama's {"error": "..."}, OpenAI's {"error": {"message": ...}}."""
    try:
        error = json.loads(body).get("error", body)
        body = str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        pass  # not JSON: an HTML error page, say
    return " ".join(body.split())[:200]


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # tqdm: None hides the bar when not on a terminal
