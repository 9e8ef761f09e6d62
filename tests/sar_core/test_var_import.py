"""`sar import-var` on files in FoundationVision/VAR's published layout, built here at small widths
(tests/sar_core/var_layout.py rebuilds the key names and shapes of any size)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sar_core.checkpoint import CheckpointError, load_model
from sar_core.flexvar_import import rename
from sar_core.generation import generate
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig
from sar_core.var_family import ResidualVQ, VarGenerator
from sar_core.var_import import (
    GENERATOR_RULES, generator_config_from, import_var, split_qkv, tokenizer_config_from, tokenizer_rules,
)
from tests.sar_core.test_flexvar_import import RunsCommandWhenUnpickled, TrainingArguments
from tests.sar_core.test_var_family import SCALES, Reference
from tests.sar_core.var_layout import PUBLISHED_SCALES, generator_layout, level_buffer, vqvae_layout

DERIVED = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias", "ema_vocab_hit_SV")
"""Buffers of the reference that are no weights (rebuilt from the schedule, or statistics)."""


def meta_state(shapes, scales=PUBLISHED_SCALES):
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    if "lvl_1L" in state:
        state["lvl_1L"] = level_buffer(scales)
    return state


@pytest.mark.parametrize("depth,shown,unit", [(16, 310, 1e6), (20, 600, 1e6), (24, 10, 1e8), (30, 20, 1e8)])
def test_full_size_generator_layouts_have_the_published_sizes_and_map_name_for_name(depth, shown, unit):
    shapes, buffers = generator_layout(depth)
    count = sum(math.prod(s) for k, s in shapes.items() if k not in buffers)
    assert math.floor(count / unit) == shown  # VAR's README table: 310M, 600M, 1.0B, 2.0B (digits cut, not rounded)
    state = meta_state(shapes)
    config = generator_config_from(state, phi_count=4)
    assert (config.scales, config.embed_dim, config.heads, config.vocab_size) == (PUBLISHED_SCALES, 64 * depth, depth, 4096)
    with torch.device("meta"):
        ours = VarGenerator(config).state_dict()
    renamed = rename(state, GENERATOR_RULES, "gen")
    frozen = {"codebook", "phi_weight", "phi_bias"}  # the tokenizer's, added by the importer
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in ours.items() if k not in frozen}


def test_the_full_size_vqvae_layout_maps_onto_the_residual_tokenizer_name_for_name():
    state = meta_state(vqvae_layout()[0])
    config = tokenizer_config_from(state, PUBLISHED_SCALES)
    assert (config.base_channels, config.channel_mult, config.z_channels, config.codebook_size, config.image_size,
            config.phi_count, config.phi_ratio) == (160, (1, 1, 2, 2, 4), 32, 4096, 256, 4, 0.5)
    with torch.device("meta"):
        ours = ResidualVQ(config).state_dict()
    renamed = split_qkv(rename(state, tokenizer_rules(5), "vq"))
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def published_state(shapes, seed, scales=SCALES):
    """Random weights in the published layout; the buffers hold what the reference puts there."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    for k in state:
        if k.endswith("zero_k_bias"):
            state[k].zero_()
    if "lvl_1L" in state:
        d = level_buffer(scales)
        state["lvl_1L"] = d
        state["attn_bias_for_masking"] = torch.where(d.T >= d, 0.0, -torch.inf).reshape(1, 1, d.shape[1], d.shape[1])
    if "quantize.embedding.weight" in state:
        state["quantize.embedding.weight"] = torch.randn(state["quantize.embedding.weight"].shape, generator=g)
    return state


def small_layouts(phi=4):
    gen, _ = generator_layout(depth=2, V=32, cvae=8, num_classes=10, scales=SCALES)
    vq, _ = vqvae_layout(ch=32, mult=(1, 2), nres=1, V=32, cvae=8, in_ch=3, phi=phi, num_scales=len(SCALES))
    return gen, vq


@pytest.fixture
def small_reference_files(tmp_path):
    """A small VAR pair as published: two bare state dicts."""
    gen_shapes, vq_shapes = small_layouts()
    gen, vq = published_state(gen_shapes, 0), published_state(vq_shapes, 1)
    torch.save(gen, tmp_path / "var_d2.pth")
    torch.save(vq, tmp_path / "vae_ch32v32z8.pth")
    return tmp_path / "var_d2.pth", tmp_path / "vae_ch32v32z8.pth", gen, vq


def weight_values(state, leave_out=()):
    """Every number of every weight, sorted: equal lists mean every weight was carried exactly once."""
    kept = [v.flatten() for k, v in state.items() if not k.endswith(DERIVED) and k not in leave_out]
    return torch.cat(kept).sort().values


