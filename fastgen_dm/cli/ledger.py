"""``fastgen ledger STEP``: the samples each GPU trained on at one step, from a run's data ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from fastgen_dm.ledger import ignore_index_of, samples_at
from fastgen_dm.storage import write_atomic


def _ledger_dir_of(config: str) -> str:
    """``data.ledger_dir`` (or ``data.init_args.ledger_dir``) of a ``fastgen fit`` config."""
    with open(config) as f:
        data = (yaml.safe_load(f) or {}).get("data") or {}
    folder = data.get("ledger_dir") or (data.get("init_args") or {}).get("ledger_dir")
    if not folder:
        raise ValueError(f"{config} sets no data.ledger_dir: train with --data.ledger_dir DIR to keep a ledger")
    return str(folder)


def _name(sample: object) -> str:
    """``000012.tar/a/b/000871`` for a shard sample, the item index for a zip's."""
    if isinstance(sample, tuple):
        url, key = sample
        return f"{url.rsplit('/', 1)[-1]}/{key}"
    return str(sample)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fastgen ledger",
        description="Name the samples every GPU trained on at a global step, from the ledger a run with "
        "ledger_dir writes; optionally write them as an ignore index (shard datasets).",
        epilog="Example: fastgen ledger 1041 --config run.yaml --out spike.json   "
        "(then train with --data.ignore_index_paths '[\"spike.json\"]')",
    )
    parser.add_argument("step", type=int, help="the trainer's global step (as in the logs)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the fit config whose data.ledger_dir holds the ledger")
    where.add_argument("--dir", help="the ledger folder itself")
    parser.add_argument("--out", help="write the step's shard samples as an ignore index (JSON) here")
    args = parser.parse_args(argv)
    try:
        folder = args.dir or _ledger_dir_of(args.config)
        found = samples_at(folder, args.step)
        if not found:
            parser.exit(1, f"fastgen ledger: step {args.step} is not in the ledger {folder}\n")
        for rank in sorted(found):
            named = [_name(sample) for sample in found[rank]]
            print(f"rank {rank}: {len(named)} samples: {' '.join(named)}")
        if args.out:
            write_atomic(Path(args.out), json.dumps(ignore_index_of(found), indent=1).encode())
            print(f"wrote {args.out}")
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"fastgen ledger: error: {err}\n")
    return 0
