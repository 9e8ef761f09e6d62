"""The `sar` command line: validate, run, submit, browse and score SAR jobs.

Runs in the `sar` process. Each subcommand is one `add_<command>` (its arguments), one
`build_<command>` (its flags turned into the request it carries out: every flag lands there, and a
test checks that each one changes it) and one `cmd_<command>` (what it does with the request);
heavy modules are imported by the command that needs them, so `sar validate` answers in a second.
A flag whose value is unusable, or that its other flags make meaningless, exits 2 before anything runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
"""A job ran and failed (its MLflow run is FAILED)."""
EXIT_SPEC_ERROR = 2
"""Bad input, found before anything started."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT); SIGTERM exits 143 (128 + SIGTERM). The runs are KILLED, `--resume` continues."""


class UsageError(ValueError):
    """A flag value that cannot be used; the message names the flag."""


def _load_located(paths, texts=None):
    """Validate every spec before anything else happens; exit 2 with file:line:col errors.
    Returns (job, locator) pairs. `texts`: the specs' content where it is not read from the path."""
    from sar_platform.spec import SpecError, load_located_job

    loaded, failed = [], False
    for path, text in zip(paths, texts or [None] * len(paths)):
        try:
            loaded.append(load_located_job(path, text))
        except SpecError as e:
            failed = True
            print(str(e), file=sys.stderr)
    if failed:
        raise SystemExit(EXIT_SPEC_ERROR)
    return loaded


def _load(paths):
    return [job for job, _ in _load_located(paths)]


@dataclass(frozen=True)
class ValidateRequest:
    specs: tuple[str, ...]
    loaded: tuple = field(compare=False)  # (job, locator) of each spec
    skip_remote: bool = False


def build_validate(args) -> ValidateRequest:
    return ValidateRequest(tuple(args.specs), tuple(_load_located(args.specs)), args.skip_remote)


def cmd_validate(args) -> int:
    """The spec, then what it needs on disk and on S3 (checkpoints, data, data sizes): what `sar run`
    checks before it starts anything."""
    r = build_validate(args)
    from sar_platform.kinds import check_inputs  # the checks' modules load after the specs proved valid
    from sar_platform.services.storage import Workspace
    from sar_platform.spec import SpecError

    status = 0
    for path, (job, locator) in zip(r.specs, r.loaded):
        try:
            skipped = check_inputs(job, Workspace.of(job.storage), locator, skip_remote=r.skip_remote)
        except SpecError as e:
            print(str(e), file=sys.stderr)
            status = EXIT_SPEC_ERROR
            continue
        unchecked = f"; not checked (--skip-remote): {', '.join(skipped)}" if skipped else ""
        print(f"ok: {path} ({job.kind} '{job.name}'{unchecked})")
    return status


def build_schema(args) -> None:
    return None


def cmd_schema(args) -> int:
    from sar_platform.spec import job_schema

    print(json.dumps(job_schema(), indent=2))
    return 0


@dataclass(frozen=True)
class RunRequest:
    job: Any
    spec_text: str
    address: str | None
    resume: bool
    num_cpus: int | None
    locator: Any = field(compare=False)  # where each field is written, for checks made later
    wait_for_nodes_s: float | None = None


def build_run(args) -> RunRequest:
    from sar_platform.driver.submit import SUBMITTED_SPEC_ENV
    from sar_platform.spec.loader import read_text

    if args.submitted and SUBMITTED_SPEC_ENV not in os.environ:
        raise UsageError(f"--submitted reads the spec from ${SUBMITTED_SPEC_ENV}, which is not set "
                         "(`sar submit` sets it for the job it submits; elsewhere run SPEC without --submitted)")
    text = os.environ[SUBMITTED_SPEC_ENV] if args.submitted else None
    ((job, locator),) = _load_located([args.spec], [text])
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UsageError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    if args.num_cpus is not None and args.address:
        raise UsageError("--num-cpus sizes the embedded Ray; it is not read with --address (the cluster has its own)")
    if args.wait_for_nodes is not None and not args.address:
        raise UsageError("--wait-for-nodes waits for a cluster's nodes; it is read with --address only")
    return RunRequest(job, text or read_text(Path(args.spec)), args.address, args.resume, args.num_cpus, locator,
                      _wait_for_nodes(args))


