import argparse
import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from sar_core.checkpoint import CheckpointError, load_model
from sar_core.flexvar_import import (
    GENERATOR_RULES, TOKENIZER_RULES, generator_config_from, import_flexvar, rename, tokenizer_config_from,
)
from sar_core.generation import generate
from sar_core.generator import ScaleGenerator
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig
from sar_core.tokenizer import MultiScaleVQ
from tests.sar_core.flexvar_layout import generator_layout, vqvae_layout


def test_the_rebuilt_reference_layouts_match_the_published_counts():
    vq, vq_buffers = vqvae_layout()
    assert len(vq) == 344
    assert sum(math.prod(s) for k, s in vq.items() if k not in vq_buffers) == 72_049_827
    gen, gen_buffers = generator_layout(16)
    assert sum(math.prod(s) for k, s in gen.items() if k not in gen_buffers) == 315_561_936


def meta_state(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("depth", [16, 20, 24])
def test_full_size_generator_layout_maps_onto_our_model_name_for_name(depth):
    shapes, _ = generator_layout(depth)
    state = meta_state(shapes)
    config = generator_config_from(state)
    with torch.device("meta"):
        ours = ScaleGenerator(config).state_dict()
    renamed = rename(state, GENERATOR_RULES, "gen")
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {
        k: tuple(v.shape) for k, v in ours.items() if k != "codebook"
    }


def test_full_size_vqvae_layout_maps_onto_our_tokenizer_name_for_name():
    shapes, _ = vqvae_layout()
    state = meta_state(shapes)
    config = tokenizer_config_from(state)
    assert (config.base_channels, config.channel_mult, config.num_res_blocks, config.codebook_size) == (128, (1, 1, 2, 2, 4), 2, 8912)
    assert config.latent_size == 16
    with torch.device("meta"):
        ours = MultiScaleVQ(config).state_dict()
    renamed = rename(state, TOKENIZER_RULES, "vq")
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def random_state(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    for k in state:
        if k.endswith("zero_k_bias"):
            state[k].zero_()
    return state


@pytest.fixture
def small_reference_files(tmp_path):
    """A small FlexVAR pair in the published file formats (generator nested under 'trainer')."""
    gen_shapes, _ = generator_layout(depth=2, V=32, cvae=8, num_classes=10, pos_grid=8)
    vq_shapes, _ = vqvae_layout(base=32, mult=(1, 2), nres=1, z=32, V=32, cvae=8, in_ch=3)
    gen, vq = random_state(gen_shapes, 0), random_state(vq_shapes, 1)
    torch.save({"trainer": {"var_wo_ddp": gen}}, tmp_path / "FlexVARd2.pth")
    torch.save({"model": vq}, tmp_path / "FlexVAE.pth")
    return tmp_path / "FlexVARd2.pth", tmp_path / "FlexVAE.pth", gen, vq


def test_import_carries_every_weight_to_its_counterpart(small_reference_files, tmp_path):
    gen_path, vq_path, gen, vq = small_reference_files
    out_gen, out_tok = import_flexvar(gen_path, vq_path, tmp_path / "imported", image_size=16)
    model = load_model(out_gen, kind="generator")
    tok = load_model(out_tok, kind="tokenizer")
    ours = model.state_dict()
    torch.testing.assert_close(ours["blocks.1.attn.qkv.weight"], gen["blocks.1.attn.mat_qkv.weight"])
    torch.testing.assert_close(ours["blocks.0.attn.log_scale"], gen["blocks.0.attn.scale_mul_1H11"])
    torch.testing.assert_close(ours["blocks.0.ada_ln.1.weight"], gen["blocks.0.ada_lin.1.weight"])
    torch.testing.assert_close(ours["head_norm.ada_ln.1.bias"], gen["head_nm.ada_lin.1.bias"])
    torch.testing.assert_close(ours["start_pos"], gen["pos_start"])
    torch.testing.assert_close(ours["pos_grid"], gen["pos_1LC"])
    torch.testing.assert_close(tok.state_dict()["encoder.stages.1.blocks.0.skip.weight"], vq["encoder.conv_blocks.1.res.0.nin_shortcut.weight"])
    torch.testing.assert_close(tok.state_dict()["decoder.mid.attn.proj.bias"], vq["decoder.mid.1.proj_out.bias"])
    torch.testing.assert_close(tok.state_dict()["codebook.weight"], vq["quantize.embedding.weight"])
    # the generator builds its inputs with the tokenizer's unit-norm codebook
    torch.testing.assert_close(model.codebook, torch.nn.functional.normalize(vq["quantize.embedding.weight"], dim=-1))
    # and the imported pair generates end to end
    out = generate(model, tok, torch.tensor([0, 3]), ScaleSchedule((1, 2, 4, 8)), SamplingConfig(top_k=5),
                   rng=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 3, 16, 16)


def test_unknown_or_missing_reference_keys_fail_loudly(small_reference_files, tmp_path):
    gen_path, vq_path, gen, vq = small_reference_files
    torch.save({"model": {**vq, "quantize.extra_thing": torch.zeros(3)}}, tmp_path / "bad_vq.pth")
    with pytest.raises(CheckpointError, match="quantize.extra_thing"):
        import_flexvar(gen_path, tmp_path / "bad_vq.pth", tmp_path / "out")
    broken = {k: v for k, v in gen.items() if k != "blocks.1.ffn.fc2.bias"}
    torch.save(broken, tmp_path / "bad_gen.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): blocks\.1\.mlp\.fc2\.bias"):
        import_flexvar(tmp_path / "bad_gen.pth", vq_path, tmp_path / "out")


def optimizer_state(seed: int) -> dict:
    """A real AdamW state after one step, as a trainer's checkpoint holds it."""
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)))]
    opt = torch.optim.AdamW(params, lr=1e-4)
    params[0].sum().backward()
    opt.step()
    return opt.state_dict()


