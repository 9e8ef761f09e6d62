"""The published FlexVAR state-dict layouts (key names and shapes), rebuilt from the reference's
documented listing for any size, so the importer can be tested without downloading weights."""
from __future__ import annotations


def adaln_blocks_and_head(depth: int, C: int, V: int, mlp_ratio: int) -> dict[str, tuple]:
    """The AdaLN transformer blocks and head that FlexVAR and VAR share, key by key."""
    shapes = {}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.scale_mul_1H11": (1, depth, 1, 1),
            b + "attn.q_bias": (C,),
            b + "attn.v_bias": (C,),
            b + "attn.zero_k_bias": (C,),
            b + "attn.mat_qkv.weight": (3 * C, C),
            b + "attn.proj.weight": (C, C),
            b + "attn.proj.bias": (C,),
            b + "ffn.fc1.weight": (mlp_ratio * C, C),
            b + "ffn.fc1.bias": (mlp_ratio * C,),
            b + "ffn.fc2.weight": (C, mlp_ratio * C),
            b + "ffn.fc2.bias": (C,),
            b + "ada_lin.1.weight": (6 * C, C),
            b + "ada_lin.1.bias": (6 * C,),
        })
    shapes.update({
        "head_nm.ada_lin.1.weight": (2 * C, C),
        "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (V, C),
        "head.bias": (V,),
    })
    return shapes


def generator_layout(depth=16, V=8912, cvae=32, num_classes=1000, pos_grid=32, mlp_ratio=4):
    C = 64 * depth
    shapes = {
        "pos_start": (1, 1, C),
        "pos_1LC": (1, C, pos_grid, pos_grid),
        "attn_bias_for_masking": (1, 1, 680, 680),
        "word_embed.weight": (C, cvae),
        "word_embed.bias": (C,),
        "class_emb.weight": (num_classes + 1, C),
    }
    shapes.update(adaln_blocks_and_head(depth, C, V, mlp_ratio))
    buffers = {"attn_bias_for_masking"} | {f"blocks.{i}.attn.zero_k_bias" for i in range(depth)}
    return shapes, buffers


class ConvShapes(dict):
    """Key -> shape of a convolutional VQ-VAE, added layer by layer. FlexVAR's and VAR's VQ-VAEs share
    these layers and differ in their names and in how attention holds q, k and v."""

    def conv(self, name: str, cout: int, cin: int, k: int) -> None:
        self[f"{name}.weight"], self[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(self, name: str, c: int) -> None:
        self[f"{name}.weight"], self[f"{name}.bias"] = (c,), (c,)

    def res(self, name: str, cin: int, cout: int) -> None:
        self.norm(f"{name}.norm1", cin)
        self.conv(f"{name}.conv1", cout, cin, 3)
        self.norm(f"{name}.norm2", cout)
        self.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            self.conv(f"{name}.nin_shortcut", cout, cin, 1)


def vqvae_layout(base=128, mult=(1, 1, 2, 2, 4), nres=2, z=256, V=8912, cvae=32, in_ch=3):
    shapes = ConvShapes()
    conv, norm, res = shapes.conv, shapes.norm, shapes.res

    def attn(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    def mid(prefix, c):
        res(f"{prefix}.mid.0", c, c)
        attn(f"{prefix}.mid.1", c)
        res(f"{prefix}.mid.2", c, c)

    conv("encoder.conv_in", base, in_ch, 3)
    c = base
    for i, m in enumerate(mult):
        for j in range(nres):
            res(f"encoder.conv_blocks.{i}.res.{j}", c, base * m)
            c = base * m
            if i == len(mult) - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", c)
        if i != len(mult) - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", c, c, 3)
    mid("encoder", c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", z, c, 3)

    c = base * mult[-1]
    conv("decoder.conv_in", c, z, 3)
    mid("decoder", c)
    for i, m in enumerate(reversed(mult)):
        for j in range(nres + 1):
            res(f"decoder.conv_blocks.{i}.res.{j}", c, base * m)
            c = base * m
            if i == 0:
                attn(f"decoder.conv_blocks.{i}.attn.{j}", c)
        if i != len(mult) - 1:
            conv(f"decoder.conv_blocks.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", in_ch, c, 3)

    shapes["quantize.codebook_used"] = (65536,)
    shapes["quantize.embedding.weight"] = (V, cvae)
    conv("quant_conv", cvae, z, 1)
    conv("post_quant_conv", z, cvae, 1)
    return shapes, {"quantize.codebook_used"}
