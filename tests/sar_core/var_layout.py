"""The published FoundationVision/VAR state-dict layouts (key names and shapes), rebuilt for any size
from reading the reference's models/var.py, basic_var.py, vqvae.py, basic_vae.py and quant.py, so the
importer can be tested without downloading weights. `lvl_1L` is an integer buffer; its values are
`level_buffer(scales)`."""
from __future__ import annotations

import torch

from tests.sar_core.flexvar_layout import ConvShapes, adaln_blocks_and_head

PUBLISHED_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def level_buffer(scales) -> torch.Tensor:
    """(1, L) the level of every position, as the reference's `lvl_1L`."""
    return torch.cat([torch.full((s * s,), i) for i, s in enumerate(scales)]).view(1, -1)


def generator_layout(depth=16, V=4096, cvae=32, num_classes=1000, scales=PUBLISHED_SCALES, mlp_ratio=4):
    C, L = 64 * depth, sum(s * s for s in scales)
    shapes = {
        "word_embed.weight": (C, cvae),
        "word_embed.bias": (C,),
        "class_emb.weight": (num_classes + 1, C),
        "pos_start": (1, scales[0] ** 2, C),
        "pos_1LC": (1, L, C),
        "lvl_embed.weight": (len(scales), C),
    }
    shapes.update(adaln_blocks_and_head(depth, C, V, mlp_ratio))
    shapes.update({
        "lvl_1L": (1, L),
        "attn_bias_for_masking": (1, 1, L, L),
    })
    buffers = {"lvl_1L", "attn_bias_for_masking"} | {f"blocks.{i}.attn.zero_k_bias" for i in range(depth)}
    return shapes, buffers


def vqvae_layout(ch=160, mult=(1, 1, 2, 2, 4), nres=2, V=4096, cvae=32, in_ch=3, phi=4, num_scales=10):
    """`phi`: the number of partially shared phi convolutions (quantize.quant_resi.qresi_ls.*)."""
    shapes = ConvShapes()
    conv, norm, res = shapes.conv, shapes.norm, shapes.res

    def attn(name, c):
        norm(f"{name}.norm", c)
        conv(f"{name}.qkv", 3 * c, c, 1)
        conv(f"{name}.proj_out", c, c, 1)

    def mid(prefix, c):
        res(f"{prefix}.mid.block_1", c, c)
        attn(f"{prefix}.mid.attn_1", c)
        res(f"{prefix}.mid.block_2", c, c)

    levels = len(mult)
    conv("encoder.conv_in", ch, in_ch, 3)
    c = ch
    for i, m in enumerate(mult):
        for j in range(nres):
            res(f"encoder.down.{i}.block.{j}", c, ch * m)
            c = ch * m
            if i == levels - 1:
                attn(f"encoder.down.{i}.attn.{j}", c)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder", c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", cvae, c, 3)

    c = ch * mult[-1]
    conv("decoder.conv_in", c, cvae, 3)
    mid("decoder", c)
    for i in reversed(range(levels)):
        for j in range(nres + 1):
            res(f"decoder.up.{i}.block.{j}", c, ch * mult[i])
            c = ch * mult[i]
            if i == levels - 1:
                attn(f"decoder.up.{i}.attn.{j}", c)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", in_ch, c, 3)

    conv("quant_conv", cvae, cvae, 3)
    conv("post_quant_conv", cvae, cvae, 3)
    shapes["quantize.ema_vocab_hit_SV"] = (num_scales, V)
    shapes["quantize.embedding.weight"] = (V, cvae)
    for k in range(phi):
        conv(f"quantize.quant_resi.qresi_ls.{k}", cvae, cvae, 3)
    return shapes, {"quantize.ema_vocab_hit_SV"}
