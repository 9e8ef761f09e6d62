"""`sar sample` and `sar eval`: one checkpoint, this machine, no Ray or MLflow (for quick looks;
`kind: eval` specs score on a cluster and track the result).

Runs in the `sar` process.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sar_core.checkpoint import load_model
from sar_core.eval import MetricConfig, evaluate
from sar_core.eval.export import save_samples_npz
from sar_core.eval.figures import sample_grid
from sar_core.generation import generate
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig
from sar_platform.spec import DataSpec


def sampling_settings(args) -> SamplingConfig:
    """--sampling PRESET with --cfg / --top-k / --top-p on top; bad values exit 2 before any loading."""
    given = {k: v for k, v in (("cfg", args.cfg), ("top_k", args.top_k), ("top_p", args.top_p)) if v is not None}
    try:
        return SamplingConfig.from_preset(args.sampling, **given) if args.sampling else SamplingConfig(**given)
    except ValueError as e:
        print(f"sar: sampling: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _setup(args):
    sampling = sampling_settings(args)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    tokenizer = load_model(args.tokenizer, kind="tokenizer", device=device).eval()
    generator = load_model(args.generator, kind="generator", device=device).eval()
    latent = tokenizer.config.latent_size
    scales = [int(s) for s in args.schedule.split(",")] if args.schedule else range(1, latent + 1)
    schedule = ScaleSchedule(scales).check_latent(latent)
    return device, tokenizer, generator, schedule, sampling


def sample_checkpoint(args) -> None:
    device, tokenizer, generator, schedule, sampling = _setup(args)
    classes = generator.config.num_classes
    labels = (torch.tensor([int(c) for c in args.labels.split(",")]) if args.labels
              else torch.arange(min(classes, 10)).repeat_interleave(8))
    rng = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        out = generate(generator, tokenizer, labels.to(device), schedule, sampling, rng)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(out.images.cpu(), labels, folder / "samples.png", title=f"schedule {schedule}, cfg {sampling.cfg}")
    print(f"{len(labels)} samples -> {grid}")
    if args.npz:
        print(f"npz -> {save_samples_npz(folder / 'samples.npz', out.images.cpu(), labels)}")


def score_checkpoint(args) -> None:
    device, tokenizer, generator, schedule, sampling = _setup(args)
    metrics = MetricConfig(num_samples=args.num_samples, feature_network=args.feature_network,
                           inception_weights=args.inception_weights or "", reference=args.reference,
                           batch_size=min(250, args.num_samples))
    data = DataSpec(dataset=args.dataset, root=args.data_root).image_dataset(tokenizer.config.image_size)
    result = evaluate(generator, tokenizer, sampling, metrics, schedule, args.out, data=data, device=device)
    print(json.dumps({"metrics": result.metrics, "figures": {k: str(v) for k, v in result.figures.items()},
                      **result.info}, indent=2))
