"""Benchmark of the metrics at full scale, as JSON: time and peak memory of features -> FID, IS,
precision/recall on random features, their bootstrap standard errors, and the Fashion-MNIST
feature extraction throughput.

    python bench/bench_metrics.py                         # 50,000 x 2048 vs 50,000 x 2048, CPU
    python bench/bench_metrics.py --reference 10000       # the ADM protocol: 10k reference for P/R
    python bench/bench_metrics.py --device cuda --block-size 10000
    python bench/bench_metrics.py --stages bootstrap --resamples 20   # what the standard errors cost

Each stage runs in a fresh process; its peak resident memory (VmHWM, reset just before the stage) is
its own;
`input_mb` is what the feature arrays themselves take and `working_mb` the peak above the process's
memory just before the stage started (features already in place).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time

import numpy as np
import torch


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Current resident memory; also resets the kernel's peak (VmHWM) so the stage's own peak shows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak may include what the process did before the stage
    return _status_mb("VmRSS:")


def peak_mb() -> float:
    hwm = _status_mb("VmHWM:")
    return hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 5000):  # in chunks: no float64 temporary of the whole array
        out[i : i + 5000] = np.abs(rng.standard_normal((min(5000, n - i), dim), dtype=np.float32) + shift)
    return out


def stage_fid(args) -> dict:
    from sar_core.eval.metrics import StreamingGaussian, frechet_distance

    fake, real = random_features(args.samples, args.dim, 0, 0.05), random_features(args.reference, args.dim, 1)
    before, t0 = rss_mb(), time.perf_counter()
    stats = []
    for feats in (fake, real):
        acc = StreamingGaussian()
        for i in range(0, len(feats), args.batch):  # as evaluate() would stream them
            acc.update(feats[i : i + args.batch])
        stats.append(acc.stats())
    t_stats = time.perf_counter() - t0
    fid = frechet_distance(*stats)
    return {"fid": fid, "seconds_stats": round(t_stats, 2), "seconds": round(time.perf_counter() - t0, 2),
            "input_mb": round((fake.nbytes + real.nbytes) / 2**20), "working_mb": round(peak_mb() - before)}


def stage_is(args) -> dict:
    from sar_core.eval.metrics import inception_score

    logits = np.random.default_rng(2).standard_normal((args.samples, 1008), dtype=np.float32)
    logits *= 3  # in place: no second copy to inflate the peak before the stage starts
    before, t0 = rss_mb(), time.perf_counter()
    score = inception_score(logits, 10)
    return {"is": score, "seconds": round(time.perf_counter() - t0, 2), "input_mb": round(logits.nbytes / 2**20),
            "working_mb": round(peak_mb() - before)}


def stage_pr(args) -> dict:
    from sar_core.eval.metrics import precision_recall

    fake, real = random_features(args.samples, args.dim, 0, 0.05), random_features(args.reference, args.dim, 1)
    before, t0 = rss_mb(), time.perf_counter()
    p, r = precision_recall(real, fake, k=3, block_size=args.block_size, device=args.device)
    return {"precision": p, "recall": r, "seconds": round(time.perf_counter() - t0, 2),
            "input_mb": round((fake.nbytes + real.nbytes) / 2**20), "working_mb": round(peak_mb() - before),
            "block_size": args.block_size}


def stage_bootstrap(args) -> dict:
    """The standard errors of one evaluation: `--resamples` resamples of every metric (P/R with
    fixed radii: the coverage pass that precision / recall need anyway, then cheap resamples)."""
    from sar_core.eval.metrics import GaussianStats, coverage, manifold_radii
    from sar_core.eval.uncertainty import (fid_bootstrap, inception_score_bootstrap, precision_recall_bootstrap,
                                           resample_counts)

    fake, real = random_features(args.samples, args.dim, 0, 0.05), random_features(args.reference, args.dim, 1)
    logits = np.random.default_rng(2).standard_normal((args.samples, 1008), dtype=np.float32) * 3
    reference = GaussianStats.from_features(real)
    counts = resample_counts(args.samples, args.resamples, 0)
    before, out = rss_mb(), {"resamples": args.resamples}
    t0 = time.perf_counter()
    fid_bootstrap(fake, reference, counts)
    out["fid_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    inception_score_bootstrap(logits, counts, 10)
    out["is_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    cover = coverage(real, manifold_radii(real, 3, args.block_size, args.device), fake,
                     manifold_radii(fake, 3, args.block_size, args.device), args.block_size, args.device)
    out["pr_coverage_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    precision_recall_bootstrap(cover, counts)
    out["pr_resample_seconds"] = round(time.perf_counter() - t0, 2)
    return {**out, "working_mb": round(peak_mb() - before)}


def stage_fmnist(args) -> dict:
    from sar_core.data.fashion_mnist import FashionMNISTConfig
    from sar_core.eval.features import extract_features
    from sar_core.eval.fmnist_classifier import load_classifier

    net = load_classifier(progress=False).to(args.device)
    x, _ = FashionMNISTConfig().load("test")
    extract_features(net, [x[:500]], args.device)  # warm-up
    t0 = time.perf_counter()
    feats = extract_features(net, x.split(500), args.device)
    dt = time.perf_counter() - t0
    return {"images": len(feats), "seconds": round(dt, 2), "images_per_second": round(len(feats) / dt),
            "network": net.fingerprint}


STAGES = {"fid": stage_fid, "is": stage_is, "precision_recall": stage_pr, "bootstrap": stage_bootstrap,
          "fmnist_features": stage_fmnist}


def run_stage(name: str, args, queue) -> None:
    torch.set_num_threads(args.threads)
    queue.put(STAGES[name](args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--reference", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=500, help="feature batch for the streamed statistics")
    parser.add_argument("--block-size", type=int, default=5000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--resamples", type=int, default=20, help="bootstrap resamples (metrics.bootstrap)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "device": args.device,
                       "torch": torch.__version__},
           "samples": args.samples, "reference": args.reference, "dim": args.dim}
    for name in args.stages:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_stage, args=(name, args, queue))
        proc.start()
        out[name] = queue.get()
        proc.join()
        print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
