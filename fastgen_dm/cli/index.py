"""``fastgen index 'WDS:<location>' ...``: per-shard sample counts and byte offsets for epoch mode."""

from __future__ import annotations

import argparse
import json
import posixpath

from fastgen_dm.index.datatags import INDEX_NAME
from fastgen_dm.index.build import index_shards
from fastgen_dm.index.store import load_index, save_index
from fastgen_dm.storage import exists, list_shards, open_url, parse_datatag


def _index_location(tag: str, threads: int, processes: int | None, storage_options: dict, sizes_of: str | None) -> None:
    location = parse_datatag(tag)
    files = list_shards(location, storage_options, tag)
    path = f"{location}/{INDEX_NAME}"
    previous = load_index(path, storage_options) if exists(path, storage_options) else None
    shards = index_shards(
        [f.url for f in files], storage_options, num_threads=threads, previous=previous, partial_ok=True, num_processes=processes,
        sizes_of=sizes_of,
    )
    for shard in shards:
        if shard.truncated_at is not None:
            print(f"warning: {shard.url} is damaged at byte {shard.truncated_at}; indexed its {shard.count} samples before that")
    save_index(path, shards, storage_options)
    counts = {posixpath.basename(s.url): s.count for s in shards}
    with open_url(f"{location}/shard_counts.json", "wb", storage_options) as f:
        f.write(json.dumps(counts, indent=1).encode())
    reused = sum(1 for s in shards if previous and s.url in previous)
    sized = f", sizes of {sizes_of!r}" if sizes_of else ""
    print(f"{tag}: {len(shards)} shards, {sum(counts.values())} samples{sized} ({reused} shards unchanged) -> {path}, shard_counts.json")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fastgen index",
        description="Read the member headers of every shard (in parallel, seeking over the data) and write "
        f"<location>/{INDEX_NAME} (sample keys and byte ranges, what epoch mode reads by) and "
        "<location>/shard_counts.json (FastGen's shard_count_file). Incremental: unchanged shards are reused.",
        epilog="Example: fastgen index 'WDS:s3://bucket/latents' --storage-options '{\"anon\": false}'",
    )
    parser.add_argument("datatags", nargs="+", metavar="DATATAG", help="'WDS:<folder or URL of .tar shards>'")
    parser.add_argument("--threads", type=int, default=16, help="remote shards read at once (default: 16)")
    parser.add_argument("--processes", type=int, default=None, help="processes parsing local shards (default: one per core)")
    parser.add_argument(
        "--sizes", default=None, metavar="SUFFIX",
        help="also record each sample's size from the header of its SUFFIX member, what buckets need: "
        "an image's (width, height) (e.g. jpg), a video's or a tensor's (width, height, frames) (e.g. mp4, latent.pth, npy)",
    )
    parser.add_argument("--storage-options", type=json.loads, default={}, help="fsspec options as JSON (endpoint, credentials)")
    args = parser.parse_args(argv)
    try:
        for tag in args.datatags:
            _index_location(tag, args.threads, args.processes, args.storage_options, args.sizes)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"fastgen index: error: {err}\n")
    return 0
