"""``scratchbot download`` and ``scratchbot evaluate``: getting real weights and measuring a model, as in the book.

Registered in `bot.cli.main.COMMANDS`. Like the rest of the command line: parse, call library code, and turn what the
user can fix into one line (`bot.cli.common.UserError`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli.common import UserError, add_n_heads_option, add_runtime_options, answer_length, load_model, settings_for

if TYPE_CHECKING:
    from llm.training.evaluate import JudgeReport

log = logging.getLogger(__name__)

JUDGE_API_KEY_ENV = "SCRATCHBOT_JUDGE_API_KEY"  # a setting: a key on the command line would land in the shell history
EVAL_SPLITS = ("test", "validation", "train", "all")  # llm.evaluate.SPLITS, without importing torch for --help
MAX_EVAL_BATCH = 64  # more buys no speed on CPU and can exhaust a GPU's memory on long answers


# ---------------------------------------------------------------------------------------------------------------
# download


def add_download(sub: argparse._SubParsersAction) -> None:
    from llm.checkpoints.download import BOOK_MIRROR_URL, MODEL_SIZES, OPENAI_BASE_URL

    p = sub.add_parser(
        "download",
        help="download OpenAI's GPT-2 weights and convert them to safetensors",
        description=cmd_download.__doc__,
    )
    p.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(MODEL_SIZES)}")
    p.add_argument("--dir", required=True, type=Path, help="where files go: DIR/124M/... and DIR/MODEL.safetensors")
    p.add_argument(
        "--base-url",
        action="append",
        default=None,
        metavar="URL",
        help=f"a mirror with the files under URL/124M/... (repeatable, tried in order; default: {OPENAI_BASE_URL}, "
        f"then the book's mirror {BOOK_MIRROR_URL})",
    )
    p.add_argument("--delete-original", action="store_true", help="delete the TensorFlow files after converting")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    """Download GPT-2 from OpenAI's public URLs (with the book's backup mirror), resuming a partial download and
    checking sizes and hashes, then convert it to this project's safetensors format. The original TensorFlow files
    stay in DIR/<size>/ (the layout of the book's gpt_download.py) unless --delete-original is given."""
    from llm.checkpoints.download import DEFAULT_BASE_URLS, DownloadError, download_gpt2
    from llm.checkpoints.tf_bundle import TFCheckpointError

    try:
        path = download_gpt2(
            args.model,
            args.dir,
            base_urls=args.base_url or DEFAULT_BASE_URLS,
            keep_original=not args.delete_original,
            progress=False if args.quiet else None,
        )
    except (DownloadError, TFCheckpointError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="answer the test split and optionally score it with a judge model",
                       description=cmd_evaluate.__doc__)  # fmt: skip
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", type=Path, help="the model to evaluate (file or Hugging Face directory); default: what "
        "`scratchbot run` serves (SCRATCHBOT_CHECKPOINT, ...)",
    )  # fmt: skip
    source.add_argument("--responses", type=Path, help="score an existing *-with-response.json instead")
    add_n_heads_option(p)
    p.add_argument("--data", type=Path, help="Alpaca-style JSON or JSON lines (default: the bundled chapter-7 data)")
    p.add_argument("--split", default="test", choices=EVAL_SPLITS, help="which part of the book's 85/10/5 split")
    p.add_argument("--out", type=Path, help="default: <data name>[-<split>]-with-response.json beside --data, or here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: SCRATCHBOT_MAX_NEW_TOKENS (256)")
    add_runtime_options(p)
    judge = p.add_argument_group("judge", f"score each answer 0-100 (an API key, if needed, from ${JUDGE_API_KEY_ENV})")
    judge.add_argument("--judge-url", help="e.g. http://localhost:11434 (Ollama) or http://localhost:8000 (vLLM)")
    judge.add_argument("--judge-model", help="the judge's model name on that server, e.g. llama3")
    judge.add_argument("--judge-api", default="ollama", choices=("openai", "ollama"))
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per answer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Generate the model's answers for the test split of the book's split (85% train, 10% test, the rest
    validation, in file order) of --data (default: the bundled chapter-7 data) and write them beside it as
    <name>-with-response.json (for the bundled data: in the current directory), the shape of the book's
    instruction-data-with-response.json. With --judge-url and --judge-model, a judge model behind an Ollama or
    OpenAI-compatible endpoint scores each answer from 0 to 100 with the book's prompt (temperature 0, seed 123),
    and the average is printed."""
    from llm.assets import INSTRUCTION_DATA
    from llm.training.data import DataError, load_records
    from llm.training.evaluate import (
        EvaluationError,
        Judge,
        generate_responses,
        load_responses,
        responses_path,
        score_responses,
        select,
        write_responses,
    )

    if bool(args.judge_url) != bool(args.judge_model):
        raise UserError("give both --judge-url and --judge-model to score the answers, or neither")
    if args.responses and not args.judge_url:
        raise UserError("--responses scores answers already written; give --judge-url and --judge-model too")
    if not 1 <= args.batch_size <= MAX_EVAL_BATCH or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise UserError(f"--batch-size must be 1..{MAX_EVAL_BATCH} and --max-new-tokens at least 1")
    settings = settings_for(args)
    progress = False if args.quiet else None
    try:
        # Built first so that a bad judge URL or timeout is refused before minutes of generation.
        judge = None
        if args.judge_url:
            judge = Judge(
                url=args.judge_url,
                model=args.judge_model,
                api=args.judge_api,
                api_key=settings.judge_api_key.get_secret_value() if settings.judge_api_key else None,
                timeout=args.judge_timeout,
            )
        if args.responses:
            records = load_responses(args.responses)
        else:
            data = args.data or INSTRUCTION_DATA
            chosen = select(load_records(data), args.split)
            if not chosen:
                raise UserError(f"the {args.split} split of {data} is empty; it needs more records")
            model = load_model(settings, args.n_heads)
            max_new_tokens = answer_length(settings, args, model.config.context_length)
            records = generate_responses(
                model, chosen, batch_size=args.batch_size, max_new_tokens=max_new_tokens, progress=progress
            )
            # Beside the user's data, as the book does; the bundled data's folder is the installed package: not there.
            default_out = responses_path(data, args.split)
            out = write_responses(records, args.out or (default_out if args.data else Path(default_out.name)))
            print(f"wrote {len(records)} responses to {out}")
        if judge is not None:
            report = score_responses(records, judge, progress=progress)
            _print_scores(report, len(records), args.judge_model)
    except (EvaluationError, DataError) as e:
        raise UserError(str(e)) from None
    return 0


def _print_scores(report: JudgeReport, total: int, judge_model: str) -> None:
    if report.average is None:
        print(f"judge {judge_model}: no response could be scored ({report.unscored} of {total})")
        return
    print(
        f"judge {judge_model}: average score {report.average:.2f} / 100 over {len(report.scored)} of {total} "
        f"responses; {report.unscored} could not be scored"
    )
