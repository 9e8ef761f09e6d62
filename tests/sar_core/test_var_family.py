"""The VAR family against FoundationVision/VAR's definitions.

The reference code cannot be imported here (it needs its repository, CUDA-only extras and a
distributed setup), so `Reference` below restates its math from reading models/quant.py (residual
quantisation, `idxBl_to_var_input`, `get_next_autoregressive_input`, the phi ticks), models/var.py
(`forward`, `autoregressive_infer_cfg`) and models/basic_var.py (the AdaLN block and head), written
independently of the project's modules: plain tensor operations on the project's weights, no KV
cache, positions indexed as one (1, L, C) table. Weights are random (the near-identity
initialisation perturbed), so every term of the math shows in the numbers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sar_core.families import build_generator, build_tokenizer
from sar_core.generation import generate
from sar_core.generator import GeneratorConfig
from sar_core.objectives import ObjectiveConfig, OBJECTIVE_KINDS, TokenBatch, build_objective
from sar_core.schedule import ScaleSchedule, ScheduleError
from sar_core.token_sampling import SamplingConfig
from sar_core.tokenizer import TokenizerConfig

SCALES = (1, 2, 3, 4, 6, 8)


def var_models(phi_count=4, seed=0):
    torch.manual_seed(seed)
    tc = TokenizerConfig(image_size=16, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4,
                         codebook_size=24, codebook_dim=4, norm_groups=4, attention=False, family="var", scales=SCALES,
                         phi_count=phi_count)
    tokenizer = build_tokenizer(tc).eval()
    with torch.no_grad():
        tokenizer.codebook.weight.normal_()
        for p in tokenizer.phi.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    gc = GeneratorConfig(depth=2, width=32, num_heads=2, num_classes=5, vocab_size=24, codebook_dim=4, family="var",
                         scales=SCALES, phi_count=phi_count)
    generator = build_generator(gc).attach_tokenizer(tokenizer).eval()
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return tokenizer, generator


def images(n=3, seed=1):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Reference:
    """VAR's definitions, restated (see the module docstring)."""

    def __init__(self, tokenizer, generator):
        self.emb = tokenizer.codebook.weight.detach()
        self.phis = [(p.weight.detach(), p.bias.detach()) for p in tokenizer.phi]
        self.ratio = tokenizer.config.phi_ratio
        self.g = generator
        self.pn = SCALES

    def phi(self, si, h):
        K, SN = len(self.phis), len(self.pn)
        ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
        w, b = self.phis[int(np.argmin(np.abs(ticks - si / (SN - 1))))]
        return h * (1 - self.ratio) + F.conv2d(h, w, b, padding=1) * self.ratio

    def up(self, idx_Bl, si):
        B, pn, H = idx_Bl.shape[0], self.pn[si], self.pn[-1]
        h = self.emb[idx_Bl].transpose(1, 2).reshape(B, -1, pn, pn)
        return h if si == len(self.pn) - 1 else F.interpolate(h, size=(H, H), mode="bicubic")

    def quantize(self, f):
        """f_to_idxBl_or_fhat: (token lists (B, pn^2), f-hat after every scale)."""
        rest, f_hat, idx_out, fhat_out = f.clone(), torch.zeros_like(f), [], []
        B, C = f.shape[:2]
        for si, pn in enumerate(self.pn):
            z = rest if si == len(self.pn) - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            z_NC = z.permute(0, 2, 3, 1).reshape(-1, C)
            d = z_NC.square().sum(1, keepdim=True) + self.emb.square().sum(1) - 2 * z_NC @ self.emb.T
            idx = d.argmin(1).reshape(B, pn * pn)
            h = self.phi(si, self.up(idx, si))
            f_hat, rest = f_hat + h, rest - h
            idx_out.append(idx)
            fhat_out.append(f_hat)
        return idx_out, fhat_out

    def teacher_inputs(self, idx_list):
        """idxBl_to_var_input."""
        B, H, out = idx_list[0].shape[0], self.pn[-1], []
        f_hat = torch.zeros(B, self.emb.shape[1], H, H)
        for si in range(len(self.pn) - 1):
            f_hat = f_hat + self.phi(si, self.up(idx_list[si], si))
            nxt = self.pn[si + 1]
            out.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(out, 1)

    def logits(self, label_B, x_BlCv):
        """VAR.forward on the first 1 + l positions (no class dropout: eval)."""
        g, sd = self.g, {k: v.detach() for k, v in self.g.state_dict().items()}
        C, H = g.config.embed_dim, g.config.heads
        L = 1 + x_BlCv.shape[1]
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.pn)])[:L]
        cond = sd["class_embed.weight"][label_B]
        x = torch.cat([cond[:, None] + sd["start_pos"], F.linear(x_BlCv, sd["token_embed.weight"], sd["token_embed.bias"])], 1)
        x = x + sd["level_embed.weight"][lvl] + sd["pos_abs"][:, :L]
        bias = torch.where(lvl[:, None] >= lvl[None], 0.0, -torch.inf)
        ln = lambda t: F.layer_norm(t, (C,), eps=1e-6)
        for i in range(g.config.depth):
            p = lambda n: sd[f"blocks.{i}.{n}"]
            g1, g2, s1, s2, b1, b2 = F.linear(F.silu(cond), p("ada_ln.1.weight"), p("ada_ln.1.bias"))[:, None].chunk(6, -1)
            h = ln(x) * (1 + s1) + b1
            B = h.shape[0]
            qkv = F.linear(h, p("attn.qkv.weight"), torch.cat([p("attn.q_bias"), torch.zeros(C), p("attn.v_bias")]))
            q, k, v = qkv.view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4)
            q = F.normalize(q, dim=-1) * p("attn.log_scale").clamp_max(math.log(100)).exp()
            k = F.normalize(k, dim=-1)
            a = ((q @ k.transpose(-1, -2)) + bias).softmax(-1) @ v
            x = x + F.linear(a.transpose(1, 2).reshape(B, L, C), p("attn.proj.weight"), p("attn.proj.bias")) * g1
            h = ln(x) * (1 + s2) + b2
            m = F.linear(F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias")), approximate="tanh"),
                         p("mlp.fc2.weight"), p("mlp.fc2.bias"))
            x = x + m * g2
        scale, shift = F.linear(F.silu(cond), sd["head_norm.ada_ln.1.weight"], sd["head_norm.ada_ln.1.bias"])[:, None].chunk(2, -1)
        return F.linear(ln(x) * (1 + scale) + shift, sd["head.weight"], sd["head.bias"])

    def greedy_guided(self, label_B, cfg):
        """autoregressive_infer_cfg with top_k = 1, recomputing the whole prefix per scale (no cache)."""
        B, SN, H = label_B.shape[0], len(self.pn), self.pn[-1]
        labels = torch.cat([label_B, torch.full_like(label_B, self.g.config.num_classes)])
        f_hat, inputs, out = torch.zeros(B, self.emb.shape[1], H, H), [], []
        for si, pn in enumerate(self.pn):
            x = torch.cat(inputs, 1) if inputs else torch.zeros(B, 0, self.emb.shape[1])
            logits = self.logits(labels, torch.cat([x, x]))[:, -pn * pn:]
            t = cfg * si / (SN - 1)
            guided = (1 + t) * logits[:B] - t * logits[B:]
            idx = guided.argmax(-1)
            out.append(idx)
            f_hat = f_hat + self.phi(si, self.up(idx, si))
            if si < SN - 1:
                nxt = self.pn[si + 1]
                inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return out, f_hat


