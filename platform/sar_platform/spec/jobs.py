"""The job kinds: tokenizer, train, eval, sweep, pipeline. One validated tree per YAML file.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from sar_core.data.dataset import ImageDataset, SplitImages
from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.data.image_folder import ImageFolderConfig
from sar_core.eval.config import ContinuationConfig, MetricConfig
from sar_core.eval.guidance import EvalSampling
from sar_core.families import family, unread_objective_fields
from sar_core.generator import GeneratorConfig
from sar_core.objectives import ObjectiveConfig
from sar_core.schedule import ScaleSchedule
from sar_core.tokenizer import TokenizerConfig
from sar_platform.spec.common import STEP_REF, FieldPath, external_run, JobCommon, Name, PathOrURI, Seed, StrictModel, Unread, prefixed
from sar_platform.spec.overrides import check_sweep, trial_job
from sar_platform.spec.selection import SelectSpec
from sar_platform.spec.train import CheckpointSpec, LogSpec, Objective, OptimSpec, ProbeSpec, ScheduleSpec, ScoringSampling

Precision = Literal["auto", "fp32", "bf16"]
"""auto: bf16 autocast on GPU workers, fp32 on CPU."""


class DataSpec(StrictModel):
    dataset: Literal["fashion_mnist", "image_folder"] = "fashion_mnist"
    root: PathOrURI | None = None
    """Fashion-MNIST: a folder with the four .gz files (default: data cache, then the Debian package's
    folder). image_folder: a folder with train/<class>/*.JPEG (required)."""
    download: bool = False
    """Fashion-MNIST only: download from the official mirror when it is found nowhere (needs internet)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N training images (quick experiments)."""
    flip: bool = False
    """Horizontal-flip augmentation: shards also hold the flipped image's tokens, drawn with p = 0.5."""
    loader: Literal["memory", "ray_data"] = "memory"
    """memory: each worker loads the token shards into RAM (small data sets); ray_data: Ray Data
    streams the Parquet shards to the workers (ImageNet-sized data)."""

    @model_validator(mode="after")
    def _consistent(self):
        if self.dataset == "image_folder" and self.root is None:
            raise ValueError("data.root is required for dataset image_folder (a folder with train/<class>/ images)")
        if self.dataset != "fashion_mnist" and self.download:
            raise ValueError("data.download only applies to fashion_mnist")
        return self

    def unread_fields(self, job_kind: str) -> Unread:
        """What a job of `job_kind` never reads here: tokenizer jobs train on the images themselves
        (in memory, unflipped); eval jobs read only the real reference images."""
        if job_kind == "tokenizer":
            why = "is not read by tokenizer jobs (they train on the images in memory, unflipped)"
            return {("flip",): why, ("loader",): why}
        if job_kind == "eval":
            why = "is not read by eval jobs (their data is the real reference set, whole)"
            return {("limit",): why, ("flip",): why, ("loader",): why}
        return {}

    def image_dataset(self, image_size: int | None = None) -> ImageDataset:
        """The sar_core data set. `image_size`: the tokenizer's input size, which an image folder
        crops to (None: its default, enough to look at the files)."""
        if self.dataset == "fashion_mnist":
            return FashionMNISTConfig(root=self.root, download=self.download)
        return ImageFolderConfig(root=self.root, **({} if image_size is None else {"image_size": image_size}))

    def images(self, split: str, image_size: int) -> SplitImages:
        """A split's images at the tokenizer's input size (the training split cut to `limit`)."""
        return self.image_dataset(image_size).images(split, image_size, self.limit if split == "train" else None)


class ScoringSpec(StrictModel):
    """How generated samples are drawn and scored."""

    sampling: ScoringSampling = EvalSampling()
    """How samples are drawn; `preset: flexvar_eval` is FlexVAR's published evaluation (fields set next to it override it).
    `cfg: [0.5, 1.5, 2.5]` scores at every guidance weight and picks best_cfg on a second sample set
    (metrics.selection_seed); training's periodic evaluations use the first weight only."""
    metrics: MetricConfig = MetricConfig()
    figures: bool = True
    """Log the sample grid, the trajectory (Fig. 7) and, in training, the student-forcing rows (Fig. 8)."""

    def unread_fields(self) -> Unread:
        out = {**prefixed(("sampling",), self.sampling.unread_fields()),
               **prefixed(("metrics",), self.metrics.unread_fields())}
        if self.sampling.grid is None:
            out[("metrics", "selection_seed")] = "is only read with a guidance grid (sampling.cfg a list such as [0.5, 1.5, 2.5])"
        return out

    def conflicts(self, scales: tuple[int, ...]) -> list[tuple[FieldPath, str]]:
        """Against the schedule the evaluation generates with."""
        bad = [s for s in self.metrics.fid_at_scales if s not in scales]
        if bad:
            return [(("metrics", "fid_at_scales"), f"{bad} are not scales of the evaluated schedule {list(scales)}; "
                                                   f"pick from {list(scales)}")]
        return []


class EvalSpec(ScoringSpec):
    """Scoring during training."""

    every_steps: int = Field(0, ge=0)
    """Also evaluate every N training steps (0: only at the end); a multiple of checkpoint.every_steps."""
    at_end: bool = True
    select: SelectSpec | None = None
    """Pick the best checkpoint from the periodic evaluations by this rule (they then score a
    selection sample set of their own seed); `step:<name>@best` takes it. None: no selection."""
    continuation: ContinuationConfig | None = None
    """Continuation quality at the final evaluation (`cont/k<k>/<metric>`): real images' first k
    scales, the rest generated with `sampling` (at the best guidance of a grid), scored with
    `metrics`; None: not measured."""

    @property
    def evaluates(self) -> bool:
        return self.at_end or self.every_steps > 0

    @property
    def selection_metrics(self) -> MetricConfig | None:
        """The periodic evaluations' settings under a selection rule: the report's, on the selection seed."""
        return None if self.select is None else dataclasses.replace(self.metrics, seed=self.select.seed)

    def conflicts_with(self, checkpoint_every: int, steps: int | None) -> list[tuple[FieldPath, str]]:
        """A selection rule's periodic evaluations against the checkpoints (the picked weights must be
        kept) and the run's length (`steps`, None when given in epochs)."""
        out = []
        e, c = self.every_steps, checkpoint_every
        if self.select is None:
            return out
        if e and e % c:
            out.append((("every_steps",), f"{e} is not a multiple of checkpoint.every_steps = {c}: the selection rule "
                                          f"can only pick a kept checkpoint; use a multiple of {c} (e.g. "
                                          f"{-(-e // c) * c}) or a checkpoint.every_steps that divides {e}"))
        if not e:
            out.append((("select",), "needs periodic evaluations to choose from; set eval.every_steps "
                                     f"(a multiple of checkpoint.every_steps = {c})"))
        elif steps is not None and e > steps:
            out.append((("every_steps",), f"{e} is beyond optim.steps = {steps}: the selection rule would see no "
                                          f"evaluation; use at most {steps}"))
        if self.select.seed == self.metrics.seed:
            out.append((("select", "seed"), f"{self.select.seed} is eval.metrics.seed too: the selection samples must "
                                            "differ from the final evaluation's; pick another seed"))
        return out

    def unread_fields(self) -> Unread:
        if not self.evaluates:
            why = "is not read: this job never evaluates (eval.at_end is false and eval.every_steps is 0)"
            return {("sampling",): why, ("metrics",): why, ("figures",): why, ("continuation",): why}
        out = super().unread_fields()
        if not self.at_end:
            out[("continuation",)] = "is only read by the final evaluation (set eval.at_end: true)"
        return out

    def conflicts(self, scales: tuple[int, ...]) -> list[tuple[FieldPath, str]]:
        out = super().conflicts(scales)
        if self.continuation is not None:
            out += [(("continuation", f), why) for f, why in self.continuation.problems(len(scales), self.metrics).items()]
        return out


class TokenizerJob(JobCommon):
    kind: Literal["tokenizer"]
    model: TokenizerConfig
    data: DataSpec = DataSpec()
    optim: OptimSpec = OptimSpec(lr=2e-3, weight_decay=0.0, grad_clip=0.0, steps=500)
    checkpoint: CheckpointSpec = CheckpointSpec()
    log: LogSpec = LogSpec()
    eval_images: int = Field(512, ge=1)
    """Held-out test images for the final reconstruction error and codebook usage."""
    precision: Precision = "auto"

    def unread_fields(self) -> Unread:
        return {**super().unread_fields(), **prefixed(("data",), self.data.unread_fields(self.kind)),
                **prefixed(("optim",), self.optim.unread_fields()), **prefixed(("model",), self.model.unread_fields()),
                ("log", "diagnostics_every"): "is not read by tokenizer jobs (there is no train-test gap to measure)"}

    def summary(self) -> str:
        return f"tokenizer ({self.model.codebook_size} codes, {self.model.latent_size}x{self.model.latent_size} latent), " \
               f"{self.optim.length()}"


class TrainJob(JobCommon):
    kind: Literal["train"]
    references: ClassVar[dict[str, str]] = {"tokenizer": "tokenizer", "init_from": "generator"}
    tokenizer: PathOrURI
    """The tokenizer checkpoint (.safetensors) or `step:<name>` of a pipeline tokenizer step."""
    init_from: PathOrURI | None = None
    """Start from this generator checkpoint (or `step:<name>`): post-training. None: train from scratch."""
    model: GeneratorConfig | None = None
    """Required when training from scratch; must be left out with init_from (the checkpoint has it)."""
    schedule: ScheduleSpec
    objective: Objective = ObjectiveConfig()
    optim: OptimSpec = OptimSpec(steps=1000)
    data: DataSpec = DataSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    log: LogSpec = LogSpec()
    eval: EvalSpec = EvalSpec()
    probe: ProbeSpec = ProbeSpec()
    """The held-out batch and token sampler of the diagnostics and the student-forcing figure
    (set on the pipeline or sweep when the job is one of theirs)."""
    precision: Precision = "auto"

    def summary(self) -> str:
        schedule = "-".join(map(str, self.schedule.scales)) + (" random" if self.schedule.random else "")
        start = "" if self.init_from is not None else ", from scratch"
        return f"{self.objective.summary()}; {self.optim.length()}, schedule {schedule}{start}"

    @property
    def reads_probe(self) -> bool:
        return self.log.diagnostics_every > 0 or (self.eval.evaluates and self.eval.figures)

    def unread_fields(self) -> Unread:
        out = {**super().unread_fields(), **prefixed(("objective",), self.objective.unread_fields()),
               **prefixed(("optim",), self.optim.unread_fields()), **prefixed(("schedule",), self.schedule.unread_fields()),
               **prefixed(("eval",), self.eval.unread_fields()), **prefixed(("data",), self.data.unread_fields(self.kind))}
        if self.model is not None:
            out.update(prefixed(("model",), self.model.unread_fields()))
            out.update(prefixed(("objective",), unread_objective_fields(self.model.family)))
        if not self.reads_probe:
            out[("probe",)] = "is only read with log.diagnostics_every > 0 or evaluation figures"
        else:
            out.update(prefixed(("probe",), self.probe.unread_fields()))
        return out

    def conflicts(self) -> list[tuple[FieldPath, str]]:
        scales = self.schedule.scales
        out = [(("eval", *f), msg) for f, msg in self.eval.conflicts_with(self.checkpoint.every_steps, self.optim.steps)]
        if self.eval.evaluates:
            out += [(("eval", *f), msg) for f, msg in self.eval.conflicts(scales)]
        where = "schedule draws that end" if self.schedule.random else "schedule.scales, which ends"
        out += [(("objective", f), msg) for f, msg in self.objective.schedule_conflicts(self.schedule.smallest_last(), where)]
        if self.model is not None:
            generator = family(self.model.family).generator
            if (problem := generator.training_schedule_problem(self.model, scales, self.schedule.random)) is not None:
                out.append((("schedule",), problem))
        if len(scales) < 2:
            out.append((("schedule", "scales"), "training needs at least two scales (the first is predicted from the class "
                                                "token alone)"))
        if self.optim.batch_size % self.resources.num_workers:
            out.append((("optim", "batch_size"), f"{self.optim.batch_size} does not split evenly over "
                                                 f"resources.num_workers = {self.resources.num_workers}"))
        return out

    @model_validator(mode="after")
    def _model_xor_init(self):
        if self.init_from is None and self.model is None:
            raise ValueError("set model (to train from scratch) or init_from (a generator checkpoint to post-train)")
        if self.init_from is not None and self.model is not None:
            raise ValueError("init_from carries the model config: leave model out (or drop init_from)")
        return self


class EvalJob(JobCommon):
    kind: Literal["eval"]
    references: ClassVar[dict[str, str]] = {"generator": "generator", "tokenizer": "tokenizer"}
    generator: PathOrURI
    tokenizer: PathOrURI
    schedule: tuple[int, ...]
    """The scales to generate with (any schedule ending at the tokenizer's latent size)."""
    eval: ScoringSpec = ScoringSpec()
    data: DataSpec = DataSpec()
    """The data set whose real images are the reference (metrics.reference picks the split)."""
    precision: Precision = "auto"

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, v):
        ScaleSchedule(v)
        return v

    def unread_fields(self) -> Unread:
        return {**super().unread_fields(), **prefixed(("eval",), self.eval.unread_fields()),
                **prefixed(("data",), self.data.unread_fields(self.kind))}

    def conflicts(self) -> list[tuple[FieldPath, str]]:
        return [(("eval", *f), msg) for f, msg in self.eval.conflicts(self.schedule)]

    def summary(self) -> str:
        m, generator = self.eval.metrics, Path(self.generator)
        return f"scores {generator.parent.name}/{generator.name} ({m.num_samples} samples, {m.feature_network} features)"


class Domain(StrictModel):
    """One search dimension: exactly one of grid / choice / uniform / loguniform / randint."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        set_ = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {set_ or 'none'})")
        for k in ("uniform", "loguniform", "randint"):
            lo_hi = getattr(self, k)
            if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{k}: the low bound must be below the high bound, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        if (self.grid is not None and not self.grid) or (self.choice is not None and not self.choice):
            raise ValueError("grid / choice need at least one value")
        return self

    def candidates(self) -> list[Any]:
        """Values to check against the train spec before any trial runs."""
        for k in ("grid", "choice", "uniform", "loguniform", "randint"):
            if (v := getattr(self, k)) is not None:
                return list(v)
        return []


class AshaSpec(StrictModel):
    metric: str = "loss/total"
    """Reported at every training report: ASHA compares trials on it at each rung."""
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    """Rungs are counted in training reports (one per log.every_steps)."""


SWEEP_INHERITED = ("storage", "mlflow", "seed", "resources", "max_failures", "probe")
SHARED_BY_ALL = ("storage", "mlflow", "probe")
"""Set on a sweep or pipeline only: every trial / step shares them (probe: comparable diagnostics)."""


class SweepJob(JobCommon):
    kind: Literal["sweep"]
    train: TrainJob
    """The train job every trial starts from (`kind` and `name` may be left out; storage, MLflow,
    seed and resources come from the sweep)."""
    space: dict[str, Domain] = {}
    """Field paths of the train spec (e.g. objective.gamma) -> values to try (none: only `seeds`)."""
    metric: str = "fid"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(1, ge=1)
    """Repetitions of the grid (random domains draw new values each time)."""
    seeds: list[Seed] | None = None
    """Run every configuration once per seed (a grid over `seed`)."""
    scheduler: AshaSpec | None = None
    max_concurrent_trials: int = Field(1, ge=1)
    trial_retries: int = Field(1, ge=0, le=100)
    """Times Tune restarts a trial that failed (a lost worker or node, an unreachable service); the
    restart continues the trial from its last checkpoint and in its MLflow run."""
    probe: ProbeSpec = ProbeSpec()
    """The diagnostics probe every trial shares."""
    inner_fields: ClassVar[tuple[str, ...]] = ("train",)

    def summary(self) -> str:
        return f"sweep over {', '.join(self.space) or 'nothing'}" + (f" x seeds {self.seeds}" if self.seeds else "")

    @model_validator(mode="before")
    @classmethod
    def _train_base(cls, data):
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            train = dict(data["train"])
            for key in ("kind", *SHARED_BY_ALL):
                if key in train and not (key == "kind" and train[key] == "train"):
                    raise ValueError(f"train.{key}: set {key} on the sweep, not on its train spec")
            inherited = {k: data[k] for k in SWEEP_INHERITED if k in data and k not in train}
            data = {**data, "train": {"kind": "train", "name": data.get("name", "trial"), **inherited, **train}}
        return data

    @model_validator(mode="after")
    def _check_space(self):
        check_sweep(self)
        return self

    def candidate_trials(self):
        """(searched path, value, trial job) for every candidate value of every searched path."""
        for path, domain in self.space.items():
            for value in domain.candidates():
                yield path, value, trial_job(self, {path: value})

    def unread_fields(self) -> Unread:
        """The train spec's fields that no trial reads, and its own."""
        unread = self.train.unread_fields()
        for _, _, trial in self.candidate_trials():
            read_here = unread.keys() - trial.unread_fields().keys()
            unread = {k: v for k, v in unread.items() if k not in read_here}
        out = {**super().unread_fields(), **prefixed(("train",), unread)}
        if not self.train.reads_probe:
            out[("probe",)] = "is only read when the trials log diagnostics or evaluation figures"
        return {**out, **prefixed(("probe",), self.probe.unread_fields())}

    def conflicts(self) -> list[tuple[FieldPath, str]]:
        base = self.train.conflicts()
        out = [(("train", *f), msg) for f, msg in base]
        for path, value, trial in self.candidate_trials():
            out += [(("space", path), f"value {value!r}: {'.'.join(f)} {msg}") for f, msg in trial.conflicts()
                    if (f, msg) not in base]
        return out

    def step_references(self) -> list[tuple[str, str]]:
        return [(f"train.{field}", ref) for field, ref in self.train.step_references()]

    def resolve(self, outputs: dict[str, dict]):
        return self.model_copy(update={"train": self.train.resolve(outputs)})

    def inner_jobs(self) -> list[tuple[str, JobCommon]]:
        return [("train.", self.train)]


Step = Annotated[Union[TokenizerJob, TrainJob, EvalJob, SweepJob], Field(discriminator="kind")]
INHERITED = ("storage", "mlflow", "seed", "resources")
PROBE_READERS = ("train", "sweep")


class PipelineJob(JobCommon):
    kind: Literal["pipeline"]
    steps: dict[Name, Step]
    """Named steps, run in order; `step:<name>` in a later step uses that step's output (its last
    checkpoint; `step:<name>@best`: the one its eval.select rule chose; `@last`: the last, explicitly);
    `step:<pipeline>/<name>[@best|@last]` a step of another pipeline finished in the same workspace."""
    compare: list[Name] = []
    """Steps whose final metrics (FID, IS, precision, recall) are tabulated at the end, with their
    uncertainty (a sweep step with `seeds` is one arm per configuration, across its seeds)."""
    baseline: Name | None = None
    """The compared step every other one is measured against (differences with 95% intervals,
    paired by seed when both start from the same checkpoint)."""
    pairs: Literal["baseline", "all"] = "baseline"
    """Which differences the comparison shows: `baseline` every arm against `baseline`, `all` every
    pair of arms (later minus earlier). Holm's adjustment runs over the differences shown."""
    probe: ProbeSpec = ProbeSpec()
    """The diagnostics probe every train and sweep step shares."""
    inner_fields: ClassVar[tuple[str, ...]] = ("steps",)

    def summary(self) -> str:
        return "pipeline: " + " -> ".join(self.steps)

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data):
        """Steps share the pipeline's storage, MLflow and probe, and take its seed/resources unless
        they set their own."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
            return data
        steps = {}
        for name, step in data["steps"].items():
            if isinstance(step, dict):
                for key in SHARED_BY_ALL:
                    if key in step:
                        raise ValueError(f"steps.{name}.{key}: set {key} on the pipeline, not on a step")
                inherited = [*INHERITED, *(["probe"] if step.get("kind") in PROBE_READERS else [])]
                step = {"name": name, **{k: data[k] for k in inherited if k in data and k not in step}, **step}
            steps[name] = step
        return {**data, "steps": steps}

    def unread_fields(self) -> Unread:
        out = super().unread_fields()
        for name, step in self.steps.items():
            out.update(prefixed(("steps", name), step.unread_fields()))
        if not any(getattr(step, "reads_probe", False) or (step.kind == "sweep" and step.train.reads_probe)
                   for step in self.steps.values()):
            out[("probe",)] = "is only read by train or sweep steps that log diagnostics or evaluation figures"
        if not self.compare:
            out[("pairs",)] = "is only read with compare: [steps...]"
        return {**out, **prefixed(("probe",), self.probe.unread_fields())}

    def conflicts(self) -> list[tuple[FieldPath, str]]:
        return [(("steps", name, *f), msg) for name, step in self.steps.items() for f, msg in step.conflicts()]

    @model_validator(mode="after")
    def _references(self):
        seen: list[str] = []
        for name, step in self.steps.items():
            for field, ref in step.step_references():
                target, which = STEP_REF.match(ref).groups()
                if external_run(ref) is not None:  # another pipeline's: checked against the workspace before the run
                    continue
                if target not in seen:
                    raise ValueError(f"steps.{name}.{field}: {ref} does not name an earlier step (earlier: {seen or 'none'})")
                if which == "best" and getattr(getattr(self.steps[target], "eval", None), "select", None) is None:
                    raise ValueError(f"steps.{name}.{field}: {ref}: step {target} has no selection rule, so no best "
                                     f"checkpoint; give it eval.select (a train step) or use step:{target}@last")
            seen.append(name)
        for name in self.compare:
            if name not in self.steps:
                raise ValueError(f"compare: {name!r} is not a step")
        if self.baseline is not None and self.baseline not in self.compare:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the compared steps {self.compare}")
        if self.pairs == "all" and self.baseline is not None:
            raise ValueError(f"pairs: all compares every pair, so baseline: {self.baseline!r} would not be read; "
                             "drop one of them")
        return self

    def run_names(self, prefix: str = "") -> list[str]:
        return [n for step in self.steps.values() for n in step.run_names(f"{prefix}{self.name}.")]

    def external_steps(self) -> dict[str, str]:
        """`<pipeline>/<name>` -> run name of every other pipeline's step a step refers to."""
        return {STEP_REF.match(ref).group(1): run for step in self.steps.values()
                for _, ref in step.step_references() if (run := external_run(ref)) is not None}

    def inner_jobs(self) -> list[tuple[str, JobCommon]]:
        return [(f"steps.{name}.", step) for name, step in self.steps.items()]


Job = Annotated[Union[TokenizerJob, TrainJob, EvalJob, SweepJob, PipelineJob], Field(discriminator="kind")]


__all__ = [
    "DataSpec", "Domain", "EvalJob", "EvalSpec", "ScoringSpec", "Job", "PipelineJob", "Step", "SweepJob", "TokenizerJob", "TrainJob",
]
