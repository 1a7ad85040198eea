"""``scratchbot generate``: one answer from a checkpoint, streamed to the terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable

from bot.cli.common import (
    UserError,
    add_checkpoint_option,
    add_runtime_options,
    answer_length,
    load_model,
    settings_for,
)

log = logging.getLogger(__name__)


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint", description=cmd_generate.__doc__)
    p.add_argument("prompt", help="the instruction (or, with --raw, the whole prompt); '-' reads standard input")
    add_checkpoint_option(p, "default: what `scratchbot run` serves (SCRATCHBOT_CHECKPOINT, ...)")
    p.add_argument("--raw", action="store_true", help="send PROMPT as it is, without the Alpaca template")
    p.add_argument("--input", default="", help="the Input section of the Alpaca template")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: SCRATCHBOT_MAX_NEW_TOKENS (256)")
    p.add_argument("--temperature", type=float, default=None, help="0 is greedy; default: SCRATCHBOT_TEMPERATURE (0)")
    p.add_argument("--top-k", type=int, default=None, help="default: SCRATCHBOT_TOP_K (off)")
    p.add_argument("--top-p", type=float, default=None, help="default: SCRATCHBOT_TOP_P (off)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--no-truncate", action="store_true", help="refuse a prompt too long for the context")
    add_runtime_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate an answer. Without --raw, PROMPT is the instruction of a chapter-7 Alpaca prompt and only the
    response is printed. Text streams to the terminal as it is generated. Unset options come from the settings
    (SCRATCHBOT_*, as `scratchbot run` reads them)."""
    from llm.decoding.engine import Engine
    from llm.decoding.runs import TextStream
    from llm.decoding.sampling import SamplingParams, fit_prompt
    from llm.prompts import RESPONSE_STOPS, clean_response, render_prompt
    from llm.tokenizer import Tokenizer

    settings = settings_for(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model = load_model(settings, args.n_heads)
    try:
        params = SamplingParams(
            max_new_tokens=answer_length(settings, args, model.config.context_length, raw=args.raw),
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            seed=args.seed,
            stop=tuple(args.stop) + (() if args.raw else RESPONSE_STOPS),
            overflow="error" if args.no_truncate else "truncate",
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if params.temperature == 0 and (params.top_k is not None or params.top_p is not None):
        print("note: top-k and top-p shape sampling; at temperature 0 the answer is greedy and they do nothing. "
              "Give --temperature above 0 to sample.", file=sys.stderr)  # fmt: skip
    tokenizer = Tokenizer()
    text = prompt if args.raw else render_prompt(prompt, args.input)
    ids, _ = fit_prompt(tokenizer.encode(text), model.config.context_length, params)
    budget = min(params.max_new_tokens, model.config.context_length - len(ids))
    # One row, as long as this prompt and its answer: the cache of a whole context would be memory for nothing.
    engine = Engine(model, tokenizer, max_batch=1, max_len=len(ids) + budget)
    stream = TextStream(engine, tokenizer.encode(text), params)
    if args.json:
        for _ in stream:
            pass
    else:
        _print_stream(stream, strip=not args.raw)
    result = stream.result
    if result.truncated_tokens:
        print(f"note: the prompt was cut by {result.truncated_tokens} tokens to fit the context", file=sys.stderr)
    if args.json:
        out = {
            "text": result.text if args.raw else clean_response(result.text),
            "token_ids": result.token_ids,
            "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens,
            "seconds": round(result.seconds, 4),
            "tokens_per_second": round(result.tokens_per_second, 2),
            "finish_reason": result.finish_reason,
            "truncated_prompt_tokens": result.truncated_tokens,
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(
            f"[{result.new_tokens} tokens in {result.seconds:.2f} s, {result.tokens_per_second:.1f} tokens/s, "
            f"{result.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def _print_stream(stream: Iterable[str], strip: bool) -> None:
    started = not strip
    for delta in stream:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
