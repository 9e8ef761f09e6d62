import pytest
import torch
import torch.nn.functional as F

from sar_core.tokenizer import MultiScaleVQ, TokenizerConfig, codebook_perplexity, upsample_codes
from sar_core.schedule import ScaleSchedule, ScheduleError


def test_tokenize_gives_one_map_per_scale_from_the_area_resized_latent(tokenizer, schedule):
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    maps = tokenizer.tokenize(x, schedule)
    assert [m.shape for m in maps] == [(3, s, s) for s in schedule]
    assert all(m.dtype == torch.int64 and 0 <= int(m.min()) and int(m.max()) < 64 for m in maps)
    # the 2x2 ground truth is the latent area-resized to 2x2 and quantised on its own
    f = F.interpolate(tokenizer.encode_latent(x), size=(2, 2), mode="area")
    assert torch.equal(maps[1], tokenizer.quantize(f).idx)
    assert tokenizer.tokenize_flat(x, schedule).shape == (3, schedule.num_tokens)


def test_every_scale_decodes_to_an_image(tokenizer):
    for s in (1, 3, 7):
        img = tokenizer.decode_tokens(torch.randint(0, 64, (2, s, s)))
        assert img.shape == (2, 1, 4 * s, 4 * s) and img.dtype == torch.float32


def test_next_scale_input_is_the_bicubic_upsampled_code_vectors(tokenizer):
    codes = tokenizer.normalized_codebook()
    idx = torch.randint(0, 64, (2, 3, 3))
    up = upsample_codes(codes, idx, 5)
    manual = F.interpolate(codes[idx].permute(0, 3, 1, 2), size=(5, 5), mode="bicubic")
    assert torch.allclose(up, manual.flatten(2).transpose(1, 2))


def test_bad_inputs_and_configs_give_clear_errors(tokenizer):
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 28, 28\)"):
        tokenizer.encode_latent(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ScheduleError, match="latent is 7x7"):
        tokenizer.tokenize(torch.zeros(1, 1, 28, 28), ScaleSchedule((1, 2, 4)))
    with pytest.raises(ValueError, match="not divisible by the encoder's downsampling"):
        TokenizerConfig(image_size=30, channel_mult=(1, 2, 2))


def test_short_training_on_fashion_mnist_reconstructs_markedly_better(fmnist_small):
    (train_x, _), (test_x, _) = fmnist_small
    torch.manual_seed(0)
    cfg = TokenizerConfig(image_size=28, in_channels=1, base_channels=16, channel_mult=(1, 2, 2),
                          num_res_blocks=1, z_channels=32, codebook_size=256, codebook_dim=8,
                          norm_groups=8, attention=False)
    tok = MultiScaleVQ(cfg)

    def test_mse():
        with torch.no_grad():
            tok.eval()
            recon, _, metrics = tok(test_x[:256])
            tok.train()
            return F.mse_loss(recon, test_x[:256]).item(), metrics

    before, _ = test_mse()
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        batch = train_x[torch.randint(0, len(train_x), (32,), generator=gen)]
        _, loss, _ = tok(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, metrics = test_mse()
    print(f"tokenizer test MSE: init {before:.4f} -> trained {after:.4f}; usage {float(metrics['codebook_usage']):.2f}")
    assert after < 0.35 * before
    assert 0 < float(metrics["codebook_usage"]) <= 1
    idx = tok.tokenize_flat(test_x[:64], ScaleSchedule((1, 2, 3, 5, 7)))
    assert codebook_perplexity(idx, 256) > 4  # the codes are actually used, not collapsed to a few
