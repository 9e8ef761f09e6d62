"""The `sar` command line: validate, run, submit, browse and score SAR jobs.

Runs in the `sar` process. Each subcommand is one `add_<command>` (its arguments) and one
`cmd_<command>` (what it does); heavy modules are imported by the command that needs them, so
`sar validate` answers in a second.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_SPEC_ERROR = 2


def _load(paths):
    """Validate every spec before anything else happens; exit 2 with file:line:col errors."""
    from sar_platform.spec import SpecError, load_job

    jobs, failed = [], False
    for path in paths:
        try:
            jobs.append(load_job(path))
        except SpecError as e:
            failed = True
            print(str(e), file=sys.stderr)
    if failed:
        raise SystemExit(EXIT_SPEC_ERROR)
    return jobs


def cmd_validate(args) -> int:
    for path, job in zip(args.specs, _load(args.specs)):
        print(f"ok: {path} ({job.kind} '{job.name}')")
    return 0


def cmd_schema(args) -> int:
    from sar_platform.spec import job_schema

    print(json.dumps(job_schema(), indent=2))
    return 0


def cmd_run(args) -> int:
    (job,) = _load([args.spec])
    from sar_platform.runner import run_job
    from sar_platform.spec import SpecError

    try:
        run_job(job, spec_text=Path(args.spec).read_text(), address=args.address, resume=args.resume, num_cpus=args.num_cpus)
    except SpecError as e:  # found before any work started (existing runs, checkpoints, data, cluster)
        print(str(e), file=sys.stderr)
        return EXIT_SPEC_ERROR
    return 0


def _cluster_command(run) -> int:
    """Run a command that talks to a cluster's Jobs API; its refusals exit 2 with the reason."""
    from sar_platform.driver.jobs import JobsError

    try:
        return run()
    except JobsError as e:
        print(f"sar: {e}", file=sys.stderr)
        return EXIT_SPEC_ERROR


def cmd_submit(args) -> int:
    (job,) = _load([args.spec])
    from sar_platform.driver.submit import submit_job

    return _cluster_command(lambda: submit_job(job, Path(args.spec), args.address, resume=args.resume,
                                               wait=not args.no_wait, shared=args.shared_path))


def cmd_jobs_list(args) -> int:
    from sar_platform.driver import jobs

    return _cluster_command(lambda: jobs.list_jobs(args.address))


def cmd_jobs_status(args) -> int:
    from sar_platform.driver import jobs

    return _cluster_command(lambda: jobs.show_status(args.address, args.job_id))


def cmd_jobs_logs(args) -> int:
    from sar_platform.driver import jobs

    return _cluster_command(lambda: jobs.show_logs(args.address, args.job_id, args.follow))


def cmd_jobs_stop(args) -> int:
    from sar_platform.driver import jobs

    return _cluster_command(lambda: jobs.stop(args.address, args.job_id, wait=not args.no_wait))


def cmd_ui(args) -> int:
    from sar_platform.services.mlflow_server import ensure_server, stop_server
    from sar_platform.services.storage import Workspace

    if args.spec:
        (job,) = _load([args.spec])
        if job.mlflow.tracking_uri:
            print(f"this spec tracks to {job.mlflow.tracking_uri}; open that server's UI")
            return 0
        root, port = Workspace.of(job.storage).mlflow_root(), job.mlflow.port
    else:
        root, port = Workspace(str(Path(args.workspace).resolve())).mlflow_root(), args.port
    if args.stop:
        print("stopped" if stop_server(root) else "no server was running")
        return 0
    info = ensure_server(root, port)
    print(f"MLflow UI: {info.uri}  (runs tables: {info.uri}/#/experiments)")
    return 0


def cmd_eval(args) -> int:
    from sar_platform.driver.adhoc import score_checkpoint

    score_checkpoint(args)
    return 0


def cmd_sample(args) -> int:
    from sar_platform.driver.adhoc import sample_checkpoint

    sample_checkpoint(args)
    return 0


def cmd_import_flexvar(args) -> int:
    from sar_core.flexvar_import import import_flexvar

    gen, tok = import_flexvar(args.generator, args.vqvae, args.out, image_size=args.image_size)
    print(f"generator -> {gen}\ntokenizer -> {tok}")
    return 0


def cmd_data(args) -> int:
    from sar_core.data.fashion_mnist import DataNotFoundError, find_root

    try:
        root = find_root(args.root, download=args.download)
    except DataNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: {root}")
    return 0


def add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check job specs (exit 2 with file:line:col errors)")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.set_defaults(func=cmd_validate)