@pytest.fixture(scope="module", params=[4, 0, 1], ids=["phi4", "phi_per_scale", "phi_shared"])
def models(request):
    return var_models(phi_count=request.param, seed=3)


@torch.no_grad()
def test_residual_tokens_and_f_hat_match_the_reference(models):
    tokenizer, generator = models
    ref = Reference(tokenizer, generator)
    f = tokenizer.encode_latent(images())
    want_idx, want_fhat = ref.quantize(f)
    maps, f_hats = tokenizer.residual_quantize(f)
    for ours, theirs in zip(maps, want_idx):
        assert torch.equal(ours.flatten(1), theirs)
    for ours, theirs in zip(f_hats, want_fhat):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_teacher_forced_inputs_and_logits_match_the_reference(models):
    tokenizer, generator = models
    ref = Reference(tokenizer, generator)
    schedule = ScaleSchedule(SCALES)
    idx_BL = tokenizer.tokenize_flat(images(), schedule)
    x = generator.scale_inputs(idx_BL, schedule)
    torch.testing.assert_close(x, ref.teacher_inputs(schedule.split(idx_BL)), rtol=1e-5, atol=1e-5)
    labels = torch.tensor([0, 3, 4])
    torch.testing.assert_close(generator(labels, x, schedule), ref.logits(labels, x), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_greedy_guided_sampling_matches_the_reference_token_for_token(models):
    tokenizer, generator = models
    labels = torch.tensor([0, 2, 4, 1])
    want, want_fhat = Reference(tokenizer, generator).greedy_guided(labels, cfg=1.5)
    out = generate(generator, tokenizer, labels, ScaleSchedule(SCALES), SamplingConfig(cfg=1.5, cfg_ramp="linear", top_k=1))
    for ours, theirs in zip(out.token_maps, want):
        assert torch.equal(ours.flatten(1), theirs)
    torch.testing.assert_close(out.images, tokenizer.decode_latent(want_fhat).clamp(-1, 1), rtol=1e-4, atol=1e-4)


def test_the_var_generator_refuses_schedules_its_positions_do_not_cover():
    _, generator = var_models()
    with pytest.raises(ScheduleError, match="fixed schedule 1-2-3-4-6-8"):
        generator(torch.tensor([0]), torch.zeros(1, 4 + 9 + 25 + 64, 4), ScaleSchedule((1, 2, 3, 5, 8)))
    assert GeneratorConfig(family="var", scales=SCALES).unread_fields() == {
        "pos_grid": "is only read by family: flexvar (here family: var; remove it)"}


def test_staggered_inputs_keep_the_ground_truth_below_the_drawn_scale():
    """Student input of scale k+1 = f-hat of GT maps 1..k-1 plus the drawn map k; `own_draws`
    accumulates the drawn maps alone; a drawn map equal to the ground truth gives teacher forcing."""
    tokenizer, generator = var_models()
    schedule = ScaleSchedule(SCALES)
    with torch.no_grad():
        gt = schedule.split(tokenizer.tokenize_flat(images(2), schedule))
        drawn = [torch.randint(0, 24, m.shape, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(gt)]
        tf = generator.inputs_from_maps(gt, schedule)
        torch.testing.assert_close(generator.staggered_inputs(gt, gt, schedule, "ground_truth_below"), tf)
        stag = generator.staggered_inputs(gt, drawn, schedule, "ground_truth_below")
        k = 3  # the input of scale k+1 (0-based) mixes GT maps 0..k-1 and drawn map k
        mixed = gt[:k] + [drawn[k]]
        want = generator.inputs_from_maps(mixed + gt[k + 1:], schedule)
        sl = slice(sum(schedule.token_counts[1:k + 1]), sum(schedule.token_counts[1:k + 2]))
        torch.testing.assert_close(stag[:, sl], want[:, sl])
        torch.testing.assert_close(generator.staggered_inputs(gt, drawn, schedule, "own_draws"),
                                   generator.inputs_from_maps(drawn, schedule))


@pytest.mark.parametrize("config", [ObjectiveConfig(kind=k, sampling="argmax" if k == "tf" else "cfg", hybrid_scale=4)
                                    if k != "tf" else ObjectiveConfig() for k in OBJECTIVE_KINDS]
                         + [ObjectiveConfig.from_preset("released_code"),
                            ObjectiveConfig.from_preset("paper", residual_context="own_draws")],
                         ids=[*OBJECTIVE_KINDS, "released_code", "paper_own_draws"])
def test_every_objective_kind_trains_a_var_generator(config):
    tokenizer, generator = var_models()
    generator.train()
    schedule = ScaleSchedule(SCALES)
    with torch.no_grad():
        batch = TokenBatch(torch.tensor([0, 1]), tokenizer.tokenize_flat(images(2), schedule), schedule)
    out = build_objective(config)(generator, batch, 1, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and generator.head.weight.grad.abs().sum() > 0


def test_the_residual_tokenizer_trains_on_reconstruction_and_vq_losses():
    tokenizer, _ = var_models()
    tokenizer.train()
    recon, loss, metrics = tokenizer(images(2))
    loss.backward()
    assert recon.shape == (2, 1, 16, 16) and 0 < float(metrics["codebook_usage"]) <= 1
    assert tokenizer.codebook.weight.grad.abs().sum() > 0 and tokenizer.phi[0].weight.grad is not None
    assert tokenizer.encoder.stem.weight.grad.abs().sum() > 0
