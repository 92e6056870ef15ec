"""``gitsieve learned``: list or forget learned BLOCK paths."""
from __future__ import annotations

import argparse
import json
import os
import sys

from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.learning import LearnedStore


# ----- gitsieve learned ------------------------------------------------------------------
def learned_main(argv: list[str] | None = None) -> int:
    """``gitsieve learned [--workspace DIR] [--config FILE] [--forget PATH | --all] [--json]``.

    Talks to the running debouncer (the single writer of the file); when gitsieve is not
    running, reads or edits the file itself.  Exit 0 ok, 1 nothing to forget, 2 bad input.
    """
    parser = argparse.ArgumentParser(prog="gitsieve learned",
                                     description="list or forget learned BLOCK paths")
    parser.add_argument("--workspace", default=os.environ.get("GITSIEVE_WORKSPACE"))
    parser.add_argument("--config", default=None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--forget", metavar="PATH", help="unlearn one path")
    group.add_argument("--all", action="store_true", help="unlearn every path")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.workspace, args.config)
    except config_mod.ConfigError as exc:
        print(f"gitsieve learned: {exc}", file=sys.stderr)
        return 2
    forgetting = args.all or args.forget is not None
    try:
        if "debouncer" not in control.known_actors(cfg):
            raise control.Unreachable("no debouncer control socket")
        if forgetting:
            reply = control.request(cfg, "debouncer", "forget",
                                    {"path": None if args.all else args.forget})
        else:
            reply = control.request(cfg, "debouncer", "learned")
        if not reply.ok:
            print(f"gitsieve learned: debouncer: {reply.error}", file=sys.stderr)
            return 2
        data, where = reply.data, "running debouncer"
    except control.Unreachable:
        store = LearnedStore(cfg.learned_file)
        paths = store.load()
        if forgetting:
            changed = bool(paths) if args.all else args.forget in paths
            if args.all:
                paths.clear()
            else:
                paths.pop(args.forget, None)
            if changed:
                store.save(paths)
            data = {"forgotten": changed}
        else:
            data = {"learned": [{"path": p, **e} for p, e in sorted(paths.items())],
                    "counting": {}}
        where = str(cfg.learned_file)
    if args.json:
        print(json.dumps({**data, "source": where}, indent=1))
    elif forgetting:
        print(("forgotten" if data.get("forgotten") else "nothing to forget")
              + f" ({where})")
    else:
        learned = data.get("learned", [])
        print(f"{len(learned)} learned path(s) ({where})")
        for entry in learned:
            print(f"  {entry['path']}  (writer: {entry.get('writer_cmdline') or '?'})")
    return 1 if forgetting and not data.get("forgotten") else 0