def _wait_for_nodes(args) -> float | None:
    if args.wait_for_nodes is not None and args.wait_for_nodes < 0:
        raise UsageError(f"--wait-for-nodes must be 0 or more seconds, got {args.wait_for_nodes:g}")
    return args.wait_for_nodes


def cmd_run(args) -> int:
    request = build_run(args)
    from sar_platform.driver.session import JobFailed
    from sar_platform.runner import Terminated, run_job
    from sar_platform.spec import SpecError

    try:
        run_job(request.job, spec_text=request.spec_text, address=request.address, resume=request.resume,
                num_cpus=request.num_cpus, locator=request.locator, wait_for_nodes_s=request.wait_for_nodes_s)
    except SpecError as e:  # found before any work started (existing runs, checkpoints, data, cluster)
        print(str(e), file=sys.stderr)
        return EXIT_SPEC_ERROR
    except JobFailed as e:
        print(f"[sar] {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"[sar] {what}; the checkpoints are kept. Continue with: sar {'submit' if args.submitted else 'run'} {args.spec} --resume", file=sys.stderr)
        return 128 + Terminated.signal_number if isinstance(e, Terminated) else EXIT_INTERRUPTED
    return 0


def _cluster_command(run) -> int:
    """Run a command that talks to a cluster's Jobs API; its refusals exit 2 with the reason."""
    from sar_platform.driver.jobs import JobsError

    try:
        return run()
    except JobsError as e:
        print(f"sar: {e}", file=sys.stderr)
        return EXIT_SPEC_ERROR


@dataclass(frozen=True)
class SubmitRequest:
    job: Any
    spec: Path
    address: str | None
    resume: bool
    wait: bool
    shared: tuple[str, ...]
    wait_for_nodes_s: float | None = None


def build_submit(args) -> SubmitRequest:
    (job,) = _load([args.spec])
    return SubmitRequest(job, Path(args.spec), args.address, args.resume, not args.no_wait, tuple(args.shared_path or ()),
                         _wait_for_nodes(args))


def cmd_submit(args) -> int:
    r = build_submit(args)
    from sar_platform.driver.submit import submit_job

    return _cluster_command(lambda: submit_job(r.job, r.spec, r.address, resume=r.resume, wait=r.wait, shared=list(r.shared),
                                               wait_for_nodes_s=r.wait_for_nodes_s))


@dataclass(frozen=True)
class JobsRequest:
    action: str  # list | status | logs | stop
    address: str | None
    job_id: str | None = None
    follow: bool = False
    wait: bool = True


def build_jobs(args) -> JobsRequest:
    return JobsRequest(args.action, args.address, getattr(args, "job_id", None), getattr(args, "follow", False),
                       not getattr(args, "no_wait", False))


def cmd_jobs(args) -> int:
    from sar_platform.driver import jobs

    r = build_jobs(args)
    actions = {
        "list": lambda: jobs.list_jobs(r.address),
        "status": lambda: jobs.show_status(r.address, r.job_id),
        "logs": lambda: jobs.show_logs(r.address, r.job_id, r.follow),
        "stop": lambda: jobs.stop(r.address, r.job_id, wait=r.wait),
    }
    return _cluster_command(actions[r.action])


@dataclass(frozen=True)
class UiRequest:
    root: Path | None  # the workspace's MLflow folder; None: the spec tracks to its own server
    port: int
    stop: bool
    tracking_uri: str | None = None


def _spec_server(job, stop: bool = False) -> UiRequest:
    """The tracking server a spec's runs go to: its own URI, or its workspace's embedded server."""
    from sar_platform.services.storage import Workspace

    if job.mlflow.tracking_uri:
        return UiRequest(None, 0, stop, job.mlflow.tracking_uri)
    return UiRequest(Workspace.of(job.storage).mlflow_root(), job.mlflow.port, stop)


def _workspace_server(workspace: str | None, port: int | None, stop: bool = False) -> UiRequest:
    from sar_platform.services.storage import Workspace

    root = Workspace(str(Path(workspace or "workspace").resolve())).mlflow_root()
    return UiRequest(root, 5055 if port is None else port, stop)


def build_ui(args) -> UiRequest:
    if args.address:
        if args.spec or args.workspace is not None or args.port is not None or args.stop:
            raise UsageError("--address browses a server that runs already (a cluster's, through its tunnel); "
                             "SPEC, --workspace, --port and --stop are not read with it")
        return UiRequest(None, 0, False, args.address.rstrip("/"))
    if args.spec:
        if args.workspace is not None or args.port is not None:
            raise UsageError("give SPEC or --workspace / --port, not both: SPEC names its own storage and port")
        (job,) = _load([args.spec])
        return _spec_server(job, args.stop)
    return _workspace_server(args.workspace, args.port, args.stop)


def cmd_ui(args) -> int:
    from sar_platform.services.mlflow_server import ensure_server, stop_server

    r = build_ui(args)
    if r.tracking_uri:
        if r.stop:
            print(f"this spec tracks to {r.tracking_uri}, a server sar does not run; nothing to stop")
            return 0
        if not _answers(r.tracking_uri):
            print(f"sar ui: no MLflow server answers at {r.tracking_uri} from this machine: forward the cluster's server "
                  "here first (`ray attach CLUSTER.yaml -p 5000`, or `kubectl port-forward svc/sar-platform-mlflow "
                  "5000:5000`), then `sar ui --address http://127.0.0.1:5000`", file=sys.stderr)
            return EXIT_SPEC_ERROR
        return _show_server(r.tracking_uri)
    if r.stop:
        print("stopped" if stop_server(r.root) else "no server was running")
        return 0
    return _show_server(ensure_server(r.root, r.port).uri)


def _answers(uri: str) -> bool:
    """Whether an MLflow server answers its health check at `uri` within a few seconds."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def _show_server(uri: str) -> int:
    """The server's experiments (runs tables) and every comparison's headline with its run's link."""
    from sar_platform.driver.comparison_pages import ReportError, comparison_text, headline, measured_on, runs_under
    from sar_platform.services.tracking import runs_url

    server = _server(uri)
    experiments = server.client.search_experiments()
    print(f"MLflow UI: {uri}")
    for experiment in experiments:
        print(f"  {experiment.name}: {runs_url(uri, experiment.experiment_id)}")
    for run in server.compared([e.experiment_id for e in experiments]) if experiments else []:
        print(f"\n{run.info.run_name}: {server.url(run)}\n  measured on: {measured_on(runs_under(server, run), run)}")
        try:
            print(comparison_text(headline(server, run)))
        except ReportError as e:
            print(f"  {e}")
    return 0


def _server(uri: str):
    from sar_platform.driver.comparison_pages import Server
    from sar_platform.services.tracking import RetryingClient

    return Server(uri, RetryingClient(lambda: uri, attempts=2))


@dataclass(frozen=True)
class ReportRequest:
    server: UiRequest  # where the runs are
    run: str | None  # a run id or name (None: the spec's own run)
    job: Any  # the spec's job (None: a run was named)
    spec: str | None
    out: Path


def build_report(args) -> ReportRequest:
    target = args.run_or_spec
    is_spec = target.endswith((".yaml", ".yml")) or Path(target).is_file()
    if is_spec:
        if args.workspace is not None or args.port is not None or args.tracking_uri is not None:
            raise UsageError("give a SPEC or --workspace / --port / --tracking-uri, not both: SPEC names its own "
                             "storage and tracking server")
        if not Path(target).is_file():
            raise UsageError(f"{target}: no such spec file (give a job spec, or a run id or name)")
        (job,) = _load([target])
        return ReportRequest(_spec_server(job), None, job, target, Path(args.out))
    if args.tracking_uri is not None and (args.workspace is not None or args.port is not None):
        raise UsageError("--tracking-uri names the server: --workspace / --port are not read with it")
    server = UiRequest(None, 0, False, args.tracking_uri) if args.tracking_uri else _workspace_server(args.workspace, args.port)
    return ReportRequest(server, target, None, None, Path(args.out))


def cmd_report(args) -> int:
    r = build_report(args)
    from sar_platform.driver.comparison_pages import ReportError, find_run, find_spec_run, write_pages
    from sar_platform.services.mlflow_server import ensure_server
    from sar_platform.services.storage import Workspace

    if r.server.tracking_uri:
        uri = r.server.tracking_uri
    elif not r.server.root.exists():
        raise UsageError(f"no MLflow store at {r.server.root}: give the workspace the runs were made in (--workspace)")
    else:
        uri = ensure_server(r.server.root, r.server.port).uri
    server = _server(uri)
    try:
        if r.job is not None:
            run_key = f"{Workspace.of(r.job.storage).root}/{r.job.name}"  # as Session.run_key
            run = find_spec_run(server, r.job.mlflow.experiment, run_key, r.spec)
        else:
            run = find_run(server, r.run)
        for path in write_pages(server, run, r.out):
            print(f"{path}")
    except ReportError as e:
        raise UsageError(str(e)) from None
    return 0


def _guidance(text: str | None, grid_allowed: bool):
    """`--cfg`: one weight (2.5) or, where a grid is allowed, comma-separated weights (0.5,1.5,2.5)."""
    from sar_core.eval.guidance import GRID_FIX, guidance_grid

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
        grid = guidance_grid(values) if "," in text else None
    except ValueError as e:
        why = str(e).split(";")[0] if "cfg:" in str(e) else f"{text!r} is not a list of numbers"
        raise UsageError(f"--cfg: {why.removeprefix('cfg: ')}; {GRID_FIX.replace('write cfg as', 'give')} "
                         "(comma-separated, no spaces)") from None
    if grid is not None and not grid_allowed:
        raise UsageError(f"--cfg: sar sample draws at one guidance weight; got the grid {text} (sar eval scores grids)")
    return grid if grid is not None else values[0]


def _checkpoints(args, grid_allowed: bool = False):
    from sar_core.eval import EvalSampling
    from sar_platform.driver.adhoc import Checkpoints

    try:
        schedule = tuple(int(s) for s in args.schedule.split(",")) if args.schedule else None
    except ValueError:
        raise UsageError(f"--schedule must be comma-separated scale sizes such as 1,2,3,5,7; got {args.schedule!r}") from None
    cfg = _guidance(args.cfg, grid_allowed)
    given = {k: v for k, v in (("cfg", cfg), ("top_k", args.top_k), ("top_p", args.top_p)) if v is not None}
    try:
        sampling = EvalSampling.from_preset(args.sampling, **given) if args.sampling else EvalSampling(**given)
    except ValueError as e:
        raise UsageError(f"--sampling / --cfg / --top-k / --top-p: {e}") from None
    return Checkpoints(args.generator, args.tokenizer, schedule, sampling if grid_allowed else sampling.single(), args.out,
                       args.device)


def build_sample(args):
    from sar_platform.driver.adhoc import SampleRequest

    try:
        labels = tuple(int(c) for c in args.labels.split(",")) if args.labels else None
    except ValueError:
        raise UsageError(f"--labels must be comma-separated class indices such as 0,3,7; got {args.labels!r}") from None
    return SampleRequest(_checkpoints(args), labels, args.seed, args.npz)


def cmd_sample(args) -> int:
    from sar_platform.driver.adhoc import sample_checkpoint

    sample_checkpoint(build_sample(args))
    return 0


EVAL_FLAGS = {"inception_weights": "--inception-weights", "selection_seed": "--selection-seed"}
"""MetricConfig fields set by a flag that other flags can make unread."""


def build_eval(args):
    from sar_core.eval import MetricConfig
    from sar_platform.driver.adhoc import ScoreRequest
    from sar_platform.spec import DataSpec

    try:
        metrics = MetricConfig(num_samples=args.num_samples, feature_network=args.feature_network,
                               inception_weights=args.inception_weights or "", reference=args.reference,
                               batch_size=min(250, args.num_samples), seed=args.seed, selection_seed=args.selection_seed)
        data = DataSpec(dataset=args.dataset, root=args.data_root)
    except ValueError as e:
        raise UsageError(str(e).splitlines()[-1] if "validation error" in str(e) else str(e)) from None
    checkpoints = _checkpoints(args, grid_allowed=True)
    unread = metrics.unread_fields()
    if checkpoints.sampling.grid is None:
        unread["selection_seed"] = "is only read with a guidance grid (--cfg 0.5,1.5,2.5)"
    for field, why in unread.items():
        if field in EVAL_FLAGS and getattr(args, field) is not None:
            raise UsageError(f"{EVAL_FLAGS[field]} {why}")
    return ScoreRequest(checkpoints, metrics, data)


def cmd_eval(args) -> int:
    from sar_platform.driver.adhoc import score_checkpoint

    score_checkpoint(build_eval(args))
    return 0


def build_import_flexvar(args) -> tuple:
    return args.generator, args.vqvae, args.out, args.image_size


def cmd_import_flexvar(args) -> int:
    from sar_core.flexvar_import import import_flexvar

    generator, vqvae, out, image_size = build_import_flexvar(args)
    gen, tok = import_flexvar(generator, vqvae, out, image_size=image_size, report=print)
    print(f"generator -> {gen}\ntokenizer -> {tok}")
    return 0


def build_import_var(args) -> tuple:
    return args.generator, args.vqvae, args.out


def cmd_import_var(args) -> int:
    from sar_core.var_import import import_var

    generator, vqvae, out = build_import_var(args)
    gen, tok = import_var(generator, vqvae, out, report=print)
    print(f"generator -> {gen}\ntokenizer -> {tok}")
    return 0


def build_data(args) -> tuple:
    return args.dataset, args.root, args.download


def cmd_data(args) -> int:
    from sar_core.data.fashion_mnist import DataNotFoundError, find_root

    _, root, download = build_data(args)
    try:
        found = find_root(root, download=download)
    except DataNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: {found}")
    return 0


def add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check job specs (exit 2 with file:line:col errors)")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--skip-remote", action="store_true",
                   help="leave s3:// checkpoints unchecked (a machine without S3 access); everything else is checked")
    p.set_defaults(func=cmd_validate, build=build_validate)


