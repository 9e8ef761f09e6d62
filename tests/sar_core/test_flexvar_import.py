import math

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
