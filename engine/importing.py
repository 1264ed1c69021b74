"""``zarrl import generations FILE... --buffer PATH``: its arguments and handler.

The import itself is ``zarrl.buffers.generations.import_generations``; this module parses the
command line and prints what was imported and skipped (with each skipped record's file, line
or row, field and reason). Building the parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_import_parser", "main_import"]

SHOWN_PROBLEMS = 50
"""Bad records printed one per line; the rest are counted."""


def add_import_parser(sub) -> argparse.ArgumentParser:
    """Registers ``import generations`` on the ``zarrl`` command's subparsers."""
    p = sub.add_parser("import", help="import logged data into a Zarr buffer (generations)")
    kinds = p.add_subparsers(dest="kind", required=True, parser_class=type(p))
    g = kinds.add_parser(
        "generations",
        help="logged completions (token ids, log-probs, rewards) from .jsonl, .parquet or a "
        "saved datasets folder",
    )
    g.add_argument("files", nargs="+", metavar="FILE", help=".jsonl, .parquet or datasets folder")
    g.add_argument("--buffer", required=True, help="the generations buffer (created if absent)")
    g.add_argument("--vocab-size", type=int, help="vocabulary size (needed for a new buffer)")
    g.add_argument("--eos-id", type=int, help="end token id (needed for a new buffer)")
    g.add_argument("--max-new-tokens", type=int, help="length limit of the completions")
    g.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="fail: a bad record imports nothing (default); skip: import the rest",
    )
    g.add_argument(
        "--field-map",
        default=None,
        metavar="OLD=NEW,...",
        help="rename fields onto the schema's, e.g. 'scores=reward' or the preset 'trl' "
        "(TRL's names and OpenAI/vLLM responses are recognised without it)",
    )
    g.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="import a file this buffer already holds (same xxh3_128 hash) again",
    )
    g.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of a store URL's store (--buffer s3://...), e.g. endpoint_url=...",
    )
    p.set_defaults(handler=main_import)
    return p


def _print_problems(problems, out) -> None:
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"  {problem}", file=out)
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(problems) - SHOWN_PROBLEMS} more", file=out)


def main_import(args: argparse.Namespace) -> int:
    """Handler of ``zarrl import generations``; exit 0 when the import committed (or had
    nothing to commit), 1 when it was refused (nothing committed), 2 for bad arguments."""
    from zarrl.buffers.errors import StoreFormatError
    from zarrl.buffers.generations import GenerationsImportError, import_generations
    from zarrl.engine.config import ConfigError
    from zarrl.engine.ray_collect import parse_storage_options

    try:
        options = parse_storage_options(args.storage_option)
    except ConfigError as err:
        print(f"zarrl import generations: error: {err}", file=sys.stderr)
        return 2
    try:
        report = import_generations(
            args.files,
            args.buffer,
            vocab_size=args.vocab_size,
            eos_id=args.eos_id,
            max_new_tokens=args.max_new_tokens,
            on_error=args.on_error,
            field_map=args.field_map,
            allow_duplicate=args.allow_duplicate,
            storage_options=options,
        )
    except GenerationsImportError as err:
        print(f"zarrl import generations: error: {err}", file=sys.stderr)
        _print_problems(err.problems, sys.stderr)
        return 1
    except ModuleNotFoundError as err:
        print(
            f"zarrl import generations: error: {err.name} is not installed; "
            "pip install 'zarrl[generations]' (Parquet and datasets folders need it)",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, StoreFormatError) as err:
        print(f"zarrl import generations: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"zarrl import generations: error: {err}", file=sys.stderr)
        return 2
    for f in report.files:
        print(f"{f.path}: {f.records} records imported ({f.tokens} tokens), {f.skipped} skipped")
    if report.problems:
        print(f"skipped {report.skipped} bad record(s):")
        _print_problems(report.problems, sys.stdout)
    if report.import_id is None:
        print(f"nothing imported into {args.buffer}")
    else:
        print(
            f"imported {report.completions} completions ({report.tokens} tokens, "
            f"{report.new_prompts} new prompts) into {args.buffer} as import {report.import_id}"
        )
    return 0