def add_schema(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of job specs (for editor completion)")
    p.set_defaults(func=cmd_schema, build=build_schema)


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run a job spec on local embedded Ray (or an existing cluster with --address)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--address", help="connect to this Ray cluster (e.g. 127.0.0.1:6379) instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its latest checkpoints")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--submitted", action="store_true",
                   help="the spec's text is in $SAR_SUBMITTED_SPEC, SPEC names its file (how `sar submit` runs a job)")
    add_wait_for_nodes(p)
    p.set_defaults(func=cmd_run, build=build_run)


def add_wait_for_nodes(p) -> None:
    p.add_argument("--wait-for-nodes", type=float, metavar="SECONDS",
                   help="on a cluster whose node types can hold the job but whose nodes are not all up yet, ask the "
                        "autoscaler for them and wait this long (default: 1800)")


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
    add_wait_for_nodes(p)
    p.set_defaults(func=cmd_submit, build=build_submit)


def add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="list, follow and stop the Ray Jobs on a cluster")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every submitted job: id, status, start time, spec")
    add_address(listing)
    listing.set_defaults(func=cmd_jobs, build=build_jobs)
    status = actions.add_parser("status", help="a job's status, times, spec and MLflow run")
    status.add_argument("job_id", metavar="ID")
    add_address(status)
    status.set_defaults(func=cmd_jobs, build=build_jobs)
    logs = actions.add_parser("logs", help="a job's driver log")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    add_address(logs)
    logs.set_defaults(func=cmd_jobs, build=build_jobs)
    stop = actions.add_parser("stop", help="stop a job (its MLflow runs end KILLED)")
    stop.add_argument("job_id", metavar="ID")
    stop.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    add_address(stop)
    stop.set_defaults(func=cmd_jobs, build=build_jobs)


