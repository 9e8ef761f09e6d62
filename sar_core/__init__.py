"""sar_core: the maths of Self-Autoregressive Refinement, in plain PyTorch.

Scale schedules, the multi-scale VQ tokenizer, the FlexVAR-style generator, KV-cached sampling,
checkpoints and the FlexVAR importer. Nothing here imports Ray, MLflow or boto3.
"""
from sar_core.checkpoint import CheckpointError, load_model, read_header, save_model
from sar_core.generation import Generation, generate
from sar_core.generator import GeneratorConfig, ScaleGenerator
from sar_core.schedule import FLEXVAR_256, ScaleSchedule, ScheduleDraw, ScheduleError
from sar_core.token_sampling import SamplingConfig
from sar_core.tokenizer import MultiScaleVQ, TokenizerConfig

__all__ = [
    "CheckpointError", "FLEXVAR_256", "Generation", "GeneratorConfig", "MultiScaleVQ", "SamplingConfig",
    "ScaleGenerator", "ScaleSchedule", "ScheduleDraw", "ScheduleError", "TokenizerConfig", "generate",
    "load_model", "read_header", "save_model",
]
