"""Requests per epoch at simulated scale, from the plan alone (no data, no I/O).

For a dataset of N samples of a given size in shards of a given count, read by W GPUs with a
per-GPU batch, this samples batches of the epoch plan (``SamplePlan.batch_positions`` and
``ShardOrder.locate``, what every reader runs), groups each batch into runs of neighbouring
samples (``sample_runs``: one request each) and extrapolates to the epoch. It prints requests per
epoch, bytes per request, distinct shards per batch and the GET rate the whole job sends at a
given step rate, beside a whole-shard streaming reader (webdataset) reading 8 MiB per request.

The block size is the one ``WDSDataModule`` picks (``read_block_bytes`` 2 MiB, ``shuffle_size``
1000, at most half a batch), computed here by the same rule.

Example (a few seconds):

    python benchmarks/bench_requests.py --samples 1e8 --sample-kb 72 --per-shard 10000 --gpus 64 --batch 32
"""

from __future__ import annotations

import argparse

import numpy as np

from fastgen_dm.plan import SamplePlan, ShardOrder, sample_runs

STREAM_REQUEST_BYTES = 8 << 20  # webdataset reading a shard in order through fsspec


def block_for(batch: int, sample_bytes: float, per_shard: int, read_block_bytes: int = 2 << 20, shuffle_size: int = 1000) -> int:
    like_buffer = int(batch * per_shard / (per_shard + 2 * shuffle_size))
    return max(1, min(int(read_block_bytes // sample_bytes), batch // 2, like_buffer))


def simulate(samples: int, sample_kb: float, per_shard: int, gpus: int, batch: int, probes: int, seed: int = 0) -> dict[str, float]:
    sample_bytes = sample_kb * 1024
    shards = -(-samples // per_shard)
    counts = np.full(shards, per_shard, dtype=np.int64)
    counts[-1] = samples - per_shard * (shards - 1)
    block = block_for(batch, sample_bytes, per_shard)
    order = ShardOrder(counts, seed=seed, epoch=0, block=block, interleave=64, mix=batch)
    plan = SamplePlan(samples, batch, gpus, seed=seed)
    rng = np.random.default_rng(seed)
    runs, distinct = [], []
    for _ in range(probes):
        rank, step = int(rng.integers(gpus)), int(rng.integers(plan.num_steps))
        shard, local = order.locate(plan.batch_positions(rank, step))
        runs.append(len(sample_runs(shard, local)))
        distinct.append(len(np.unique(shard)))
    batches = plan.num_steps * gpus
    requests = float(np.mean(runs)) * batches
    return {
        "block": block,
        "requests": requests,
        "bytes_per_request": samples * sample_bytes / requests,
        "shards_per_batch": float(np.mean(distinct)),
        "stream_requests": samples * sample_bytes / STREAM_REQUEST_BYTES,
        "steps": plan.num_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=float, default=1e8)
    parser.add_argument("--sample-kb", default="72,3072,61440", help="sample sizes in KB, comma-separated (default: latents, video latents, clips)")
    parser.add_argument("--per-shard", default="10000,300,16", help="samples per shard for each sample size")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--batch", default="32,2,1", help="per-GPU batch for each sample size")
    parser.add_argument("--steps-per-s", default="8,2,1", help="training steps per second for each sample size (for the GET rate)")
    parser.add_argument("--probes", type=int, default=2000, help="batches sampled per configuration")
    args = parser.parse_args()
    samples = int(args.samples)
    rows = zip(*(map(float, a.split(",")) for a in (args.sample_kb, args.per_shard, args.batch, args.steps_per_s)))
    print(f"{samples:.0e} samples, {args.gpus} GPUs; requests from {args.probes} sampled batches of the plan")
    print(f"   {'sample':>8} {'batch':>5} {'block':>5} {'shards/batch':>12} {'requests/epoch':>15} {'KB/request':>10} {'GET/s (job)':>11} {'stream requests':>15}")
    for kb, per_shard, batch, steps_per_s in rows:
        r = simulate(samples, kb, int(per_shard), args.gpus, int(batch), args.probes)
        rate = r["requests"] / r["steps"] * steps_per_s
        print(
            f"   {kb:>6.0f}KB {int(batch):>5} {r['block']:>5} {r['shards_per_batch']:>12.2f} {r['requests']:>15.3e} "
            f"{r['bytes_per_request'] / 1024:>10.0f} {rate:>11.0f} {r['stream_requests']:>15.3e}"
        )


if __name__ == "__main__":
    main()