def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="start (or find) the MLflow server of a workspace; print its runs tables, "
                                  "and each comparison with the link to its run")
    p.add_argument("spec", nargs="?", help="use this spec's storage and MLflow settings")
    p.add_argument("--workspace", help="the workspace folder (default: ./workspace)")
    p.add_argument("--port", type=int, help="port of a server started now (default: 5055)")
    p.add_argument("--stop", action="store_true", help="stop the workspace's MLflow server")
    p.add_argument("--address", metavar="URL",
                   help="browse a running MLflow server instead: a cluster's, as this machine reaches it through the "
                        "SSH tunnel or port-forward (e.g. http://127.0.0.1:5000)")
    p.set_defaults(func=cmd_ui, build=build_ui)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML page per comparison (tables, verdicts, figures, "
                                      "recipe, environment, links)")
    p.add_argument("run_or_spec", metavar="RUN_OR_SPEC", help="a parent run's id or name, or a job spec (its run)")
    p.add_argument("--out", default="reports", help="folder of the pages (default: ./reports)")
    p.add_argument("--workspace", help="with a run: the workspace whose MLflow server holds it (default: ./workspace)")
    p.add_argument("--port", type=int, help="with a run: port of a server started now (default: 5055)")
    p.add_argument("--tracking-uri", help="with a run: the tracking server that holds it (instead of a workspace)")
    p.set_defaults(func=cmd_report, build=build_report)