def add_schema(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of job specs (for editor completion)")
    p.set_defaults(func=cmd_schema)


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run a job spec on local embedded Ray (or an existing cluster with --address)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--address", help="connect to this Ray cluster (e.g. 127.0.0.1:6379) instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its latest checkpoints")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.set_defaults(func=cmd_run)


def add_address(p) -> None:
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="the cluster's dashboard address, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")


def add_submit(sub) -> None:
    p = sub.add_parser("submit", help="submit a job spec to a Ray cluster through the Ray Jobs API")
    p.add_argument("spec", metavar="SPEC")
    add_address(p)
    p.add_argument("--resume", action="store_true", help="continue the job's runs from their latest checkpoints")
    p.add_argument("--no-wait", action="store_true", help="return after submission instead of following the logs")
    p.add_argument("--shared-path", action="append", metavar="PREFIX",
                   help="a file system every node mounts at this same path (e.g. /mnt/fsx); local paths of the spec "
                        "must lie under one (repeatable; also $SAR_SHARED_PATHS)")
    p.set_defaults(func=cmd_submit)


def add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="list, follow and stop the Ray Jobs on a cluster")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every submitted job: id, status, start time, spec")
    add_address(listing)
    listing.set_defaults(func=cmd_jobs_list)
    status = actions.add_parser("status", help="a job's status, times, spec and MLflow run")
    status.add_argument("job_id", metavar="ID")
    add_address(status)
    status.set_defaults(func=cmd_jobs_status)
    logs = actions.add_parser("logs", help="a job's driver log")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    add_address(logs)
    logs.set_defaults(func=cmd_jobs_logs)
    stop = actions.add_parser("stop", help="stop a job (its MLflow runs end KILLED)")
    stop.add_argument("job_id", metavar="ID")
    stop.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    add_address(stop)
    stop.set_defaults(func=cmd_jobs_stop)


def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="start (or find) the MLflow server of a workspace and print its URL")
    p.add_argument("spec", nargs="?", help="use this spec's storage and MLflow settings")
    p.add_argument("--workspace", default="workspace")
    p.add_argument("--port", type=int, default=5055)
    p.add_argument("--stop", action="store_true", help="stop the workspace's MLflow server")
    p.set_defaults(func=cmd_ui)


def add_checkpoint_arguments(p) -> None:
    """What `sar sample` and `sar eval` share: the checkpoints and how to generate from them."""
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--tokenizer", required=True, help="tokenizer .safetensors")
    p.add_argument("--schedule", help="scales, e.g. 1,2,3,4,5,7 (default: 1..latent size)")
    p.add_argument("--cfg", type=float, default=2.5)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a checkpoint into a PNG grid / npz")
    add_checkpoint_arguments(p)
    p.add_argument("--labels", default="", help="comma-separated classes (default: 8 of each class)")
    p.add_argument("--npz", action="store_true", help="also write the NHWC uint8 .npz the ADM evaluator reads")
    p.set_defaults(func=cmd_sample)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint: FID, IS, precision, recall")
    add_checkpoint_arguments(p)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--feature-network", choices=["fmnist_classifier", "inception"], default="fmnist_classifier")
    p.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (for --feature-network inception)")
    p.add_argument("--reference", default="train", help="real set: dataset split or a reference .npz")
    p.add_argument("--dataset", choices=["fashion_mnist", "image_folder"], default="fashion_mnist")
    p.add_argument("--data-root", help="the data set's folder (image_folder: holds <split>/<class>/)")
    p.set_defaults(func=cmd_eval)


def add_import_flexvar(sub) -> None:
    p = sub.add_parser("import-flexvar", help="convert published FlexVAR weights into sar-platform checkpoints")
    p.add_argument("--generator", required=True, help="FlexVAR generator .pth (e.g. FlexVARd16-epo179.pth)")
    p.add_argument("--vqvae", required=True, help="FlexVAR VQ-VAE .pth (FlexVAE.pth)")
    p.add_argument("--out", required=True, help="output folder for generator/tokenizer .safetensors")
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=cmd_import_flexvar)


def add_data(sub) -> None:
    p = sub.add_parser("data", help="locate (or download) Fashion-MNIST")
    p.add_argument("dataset", choices=["fashion-mnist"])
    p.add_argument("--root", help="a folder holding the four .gz files")
    p.add_argument("--download", action="store_true", help="download from the official mirror into the data cache")
    p.set_defaults(func=cmd_data)


SUBCOMMANDS = (add_validate, add_schema, add_run, add_submit, add_jobs, add_ui, add_sample, add_eval, add_import_flexvar, add_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sar", description="Self-Autoregressive Refinement on Ray + MLflow")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
