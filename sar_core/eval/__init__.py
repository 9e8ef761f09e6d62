"""Evaluation: the paper's four metrics (FID, IS, precision, recall) and FID at an intermediate
scale (at one guidance weight or across a grid of them), the feature networks they are computed with (Fashion-MNIST classifier, TF-FID Inception-v3),
real reference statistics, the ADM `.npz` format, and the figures (sample grid, Fig. 7, Fig. 8).
"""
from sar_core.eval.config import FigureConfig, MetricConfig
from sar_core.eval.evaluate import EvalResult, evaluate, scale_key
from sar_core.eval.guidance import EvalSampling
from sar_core.eval.metrics import (GaussianStats, StreamingGaussian, frechet_distance, inception_score,
                                   manifold_radii, precision_recall)
from sar_core.eval.reference import HEADLINE_METRICS

__all__ = [
    "EvalResult", "EvalSampling", "FigureConfig", "GaussianStats", "HEADLINE_METRICS", "MetricConfig", "StreamingGaussian", "evaluate",
    "frechet_distance", "inception_score", "manifold_radii", "precision_recall", "scale_key",
]