def add_checkpoint_arguments(p) -> None:
    """What `sar sample` and `sar eval` share: the checkpoints and how to generate from them."""
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--tokenizer", required=True, help="tokenizer .safetensors")
    p.add_argument("--schedule", help="scales, e.g. 1,2,3,4,5,7 (default: 1..latent size)")
    p.add_argument("--sampling", metavar="PRESET",
                   help="a sampling preset: flexvar_eval is FlexVAR's published evaluation; --cfg/--top-k/--top-p override it")
    p.add_argument("--cfg", help="guidance weight (default: the preset's, else the spec default 2.5); sar eval also takes "
                                 "a grid such as 0.5,1.5,2.5 (scored at each weight, best_cfg picked on a second sample set)")
    p.add_argument("--top-k", type=int, help="(default: the preset's, else 900)")
    p.add_argument("--top-p", type=float, help="(default: the preset's, else 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seeds the generation (eval: also the reference images)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a checkpoint into a PNG grid / npz")
    add_checkpoint_arguments(p)
    p.add_argument("--labels", default="", help="comma-separated classes (default: 8 of each class)")
    p.add_argument("--npz", action="store_true", help="also write the NHWC uint8 .npz the ADM evaluator reads")
    p.set_defaults(func=cmd_sample, build=build_sample)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint: FID, IS, precision, recall")
    add_checkpoint_arguments(p)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--feature-network", choices=["fmnist_classifier", "inception"], default="fmnist_classifier")
    p.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (for --feature-network inception)")
    p.add_argument("--reference", default="train", help="real set: dataset split or a reference .npz")
    p.add_argument("--selection-seed", type=int, help="with a --cfg grid: seeds the samples best_cfg is picked on "
                                                      "(default: --seed + 1,000,000)")
    p.add_argument("--dataset", choices=["fashion_mnist", "image_folder"], default="fashion_mnist")
    p.add_argument("--data-root", help="the data set's folder (image_folder: holds <split>/<class>/)")
    p.set_defaults(func=cmd_eval, build=build_eval)


