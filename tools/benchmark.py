#!/usr/bin/env python
"""Side-by-side speed and memory of the multi-task model, in one run.

(a) inference latency of the one-pass model against a semantic-only, an instance-only and a
    depth-only model with the same backbone run one after the other (target: one pass at
    least 1.8x faster);
(b) training-step time (forward, backward, SGD step) with the point branch on against off
    (target: at most 15% overhead at 4096 points per image);
(c) peak memory of each: CUDA peak allocation during the timed steps on a GPU; on the
    CPU, the process's peak resident memory minus its resident memory before the model was
    built (model, optimizer state, activations, allocator caches; each measurement runs in
    a fresh subprocess so that peaks do not mix).

On a GPU, runs use bf16 autocast. Samples are real synthetic-scenes training samples,
resized to the stated resolution. Prints a table and writes JSON.

    python tools/benchmark.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \
        --height 384 --width 512 --output output/benchmark.json
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {
    # name: (overrides, mode)
    "one_pass": (["MODEL.POINT_HEAD.INFERENCE_ON", False], "inference"),
    "semantic_only": (
        [
            "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON",
            False,
            "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON",
            False,
            "MODEL.POINT_HEAD.ENABLED",
            False,
        ],
        "inference",
    ),
    "instance_only": (
        [
            "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON",
            False,
            "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON",
            False,
            "MODEL.POINT_HEAD.ENABLED",
            False,
        ],
        "inference",
    ),
    "depth_only": (
        [
            "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON",
            False,
            "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON",
            False,
            "MODEL.POINT_HEAD.ENABLED",
            False,
        ],
        "inference",
    ),
    "train_point_on": (["MODEL.POINT_HEAD.ENABLED", True], "train"),
    "train_point_off": (["MODEL.POINT_HEAD.ENABLED", False], "train"),
}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def run_variant(args, name):
    """Measure one variant in this process; returns a dict."""
    import torch

    import panoptic_curriculum  # noqa: F401  compat + datasets
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from panoptic_curriculum import load_config
    from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper

    overrides, mode = VARIANTS[name]
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    cfg = load_config(
        args.config_file,
        overrides
        + ["MODEL.DEVICE", device, "MODEL.POINT_HEAD.NUM_POINTS", args.num_points]
        + args.opts,
    )
    rss_before_model = _current_rss_mb()
    torch.manual_seed(0)
    model = build_model(cfg)
    if args.threads:
        torch.set_num_threads(args.threads)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[: args.batch_size]
    mapper = RGBDDatasetMapper(True, augmentations=[T.Resize((args.height, args.width))])
    batch = [mapper(d) for d in dicts]
    if mode == "inference":
        for x in batch:
            x.pop("instances", None)
        model.eval()
    else:
        model.train()
        optim = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else None

    def step():
        if autocast is not None:
            with autocast:
                out = model(batch)
        else:
            out = model(batch)
        if mode == "train":
            loss = sum(out.values())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        if device == "cuda":
            torch.cuda.synchronize()

    ctx = torch.no_grad() if mode == "inference" else EventStorage()
    with ctx:
        for _ in range(args.warmup):
            step()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    times.sort()
    peak = (
        (torch.cuda.max_memory_allocated() - base) / 2**20
        if device == "cuda"
        else _peak_rss_mb() - rss_before_model
    )
    return {
        "variant": name,
        "mode": mode,
        "device": device,
        "median_s": times[len(times) // 2],
        "mean_s": sum(times) / len(times),
        "peak_mem_mb": peak,
        "peak_mem_kind": "cuda_alloc" if device == "cuda" else "rss_above_pre_model",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synthetic/curriculum_R18_FPN.yaml")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-points", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even with a GPU")
    parser.add_argument("--output", default="output/benchmark.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args, args.worker)), flush=True)
        return

    results = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", name] + [
            a for a in sys.argv[1:] if a != "--worker"
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"benchmark variant {name} failed (exit {proc.returncode})")
        results[name] = json.loads(lines[-1][len("RESULT ") :])
        print(f"measured {name}: {results[name]['median_s'] * 1000:.1f} ms", file=sys.stderr)

    seq = sum(results[k]["median_s"] for k in ("semantic_only", "instance_only", "depth_only"))
    speedup = seq / results["one_pass"]["median_s"]
    overhead = results["train_point_on"]["median_s"] / results["train_point_off"]["median_s"] - 1
    device = results["one_pass"]["device"]
    header = (
        f"device={device}  resolution={args.height}x{args.width}  batch={args.batch_size}  "
        f"points/image={args.num_points}  config={args.config_file}"
    )
    rows = [f"{'variant':<18}{'mode':<11}{'median ms':>11}{'peak MB':>10}{'params M':>10}"]
    for r in results.values():
        rows.append(
            f"{r['variant']:<18}{r['mode']:<11}{r['median_s'] * 1000:>11.1f}"
            f"{r['peak_mem_mb']:>10.0f}{r['params_m']:>10.2f}"
        )
    rows.append(
        f"(a) one pass vs semantic+instance+depth one after the other: {speedup:.2f}x "
        f"faster (target >= 1.8x) {'PASS' if speedup >= 1.8 else 'MISS'}"
    )
    rows.append(
        f"(b) training step, point branch on vs off: {overhead * 100:+.1f}% "
        f"(target <= +15%) {'PASS' if overhead <= 0.15 else 'MISS'}"
    )
    rows.append(f"(c) peak memory: {results['one_pass']['peak_mem_kind']} per variant above")
    print(header)
    print("\n".join(rows))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "setting": header,
                "results": results,
                "one_pass_speedup": speedup,
                "point_branch_overhead": overhead,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