def published_layouts(gen, vq):
    """The two files as the reference's training code writes them: FlexVAR's trainer checkpoint
    (epoch, trainer config, optimizer and grad-scaler state, its arguments), and LlamaGen's VQ
    checkpoint (optimizers, a numpy step count, an argparse.Namespace with numpy values)."""
    generator_file = {
        "epoch": 180, "iter": 0,
        "trainer": {
            "config": {"patch_nums": (1, 2, 4, 8), "resos": (16, 32, 64, 128), "label_smooth": 0.0, "prog_it": 0,
                       "last_prog_si": -1, "first_prog": True},
            "var_wo_ddp": gen, "vae_local": vq,
            "var_opt": {"optimizer": optimizer_state(0), "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7}},
        },
        "args": OrderedDict(depth=2, tblr=1e-4, patch_nums="1_2_4_8", fp16=np.int64(1), twde=np.float64(0.05)),
    }
    vqvae_file = {
        "model": vq, "optimizer": optimizer_state(1), "discriminator": {"conv.weight": torch.zeros(2, 3)},
        "optimizer_disc": optimizer_state(2), "steps": np.int64(300_000),
        "args": argparse.Namespace(vq_model="VQ-16", codebook_size=32, lr=np.float32(1e-4), ema=True,
                                   mean=np.array([0.5, 0.5, 0.5]), image_size=256),
    }
    return generator_file, vqvae_file


def test_published_training_files_import_as_they_are(small_reference_files, tmp_path):
    _, _, gen, vq = small_reference_files
    generator_file, vqvae_file = published_layouts(gen, vq)
    torch.save(generator_file, tmp_path / "FlexVARd2-epo179.pth")
    torch.save(vqvae_file, tmp_path / "FlexVAE.pth")
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(tmp_path / "FlexVAE.pth", weights_only=True)  # a tensors-only load refuses them
    lines = []
    out_gen, out_tok = import_flexvar(tmp_path / "FlexVARd2-epo179.pth", tmp_path / "FlexVAE.pth", tmp_path / "out",
                                      image_size=16, report=lines.append)
    torch.testing.assert_close(load_model(out_gen, kind="generator").state_dict()["blocks.1.mlp.fc2.bias"], gen["blocks.1.ffn.fc2.bias"])
    torch.testing.assert_close(load_model(out_tok, kind="tokenizer").state_dict()["codebook.weight"], vq["quantize.embedding.weight"])
    assert lines == [
        "FlexVAE.pth: weights from ['model']; not imported: optimizer, discriminator, optimizer_disc, steps, args",
        "FlexVARd2-epo179.pth: weights from ['trainer']['var_wo_ddp']; not imported: epoch, iter, args, "
        "trainer.config, trainer.vae_local, trainer.var_opt",
    ]


class TrainingArguments:
    """An argument class of a training code base: a type outside the importer's allow-list."""

    built_from_checkpoints: list = []

    def __init__(self, **values):
        self.__dict__.update(values)

    def __setstate__(self, state):
        TrainingArguments.built_from_checkpoints.append(state)


def leave_mark(path: str) -> None:
    Path(path).write_text("code from a checkpoint ran")


class RunsCodeWhenUnpickled:
    """The classic pickle exploit: unpickling calls leave_mark(marker)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return leave_mark, (self.marker,)


class RunsCommandWhenUnpickled:
    """A poisoned published file: unpickling would run a shell command through os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_objects_of_unknown_types_are_skipped_unread_and_their_code_never_runs(small_reference_files, tmp_path):
    gen_path, vq_path, gen, _ = small_reference_files
    marker = tmp_path / "marker"
    torch.save({"trainer": {"var_wo_ddp": gen}, "args": TrainingArguments(depth=2, lr=1e-4),
                "callback": RunsCodeWhenUnpickled(marker)}, tmp_path / "gen.pth")
    lines = []
    out_gen, _ = import_flexvar(tmp_path / "gen.pth", vq_path, tmp_path / "out", image_size=16, report=lines.append)
    assert not marker.exists() and TrainingArguments.built_from_checkpoints == []
    here = "tests.sar_core.test_flexvar_import"
    assert lines[-1] == (f"gen.pth: weights from ['trainer']['var_wo_ddp']; not imported: args, callback; objects of "
                         f"unknown types skipped unread: {here}.TrainingArguments, {here}.leave_mark")
    torch.testing.assert_close(load_model(out_gen, kind="generator").state_dict()["head.weight"], gen["head.weight"])
    (tmp_path / "broken.pth").write_bytes((tmp_path / "gen.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="broken.pth: cannot be read as a weights-only PyTorch checkpoint"):
        import_flexvar(tmp_path / "broken.pth", vq_path, tmp_path / "out2")


def test_a_poisoned_published_file_is_refused_by_the_cli_with_exit_2_naming_file_and_type(
        small_reference_files, tmp_path, capsys):
    from sar_platform.cli import EXIT_SPEC_ERROR, main

    _, vq_path, gen, _ = small_reference_files
    marker = tmp_path / "marker"
    torch.save({"trainer": {"var_wo_ddp": gen}, "payload": RunsCommandWhenUnpickled(f"touch {marker}")},
               tmp_path / "poisoned.pth")
    status = main(["import-flexvar", "--generator", str(tmp_path / "poisoned.pth"), "--vqvae", str(vq_path),
                   "--out", str(tmp_path / "out"), "--image-size", "16"])
    error = capsys.readouterr().err
    assert status == EXIT_SPEC_ERROR and not marker.exists() and not (tmp_path / "out").exists()
    assert error.startswith("sar import-flexvar: refused: ") and "poisoned.pth" in error and "calls posix.system" in error, error
    assert "Traceback" not in error