def add_import_flexvar(sub) -> None:
    p = sub.add_parser("import-flexvar", help="convert published FlexVAR weights into sar-platform checkpoints")
    p.add_argument("--generator", required=True, help="FlexVAR generator .pth (e.g. FlexVARd16-epo179.pth)")
    p.add_argument("--vqvae", required=True, help="FlexVAR VQ-VAE .pth (FlexVAE.pth)")
    p.add_argument("--out", required=True, help="output folder for generator/tokenizer .safetensors")
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=cmd_import_flexvar, build=build_import_flexvar)


def add_import_var(sub) -> None:
    p = sub.add_parser("import-var", help="convert published VAR weights into sar-platform checkpoints (family var)")
    p.add_argument("--generator", required=True, help="VAR generator .pth (var_d16.pth ... var_d30.pth); its schedule "
                                                      "fixes the image size")
    p.add_argument("--vqvae", required=True, help="VAR VQ-VAE .pth (vae_ch160v4096z32.pth)")
    p.add_argument("--out", required=True, help="output folder for generator/tokenizer .safetensors")
    p.set_defaults(func=cmd_import_var, build=build_import_var)


def add_data(sub) -> None:
    p = sub.add_parser("data", help="locate (or download) Fashion-MNIST")
    p.add_argument("dataset", choices=["fashion-mnist"])
    p.add_argument("--root", help="a folder holding the four .gz files")
    p.add_argument("--download", action="store_true", help="download from the official mirror into the data cache")
    p.set_defaults(func=cmd_data, build=build_data)


