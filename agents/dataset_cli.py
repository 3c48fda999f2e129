"""The ``ltc-control dataset`` command: ``summary`` of a dataset folder, ``collect`` of demonstrations and
``export`` to another format (Minari, :mod:`ltc_control.agents.minari_io`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ltc_control.agents.collection import CollectConfig, collect
from ltc_control.agents.datasets import DatasetError, format_summary, summarize_dataset
from ltc_control.agents.episode import check_env
from ltc_control.config import make_parser, parse_args_and_config
from ltc_control.errors import ExpectedError, one_line
from ltc_control.outputs import claim_output

__all__ = ["dataset_main"]


def dataset_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control dataset {summary,collect,export}``.

    ``summary DIR [--verify]`` prints the contents of a dataset; ``collect --out DIR [--config YAML]
    [--set key=value ...] [--<field> value ...] [--resume]`` collects noisy-expert demonstrations with the
    options of :class:`CollectConfig`; ``export DIR --format minari --name ID`` writes the dataset as a local
    Minari dataset (:func:`ltc_control.agents.minari_io.export_main`).

    Returns:
        The exit code (0 on success, 2 on an expected error, 130 when interrupted).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: ltc-control dataset {summary,collect,export} ...\n\n"
            "  summary DIR [--verify]        print episodes, roads, steps and label statistics\n"
            "  collect --out DIR [options]   collect noisy-expert demonstrations (see 'collect --help')\n"
            "  export DIR --format minari --name ID   write DIR as a Minari dataset (see 'export --help')"
        )
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "summary":
        parser = argparse.ArgumentParser(prog="ltc-control dataset summary")
        parser.add_argument("dir", type=Path, help="dataset folder (holds manifest.json)")
        parser.add_argument("--verify", action="store_true", help="read every chunk and check its checksum")
        ns = parser.parse_args(rest)
        try:
            print(format_summary(summarize_dataset(ns.dir, verify=ns.verify)))
        except DatasetError as exc:
            print(f"ltc-control dataset: error: {one_line(exc)}", file=sys.stderr)
            return 2
        return 0
    if cmd == "collect":
        parser = make_parser(CollectConfig, prog="ltc-control dataset collect")
        parser.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
        parser.add_argument(
            "--resume", action="store_true", help="continue an existing dataset, skipping finished episodes"
        )
        parser.add_argument(
            "--overwrite", action="store_true", help="delete what the --out folder holds and collect anew"
        )
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        cfg, ns = parse_args_and_config(CollectConfig, rest, parser)
        try:
            check_env(cfg.env.id, cfg.env.kwargs, what="env (--env / --set env.kwargs=...)")
            with claim_output(ns.out, overwrite=ns.overwrite, resume=ns.resume):
                stats = collect(ns.out, cfg, resume=True, progress=not ns.no_progress)
            print(f"collected {stats['new_episodes']} episodes ({stats['skipped']} already there)")
            print(format_summary(summarize_dataset(ns.out)))
        except ExpectedError as exc:
            print(f"ltc-control dataset: error: {one_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "\ninterrupted: the finished chunks are kept; continue with the same options and --resume",
                file=sys.stderr,
            )
            return 130
        return 0
    if cmd == "export":
        from ltc_control.agents.minari_io import export_main

        return export_main(rest)
    valid = "summary, collect, export"
    print(f"ltc-control dataset: unknown sub-command {cmd!r}; valid: {valid}", file=sys.stderr)
    return 2