def test_import_carries_every_weight_to_its_counterpart(small_reference_files, tmp_path):
    gen_path, vq_path, gen, vq = small_reference_files
    out_gen, out_tok = import_var(gen_path, vq_path, tmp_path / "imported")
    model, tok = load_model(out_gen, kind="generator"), load_model(out_tok, kind="tokenizer")
    assert (model.family, tok.family, model.config.scales, tok.config.image_size) == ("var", "var", SCALES, 16)
    ours_gen, ours_tok = model.state_dict(), tok.state_dict()
    assert torch.equal(weight_values(ours_gen, ("codebook", "phi_weight", "phi_bias")), weight_values(gen))
    assert torch.equal(weight_values(ours_tok), weight_values(vq))
    # the maps that are not plain renames
    assert torch.equal(ours_gen["pos_abs"], gen["pos_1LC"]) and torch.equal(ours_gen["level_embed.weight"], gen["lvl_embed.weight"])
    assert torch.equal(ours_gen["blocks.1.attn.log_scale"], gen["blocks.1.attn.scale_mul_1H11"])
    qkv, C = vq["decoder.mid.attn_1.qkv.weight"], 64
    for i, name in enumerate("qkv"):
        assert torch.equal(ours_tok[f"decoder.mid.attn.{name}.weight"], qkv[C * i: C * (i + 1)])
    assert torch.equal(ours_tok["decoder.stages.0.attns.1.proj.bias"], vq["decoder.up.1.attn.1.proj_out.bias"])
    assert torch.equal(ours_tok["decoder.stages.1.blocks.0.skip.weight"], vq["decoder.up.0.block.0.nin_shortcut.weight"])
    assert torch.equal(ours_tok["decoder.stages.0.resample.conv.weight"], vq["decoder.up.1.upsample.conv.weight"])
    assert torch.equal(ours_tok["encoder.stages.0.resample.conv.weight"], vq["encoder.down.0.downsample.conv.weight"])
    for k in range(4):
        assert torch.equal(ours_tok[f"phi.{k}.weight"], vq[f"quantize.quant_resi.qresi_ls.{k}.weight"])
        assert torch.equal(ours_gen["phi_weight"][k], vq[f"quantize.quant_resi.qresi_ls.{k}.weight"])
    assert torch.equal(ours_gen["codebook"], vq["quantize.embedding.weight"])  # L2 codes, not normalised