SUBCOMMANDS = (add_validate, add_schema, add_run, add_submit, add_jobs, add_ui, add_report, add_sample, add_eval, add_import_flexvar, add_import_var,
               add_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sar", description="Self-Autoregressive Refinement on Ray + MLflow")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


RAY_LINES_THAT_ARE_NOT_ERRORS = r"'PreemptionWatcher' .* has constructor arguments in the object store"
"""Ray Train logs this at error level at every training start (ray-project/ray#53727): a caution
about restarting Ray's own preemption watcher, not an error of the run. Ray drops worker lines
matching RAY_DEDUP_LOGS_SKIP_REGEX from the console; a user's own setting wins."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_LINES_THAT_ARE_NOT_ERRORS)  # read when Ray is imported
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"sar {args.command}: {e}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except Exception as e:
        if is_checkpoint_error(e):
            print(f"sar {args.command}: refused: {e}", file=sys.stderr)
        elif is_unreachable_storage(e):
            print(f"sar {args.command}: {e}; check the network, the S3 endpoint and credentials", file=sys.stderr)
        else:
            raise
        return EXIT_SPEC_ERROR


def is_checkpoint_error(error: Exception) -> bool:
    """A checkpoint a command was given that is damaged, poisoned or of the wrong kind: bad input,
    whichever command read it. (sar_core is imported only by the commands that read checkpoints.)"""
    checkpoint = sys.modules.get("sar_core.checkpoint")
    return checkpoint is not None and isinstance(error, checkpoint.CheckpointError)


def is_unreachable_storage(error: Exception) -> bool:
    """An S3 location a command needed and could not reach: reported, never a traceback."""
    storage = sys.modules.get("sar_platform.services.storage")
    return storage is not None and isinstance(error, storage.StorageUnreachable)


if __name__ == "__main__":
    sys.exit(main())
