#!/usr/bin/env python
"""Side-by-side speed, memory and arithmetic throughput of the multi-task model, in one run.

(a) inference latency of the one-pass model against a semantic-only, an instance-only and a
    depth-only model with the same backbone run one after the other (target: one pass at
    least 1.8x faster);
(b) training-step time (forward, backward, SGD step) with the point branch on against off
    (target: at most 15% overhead at 4096 points per image);
(b') the same two training steps timed interleaved in one process (variant
    ``point_cost``; the off model holds the on model's weights): the ratio (b) reads from
    two separate processes moves with the machine's speed between them, this one does not;
(c) peak memory of each: CUDA peak allocation during the timed steps on a GPU; on the
    CPU, the process's peak resident memory minus its resident memory before the model was
    built (each variant runs in a fresh subprocess so that peaks do not mix);
(d) our one pass (which also returns depth) against detectron2's stock PanopticFPN on the
    same encoder config with the same detection budget, timed interleaved in one process
    (target: at most 1.0x PanopticFPN's time);
(e) variant ``train_options``: a training step of the config against the same config with
    ``--compare "KEY VALUE ..."`` on top, timed interleaved in one process, optionally at a
    trained checkpoint's cost (``--weights``; give a curriculum stage's ``config.yaml`` as
    ``--config-file`` to time that stage, frozen encoder included): how a change meant to
    make training cheaper is measured before it is trained with;
and, for every timed variant, multiply-adds per image and the achieved GFLOP/s (2 FLOPs per
multiply-add) next to the GFLOP/s a large matrix product reaches on the same device, so
that speed can be read against the machine's arithmetic limit.

On a GPU, runs use bf16 autocast. Samples are real synthetic-scenes training samples,
resized to the stated resolution. Prints a table and writes JSON. The measuring code is in
``panoptic_curriculum.utils.benchmark``.

    python tools/benchmark.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --height 384 --width 512 --output output/benchmark.json
    python tools/benchmark.py --variants vs_panoptic_fpn --peer-iters 15   # (d) only
    python tools/benchmark.py --variants point_cost --height 160 --width 224 \\
        --batch-size 4 --num-points 2048   # (b') only, at the main job's training shape
    python tools/benchmark.py --variants train_options --height 160 --width 224 \\
        --batch-size 4 --config-file output/curriculum/instance/config.yaml \\
        --weights output/curriculum/instance/model_final.pth \\
        --compare "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 64"   # (e) only
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

PEER = "vs_panoptic_fpn"
POINT_COST = "point_cost"
OPTIONS = "train_options"


def parse_args(argv=None) -> argparse.Namespace:
    from panoptic_curriculum.utils.benchmark import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synthetic/curriculum_R18_FPN.yaml")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-points", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peer-batch-size", type=int, default=1, help="batch of (d)")
    parser.add_argument("--peer-iters", type=int, default=10, help="timed rounds of (d)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS) + [POINT_COST, PEER],
        choices=list(VARIANTS) + [POINT_COST, PEER, OPTIONS],
        help=f"what to measure (default: everything but {OPTIONS}, which needs --compare)",
    )
    parser.add_argument(
        "--compare",
        default="",
        help=f'overrides "KEY VALUE ..." whose training step (e) {OPTIONS} times against the '
        "config's",
    )
    parser.add_argument(
        "--weights", default="", help=f"checkpoint both models of (e) {OPTIONS} start from"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even with a GPU")
    parser.add_argument("--output", default="output/benchmark.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if OPTIONS in args.variants and not args.compare:
        parser.error(f'--variants {OPTIONS} needs --compare "KEY VALUE ..."')
    if args.weights and not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: no such file")
    return args


def worker(args) -> dict:
    import torch

    import panoptic_curriculum  # noqa: F401  compat + datasets
    from panoptic_curriculum.utils import benchmark as bm

    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(height=args.height, width=args.width, cpu=args.cpu, opts=args.opts)
    if args.worker == "matmul":
        return {"gflops_per_s": bm.matmul_gflops(bm.benchmark_device(args.cpu))}
    if args.worker == PEER:
        return bm.compare_with_panoptic_fpn(
            args.config_file,
            batch_size=args.peer_batch_size,
            warmup=args.warmup,
            iters=args.peer_iters,
            **common,
        )
    if args.worker == POINT_COST:
        return bm.compare_point_branch(
            args.config_file,
            batch_size=args.batch_size,
            num_points=args.num_points,
            warmup=args.warmup,
            iters=args.iters,
            **common,
        )
    if args.worker == OPTIONS:
        return bm.compare_training_options(
            args.config_file,
            shlex.split(args.compare),
            batch_size=args.batch_size,
            weights=args.weights,
            warmup=args.warmup,
            iters=args.iters,
            **common,
        )
    return bm.run_variant(
        args.config_file,
        args.worker,
        batch_size=args.batch_size,
        num_points=args.num_points,
        warmup=args.warmup,
        iters=args.iters,
        **common,
    )


def run_in_subprocess(name: str) -> dict:
    argv = [a for a in sys.argv[1:] if a != "--worker"]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark part {name} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def report(results: dict, matmul: float):
    """The printed lines and the summary numbers (a), (b), (d)."""
    summary = {}
    rows = [
        f"{'variant':<18}{'mode':<11}{'median ms':>10}{'peak MB':>9}{'params M':>9}"
        f"{'GMAC/img':>10}{'GFLOP/s':>9}{'% mm':>6}"
    ]
    for name, r in results.items():
        if name in (PEER, POINT_COST, OPTIONS):
            continue
        rows.append(
            f"{name:<18}{r['mode']:<11}{r['median_s'] * 1000:>10.1f}{r['peak_mem_mb']:>9.0f}"
            f"{r['params_m']:>9.2f}{r['gmacs_per_image']:>10.2f}"
            f"{r['achieved_gflops_per_s']:>9.1f}{100 * r['achieved_gflops_per_s'] / matmul:>6.0f}"
        )
    single = ("semantic_only", "instance_only", "depth_only")
    if all(k in results for k in single + ("one_pass",)):
        seq = sum(results[k]["median_s"] for k in single)
        summary["one_pass_speedup"] = seq / results["one_pass"]["median_s"]
        ok = "PASS" if summary["one_pass_speedup"] >= 1.8 else "MISS"
        rows.append(
            f"(a) one pass vs semantic+instance+depth one after the other: "
            f"{summary['one_pass_speedup']:.2f}x faster (target >= 1.8x) {ok}"
        )
    if "train_point_on" in results and "train_point_off" in results:
        on, off = results["train_point_on"]["median_s"], results["train_point_off"]["median_s"]
        summary["point_branch_overhead"] = on / off - 1
        ok = "PASS" if on / off - 1 <= 0.15 else "MISS"
        rows.append(
            f"(b) training step, point branch on vs off: {(on / off - 1) * 100:+.1f}% "
            f"(target <= +15%) {ok}"
        )
    if POINT_COST in results:
        p = results[POINT_COST]
        summary["point_branch_overhead_interleaved"] = p["overhead"]
        ok = "PASS" if p["overhead"] <= 0.15 else "MISS"
        rows.append(
            f"(b') the same, interleaved in one process: {p['on']['median_s'] * 1000:.1f} "
            f"against {p['off']['median_s'] * 1000:.1f} ms, {p['overhead'] * 100:+.1f}% "
            f"(median of {p['iters']} rounds; per-round median "
            f"{p['paired_overhead_median'] * 100:+.1f}%, CPU time "
            f"{p['cpu_overhead'] * 100:+.1f}%; target <= +15%) {ok}"
        )
    if OPTIONS in results:
        p = results[OPTIONS]
        summary["train_options_ratio"] = p["ratio"]
        rows.append(
            f"(e) training step with {' '.join(map(str, p['compare_opts']))}: "
            f"{p['compared']['median_s'] * 1000:.1f} against {p['base']['median_s'] * 1000:.1f} "
            f"ms, {p['ratio']:.3f}x (median of {p['iters']} interleaved rounds; per-round "
            f"median {p['paired_ratio_median']:.3f}x, CPU time {p['cpu_ratio']:.3f}x; "
            f"{len(p['not_shared'])} tensors not shared)"
        )
    rows.append("(c) peak memory: per variant above")
    if PEER in results:
        p = results[PEER]
        for name in ("ours", "panoptic_fpn"):
            r = p[name]
            rows.append(
                f"(d) {name:<13} batch {p['batch_size']}: {r['median_s'] * 1000:8.1f} ms  "
                f"{r['gmacs_per_image']:6.2f} GMAC/img  {r['achieved_gflops_per_s']:6.1f} GFLOP/s "
                f"({100 * r['achieved_gflops_per_s'] / matmul:.0f}% mm)  "
                f"detections {r['detections']}"
            )
        summary["one_pass_vs_panoptic_fpn"] = p["ratio"]
        ok = "PASS" if p["ratio"] <= 1.0 else "MISS"
        rows.append(
            f"(d) our one pass / PanopticFPN: {p['ratio']:.3f}x (median of {p['iters']} "
            f"interleaved runs; target <= 1.0x) {ok}; per-round median "
            f"{p['paired_ratio_median']:.3f}x, CPU time {p['cpu_ratio']:.3f}x"
        )
    rows.append(
        f"mm = the fastest large matrix product here: {matmul:.1f} GFLOP/s, the arithmetic "
        "ceiling that '% mm' reads speed against"
    )
    return rows, summary


def main() -> None:
    args = parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    matmul = run_in_subprocess("matmul")["gflops_per_s"]
    results = {}
    for name in args.variants:
        results[name] = run_in_subprocess(name)
        r = results[name]
        ms = {PEER: r.get("ratio"), POINT_COST: r.get("overhead"), OPTIONS: r.get("ratio")}.get(
            name
        )
        ms = r["median_s"] * 1000 if ms is None else ms
        print(f"measured {name}: {ms:.3f}", file=sys.stderr)
    device = "cpu" if args.cpu else next(iter(results.values())).get("device", "cpu")
    header = (
        f"device={device}  resolution={args.height}x{args.width}  batch={args.batch_size}  "
        f"points/image={args.num_points}  config={args.config_file}"
    )
    rows, summary = report(results, matmul)
    print(header)
    print("\n".join(rows))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {"setting": header, "matmul_gflops_per_s": matmul, **summary, "results": results},
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
