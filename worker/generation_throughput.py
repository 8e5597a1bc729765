"""Images per second of the generation worker's sampler at several concurrencies, in process (no HTTP).

    python -m worker.generation_throughput --model DIR --size 1024x1024 --steps 50 --concurrency 1,4,8

For each concurrency n: n one-image requests as continuous batching serves them (one batched call of n
images, distinct prompts and seeds) against the same n run one at a time. The resident host is the
worker's own (`O1LORA_GENERATE_COMPILE`, `O1LORA_CFG_SPLIT_PIXELS`, `O1LORA_LORA_MAX_RANK` apply), warmed
up at the size first so no compile is timed. Through the service, the same comparison is n concurrent
POST /v1/generations with `O1LORA_GENERATE_MAX_BATCH` >= n against `O1LORA_GENERATE_MAX_BATCH=1`.
"""

from __future__ import annotations

import argparse
import json
import time

from worker.model_host import ModelHost, _sync, parse_sizes

PROMPTS = [
    "a red fox in fresh snow, morning light",
    "a bowl of ramen on a wooden table, steam rising",
    "an old lighthouse on a cliff during a storm",
    "a watercolor map of an imaginary island",
    "a close-up portrait of an astronaut, reflections in the visor",
    "a tiny robot watering plants",
    "a neon-lit street market at night in the rain",
    "a stack of pancakes with blueberries and syrup",
]


def throughput(host: ModelHost, n: int, width: int, height: int, steps: int = 50) -> dict:
    """{"batched_images_per_s", "sequential_images_per_s", "speedup"} for n one-image requests."""
    from core.sampler import ImageSpec

    specs = [ImageSpec(PROMPTS[i % len(PROMPTS)], " ", i) for i in range(n)]
    sampler = host.sampler

    def timed(batches) -> float:
        t = time.perf_counter()
        for b in batches:
            sampler.sample(b, width=width, height=height, steps=steps, return_latents=True)
        _sync(host.model())
        return time.perf_counter() - t

    with host.lock:
        sampler.sample(specs, width=width, height=height, steps=2, return_latents=True)  # compile the n-batch
        batched = timed([specs])
        one_by_one = timed([[s] for s in specs])
    return {
        "n": n,
        "batched_images_per_s": n / batched,
        "sequential_images_per_s": n / one_by_one,
        "speedup": one_by_one / batched,
    }


def main(argv=None) -> list[dict]:
    from service.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", default="1024x1024")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--concurrency", default="1,4,8")
    args = ap.parse_args(argv)
    s = get_settings()
    ((w, h),) = parse_sizes(args.size)
    host = ModelHost(
        args.model,
        s.lora_cache_size,
        compile=s.generate_compile,
        cuda_graphs=s.generate_cuda_graphs,
        lora_max_rank=s.lora_max_rank,
        cfg_split_pixels=s.cfg_split_pixels,
    )
    print(json.dumps({"warm_up_s": host.warm_up([(w, h)])}), flush=True)
    rows = []
    for n in (int(x) for x in args.concurrency.split(",")):
        rows.append(throughput(host, n, w, h, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
