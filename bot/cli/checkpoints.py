"""``scratchbot convert``, ``inspect`` and ``init-model``: checkpoints between formats, looked into, made up."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bot.cli.common import UserError, add_n_heads_option, refuse_overwrite

log = logging.getLogger(__name__)


def add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--format", required=True, choices=("book", "safetensors", "hf"))
    add_n_heads_option(p)
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("inspect", help="show a checkpoint's format, config, size and sha256")
    p.add_argument("path", type=Path)
    add_n_heads_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("init-model", help="write a randomly initialised model (for trying things and benchmarks)")
    p.add_argument("preset", help="gpt2-small, gpt2-medium, gpt2-large or gpt2-xl")
    p.add_argument("dst", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="safetensors", choices=("book", "safetensors", "hf"))
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=cmd_init_model)


def cmd_convert(args: argparse.Namespace) -> int:
    from llm.checkpoints.save import convert_checkpoint, written_paths

    if args.src.resolve() in {path.resolve() for path in written_paths(args.dst, args.format)} | {args.dst.resolve()}:
        raise UserError(f"{args.dst} is the checkpoint being converted; write the converted one somewhere else")
    refuse_overwrite(args.dst, args.format, args.force)
    convert_checkpoint(args.src, args.dst, args.format, n_heads=args.n_heads)
    print(f"wrote {args.dst} ({args.format})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from llm.checkpoints.load import inspect_checkpoint

    info = inspect_checkpoint(args.path, n_heads=args.n_heads)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_init_model(args: argparse.Namespace) -> int:
    from llm.checkpoints.save import save_checkpoint
    from llm.config import GPTConfig
    from llm.model import GPTModel

    config = GPTConfig.from_name(args.preset)
    refuse_overwrite(args.dst, args.format, args.force)
    model = GPTModel(config).init_weights(args.seed)
    save_checkpoint(model, args.dst, format=args.format, metadata={"origin": f"random init, seed {args.seed}"})
    print(f"wrote {args.dst}: {args.preset}, {model.num_parameters:,} parameters, random weights (seed {args.seed})")
    return 0
