"""bench/gpu_check.py, the GPU check prepared for a GPU machine: it runs end to end in its CPU smoke
mode and writes its JSON, and its model-FLOPs count is the one a FLOP counter measures."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sar_core import FLEXVAR_256, GeneratorConfig, ScaleGenerator, ScaleSchedule
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from gpu_check import PLATFORM_SPEC, attention_pairs, forward_flops, step_flops, synthetic_fashion_mnist  # noqa: E402


def test_the_smoke_check_runs_every_section_but_the_platform_and_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--sections", "train,attention,sampling,var"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["all_checks_pass"]
    train = result["train"]
    assert all(train[k]["step_ms"] > 0 and train[k]["images_per_s"] > 0 for k in ("tf", "sar", "paper"))
    assert train["step_flops"]["sar"] == 2 * train["step_flops"]["tf"] < train["step_flops"]["paper"]
    # every attention call is seen: 4 blocks in a train step's forward, 4 blocks x 6 scales when sampling
    assert result["attention"]["train_step"] == {"flash": 4} and result["attention"]["sampling"] == {"flash": 24}
    assert set(result["sampling"]) >= {"batch_4_cfg", "batch_4_no_cfg", "batch_8_cfg", "batch_8_no_cfg"}
    # the VAR step: its fixed schedule, f-hat inputs from the residual tokenizer's codebook and phi
    var = result["var"]
    assert var["schedule"] == "1-2-3-4-5-7" and all(var[k]["step_ms"] > 0 for k in ("tf", "sar", "paper"))
    assert var["checks"] == {"paper_loss_finite": True, "paper_gradient_reaches_every_block": True,
                             "sampled_images_finite": True}
    assert var["sampling_batch_4_var_eval"]["images_per_s"] > 0


def test_model_flops_are_the_counted_matmuls_plus_the_unmasked_attention():
    schedule = ScaleSchedule((1, 2, 3, 5, 7))
    assert attention_pairs(schedule) == int(schedule.block_causal_mask().sum())
    config = GeneratorConfig(depth=3, width=64, num_heads=2, num_classes=10, vocab_size=96, codebook_dim=8, pos_grid=8)
    model = ScaleGenerator(config).eval()
    idx = torch.randint(0, 96, (2, schedule.num_tokens))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_tokens(torch.tensor([1, 2]), idx, schedule)
    attention = 2 * config.depth * 4 * config.embed_dim * attention_pairs(schedule)  # the CPU kernel is not counted
    assert forward_flops(config, schedule, 2) - attention == counter.get_total_flops()
    d16 = GeneratorConfig()
    assert step_flops("tf", d16, FLEXVAR_256, 24) / 1e12 > 20  # ~21 TFLOP per d16 teacher-forcing step at batch 24


def test_the_platform_check_writes_a_valid_spec_and_readable_data(tmp_path):
    from sar_core.data.fashion_mnist import load_tensors
    from sar_platform.spec import load_job

    data = synthetic_fashion_mnist(tmp_path / "fmnist", n_train=40, n_test=8)
    images, labels = load_tensors("train", root=data)
    assert images.shape == (40, 1, 28, 28) and labels.tolist()[:3] == [0, 1, 2]
    spec = tmp_path / "spec.yaml"
    spec.write_text(PLATFORM_SPEC.format(gpus=1, precision="bf16", workspace=tmp_path / "ws", tokenizer=tmp_path / "t.safetensors",
                                         data=data, steps=30))
    job = load_job(spec)
    assert job.resources.gpus_per_worker == 1 and job.precision == "bf16" and job.objective.kind == "sar"


def run_check(*args, timeout=60):
    return subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_the_reference_comparison_refuses_a_missing_or_wrong_checkout_before_building_anything(tmp_path):
    no_repo = run_check("--sections", "reference", "--out", str(tmp_path / "a.json"))
    assert no_repo.returncode == 2 and "--flexvar-repo" in no_repo.stderr
    (tmp_path / "not_flexvar" / "models").mkdir(parents=True)
    (tmp_path / "not_flexvar" / "dist.py").write_text("")
    wrong = run_check("--flexvar-repo", str(tmp_path / "not_flexvar"), "--out", str(tmp_path / "b.json"))
    assert wrong.returncode == 2 and "not a FlexVAR checkout" in wrong.stderr and "models/flexvar.py" in wrong.stderr
    unknown = run_check("--sections", "train,speed", "--out", str(tmp_path / "c.json"))
    assert unknown.returncode == 2 and "unknown speed" in unknown.stderr
    assert not any(tmp_path.glob("*.json"))


@pytest.mark.skipif(not os.environ.get("FLEXVAR_REPO"), reason="needs a FlexVAR checkout in $FLEXVAR_REPO (none in CI: no network)")
def test_against_the_reference_code_both_decode_the_same_tokens_and_both_are_timed(tmp_path):
    out = tmp_path / "reference.json"
    proc = run_check("--sections", "reference", "--flexvar-repo", os.environ["FLEXVAR_REPO"], "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = json.loads(out.read_text())["reference"]
    assert reference["greedy_last_scale_agreement"] == 1.0
    assert reference["batch_2"]["ours_ms"] > 0 and reference["batch_2"]["reference_ms"] > 0