def reference_attention(x, state, prefix):
    """basic_vae.AttnBlock restated on the published tensors: one qkv conv, q/k/v in that order."""
    B, C, H, W = x.shape
    h = F.group_norm(x, 32, state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"], eps=1e-6)
    q, k, v = F.conv2d(h, state[f"{prefix}.qkv.weight"], state[f"{prefix}.qkv.bias"]).reshape(B, 3, C, H * W).unbind(1)
    w = (q.transpose(1, 2) @ k * C ** -0.5).softmax(dim=2)
    out = (v @ w.transpose(1, 2)).reshape(B, C, H, W)
    return x + F.conv2d(out, state[f"{prefix}.proj_out.weight"], state[f"{prefix}.proj_out.bias"])


@torch.no_grad()
def test_the_imported_models_compute_what_the_published_tensors_define(small_reference_files, tmp_path):
    gen_path, vq_path, gen, vq = small_reference_files
    out_gen, out_tok = import_var(gen_path, vq_path, tmp_path / "imported")
    model, tok = load_model(out_gen, kind="generator"), load_model(out_tok, kind="tokenizer")
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(tok.decoder.mid.attn(x), reference_attention(x, vq, "decoder.mid.attn_1"))
    # residual tokens, f-hat and teacher-forced inputs with the published codebook and phi (read from the file)
    published = SimpleNamespace(
        codebook=SimpleNamespace(weight=vq["quantize.embedding.weight"]), config=SimpleNamespace(phi_ratio=0.5),
        phi=[SimpleNamespace(weight=vq[f"quantize.quant_resi.qresi_ls.{k}.weight"], bias=vq[f"quantize.quant_resi.qresi_ls.{k}.bias"])
             for k in range(4)])
    ref = Reference(published, model)
    f = tok.encode_latent(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1)
    want_idx, want_fhat = ref.quantize(f)
    maps, f_hats = tok.residual_quantize(f)
    assert all(torch.equal(m.flatten(1), w) for m, w in zip(maps, want_idx))
    torch.testing.assert_close(f_hats[-1], want_fhat[-1])
    torch.testing.assert_close(model.inputs_from_maps(maps, ScaleSchedule(SCALES)), ref.teacher_inputs(want_idx))
    out = generate(model, tok, torch.tensor([0, 3]), ScaleSchedule(SCALES), SamplingConfig(top_k=5),
                   rng=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("layout,phi_count", [("qresi_ls", 2), ("per_scale", len(SCALES)), ("shared", 1)])
def test_every_phi_sharing_of_the_reference_imports(layout, phi_count, tmp_path):
    gen_shapes, vq_shapes = small_layouts(phi=0)
    prefix = {"qresi_ls": "quantize.quant_resi.qresi_ls.{}", "per_scale": "quantize.quant_resi.{}",
              "shared": "quantize.quant_resi.qresi"}[layout]
    for k in range(phi_count):
        vq_shapes[f"{prefix.format(k)}.weight"], vq_shapes[f"{prefix.format(k)}.bias"] = (8, 8, 3, 3), (8,)
    vq = published_state(vq_shapes, 2)
    torch.save(published_state(gen_shapes, 3), tmp_path / "g.pth")
    torch.save(vq, tmp_path / "v.pth")
    _, out_tok = import_var(tmp_path / "g.pth", tmp_path / "v.pth", tmp_path / "out")
    tok = load_model(out_tok, kind="tokenizer")
    assert tok.config.phi_count == phi_count and len(tok.phi) == phi_count
    assert torch.equal(tok.phi[phi_count - 1].bias, vq[f"{prefix.format(phi_count - 1)}.bias"])


def test_unknown_or_missing_reference_keys_fail_loudly(small_reference_files, tmp_path):
    gen_path, vq_path, gen, vq = small_reference_files
    torch.save({**vq, "quantize.extra_thing": torch.zeros(3)}, tmp_path / "bad_vq.pth")
    with pytest.raises(CheckpointError, match="quantize.extra_thing"):
        import_var(gen_path, tmp_path / "bad_vq.pth", tmp_path / "out")
    torch.save({k: v for k, v in vq.items() if k != "decoder.up.0.block.1.conv2.bias"}, tmp_path / "short_vq.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): decoder\.stages\.1\.blocks\.1\.conv2\.bias"):
        import_var(gen_path, tmp_path / "short_vq.pth", tmp_path / "out")
    torch.save({k: v for k, v in gen.items() if k != "lvl_embed.weight"}, tmp_path / "bad_gen.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): level_embed\.weight"):
        import_var(tmp_path / "bad_gen.pth", vq_path, tmp_path / "out")
    torch.save({**gen, "lvl_1L": level_buffer((1, 2, 3, 4, 6, 8)).flip(1)}, tmp_path / "bad_levels.pth")
    with pytest.raises(CheckpointError, match="lvl_1L is not a run of square level blocks"):
        import_var(tmp_path / "bad_levels.pth", vq_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_var_trainer_checkpoint_imports_and_says_what_it_left_out(small_reference_files, tmp_path):
    _, vq_path, gen, vq = small_reference_files
    torch.save({"epoch": 3, "iter": 0, "trainer": {"var_wo_ddp": gen, "vae_local": vq, "var_opt": {"scaler": {}}},
                "args": TrainingArguments(depth=2)}, tmp_path / "ar-ckpt-last.pth")
    lines = []
    out_gen, _ = import_var(tmp_path / "ar-ckpt-last.pth", vq_path, tmp_path / "out", report=lines.append)
    assert torch.equal(load_model(out_gen, kind="generator").state_dict()["head.bias"], gen["head.bias"])
    assert lines == [f"ar-ckpt-last.pth: weights from ['trainer']['var_wo_ddp']; not imported: epoch, iter, args, "
                     f"trainer.vae_local, trainer.var_opt; objects of unknown types skipped unread: "
                     f"tests.sar_core.test_flexvar_import.TrainingArguments"]


def test_a_poisoned_published_file_is_refused_by_the_cli_with_exit_2_naming_it(small_reference_files, tmp_path, capsys):
    from sar_platform.cli import EXIT_SPEC_ERROR, main

    gen_path, _, _, vq = small_reference_files
    marker = tmp_path / "marker"
    torch.save({**vq, "payload": RunsCommandWhenUnpickled(f"touch {marker}")}, tmp_path / "vae_poisoned.pth")
    status = main(["import-var", "--generator", str(gen_path), "--vqvae", str(tmp_path / "vae_poisoned.pth"),
                   "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == EXIT_SPEC_ERROR and not marker.exists() and not (tmp_path / "out").exists()
    assert error.startswith("sar import-var: refused: ") and "vae_poisoned.pth" in error and "calls posix.system" in error, error
    assert "Traceback" not in error


def test_the_cli_writes_both_checkpoints(small_reference_files, tmp_path, capsys):
    from sar_platform.cli import main

    gen_path, vq_path, _, _ = small_reference_files
    assert main(["import-var", "--generator", str(gen_path), "--vqvae", str(vq_path), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.endswith(f"generator -> {tmp_path / 'out/generator.safetensors'}\n"
                                            f"tokenizer -> {tmp_path / 'out/tokenizer.safetensors'}\n")
