"""The FID Inception-v3: pytorch-fid's weight-file layout loads by name (a synthetic state dict with
random weights, built here from the published architecture), and the FID-specific behaviour."""
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sar_core.eval.inception import InceptionV3FID, WeightsError, load_inception, tf_avg_pool


def conv(name, c_in, c_out, kh, kw=None):
    """The tensors of one conv+BN unit as pt_inception-2015-12-05 stores them."""
    kw = kh if kw is None else kw
    return {f"{name}.conv.weight": (c_out, c_in, kh, kw), f"{name}.bn.weight": (c_out,), f"{name}.bn.bias": (c_out,),
            f"{name}.bn.running_mean": (c_out,), f"{name}.bn.running_var": (c_out,)}


def block_a(p, c_in, pool):
    return {**conv(f"{p}.branch1x1", c_in, 64, 1), **conv(f"{p}.branch5x5_1", c_in, 48, 1), **conv(f"{p}.branch5x5_2", 48, 64, 5),
            **conv(f"{p}.branch3x3dbl_1", c_in, 64, 1), **conv(f"{p}.branch3x3dbl_2", 64, 96, 3),
            **conv(f"{p}.branch3x3dbl_3", 96, 96, 3), **conv(f"{p}.branch_pool", c_in, pool, 1)}


def block_c(p, c7):
    return {**conv(f"{p}.branch1x1", 768, 192, 1), **conv(f"{p}.branch7x7_1", 768, c7, 1), **conv(f"{p}.branch7x7_2", c7, c7, 1, 7),
            **conv(f"{p}.branch7x7_3", c7, 192, 7, 1), **conv(f"{p}.branch7x7dbl_1", 768, c7, 1),
            **conv(f"{p}.branch7x7dbl_2", c7, c7, 7, 1), **conv(f"{p}.branch7x7dbl_3", c7, c7, 1, 7),
            **conv(f"{p}.branch7x7dbl_4", c7, c7, 7, 1), **conv(f"{p}.branch7x7dbl_5", c7, 192, 1, 7),
            **conv(f"{p}.branch_pool", 768, 192, 1)}


def block_e(p, c_in):
    return {**conv(f"{p}.branch1x1", c_in, 320, 1), **conv(f"{p}.branch3x3_1", c_in, 384, 1),
            **conv(f"{p}.branch3x3_2a", 384, 384, 1, 3), **conv(f"{p}.branch3x3_2b", 384, 384, 3, 1),
            **conv(f"{p}.branch3x3dbl_1", c_in, 448, 1), **conv(f"{p}.branch3x3dbl_2", 448, 384, 3),
            **conv(f"{p}.branch3x3dbl_3a", 384, 384, 1, 3), **conv(f"{p}.branch3x3dbl_3b", 384, 384, 3, 1),
            **conv(f"{p}.branch_pool", c_in, 192, 1)}


@functools.cache
def pt_inception_layout() -> dict[str, tuple[int, ...]]:
    """Names and shapes of pt_inception-2015-12-05-6726825d.pth (TF-FID Inception, 1008 classes)."""
    shapes = {**conv("Conv2d_1a_3x3", 3, 32, 3), **conv("Conv2d_2a_3x3", 32, 32, 3), **conv("Conv2d_2b_3x3", 32, 64, 3),
              **conv("Conv2d_3b_1x1", 64, 80, 1), **conv("Conv2d_4a_3x3", 80, 192, 3),
              **block_a("Mixed_5b", 192, 32), **block_a("Mixed_5c", 256, 64), **block_a("Mixed_5d", 288, 64),
              **conv("Mixed_6a.branch3x3", 288, 384, 3), **conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1),
              **conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3), **conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3),
              **block_c("Mixed_6b", 128), **block_c("Mixed_6c", 160), **block_c("Mixed_6d", 160), **block_c("Mixed_6e", 192),
              **conv("Mixed_7a.branch3x3_1", 768, 192, 1), **conv("Mixed_7a.branch3x3_2", 192, 320, 3),
              **conv("Mixed_7a.branch7x7x3_1", 768, 192, 1), **conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
              **conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), **conv("Mixed_7a.branch7x7x3_4", 192, 192, 3),
              **block_e("Mixed_7b", 1280), **block_e("Mixed_7c", 2048),
              "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    return shapes


def synthetic_state(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in pt_inception_layout().items():
        if name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("bn.weight"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * 0.1
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "pt_inception-synthetic.pth"
    torch.save(synthetic_state(), path)  # no num_batches_tracked, like files from older PyTorch
    return path


@pytest.fixture(scope="module")
def inception(weights_file):
    return load_inception(str(weights_file))


def test_the_module_has_exactly_the_weight_files_names_and_shapes():
    own = {k: tuple(v.shape) for k, v in InceptionV3FID().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert own == pt_inception_layout()
    assert sum(int(torch.tensor(s).prod()) for s in own.values()) > 20_000_000  # ~23.9M in the file


def test_the_synthetic_file_loads_by_name_and_features_have_the_standard_shapes(inception, weights_file):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    feats, logits = inception(x)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert (feats >= 0).all()  # a global average of ReLU outputs
    state = torch.load(weights_file, weights_only=True)
    assert torch.equal(inception.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert inception.fingerprint.startswith("inception-v3-fid:")


def test_logits_are_pool3_times_the_fc_weight_without_bias(inception):
    feats, logits = inception(torch.zeros(1, 3, 32, 32))
    torch.testing.assert_close(logits, feats @ inception.fc.weight.T)
    assert inception.fc.bias.abs().sum() > 0  # the file has a bias; the ADM evaluator does not use it


def test_inputs_are_resized_bilinearly_to_299_and_grey_is_replicated(inception):
    x = torch.rand(1, 1, 40, 40) * 2 - 1
    resized = F.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(inception(x)[0], inception(resized)[0], rtol=1e-5, atol=1e-5)


def test_tf_average_pool_ignores_padding():
    out = tf_avg_pool(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))  # counting padded zeros would give 4/9 in corners
    assert InceptionV3FID().Mixed_7c.max_pool and not InceptionV3FID().Mixed_7b.max_pool


def test_a_missing_tensor_is_reported_by_name(tmp_path):
    state = synthetic_state()
    del state["Mixed_6e.branch7x7dbl_5.conv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="Mixed_6e.branch7x7dbl_5.conv.weight"):
        load_inception(str(path))


def test_file_uri_hash_checked_names_and_clear_errors(weights_file, tmp_path):
    assert load_inception(weights_file.as_uri()).fingerprint == load_inception(str(weights_file)).fingerprint
    misnamed = tmp_path / "pt_inception-2015-12-05-deadbeef.pth"
    misnamed.write_bytes(weights_file.read_bytes())
    with pytest.raises(WeightsError, match="SHA-256"):
        load_inception(str(misnamed))
    with pytest.raises(WeightsError, match="not found"):
        load_inception(str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_inception("")


def test_http_weights_need_allow_download_and_land_in_the_cache(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SAR_DATA_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(weights_file.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{weights_file.name}"
    try:
        with pytest.raises(WeightsError, match="allow_download"):
            load_inception(url)
        model = load_inception(url, allow_download=True)
    finally:
        server.shutdown()
    assert (tmp_path / "cache" / "weights" / weights_file.name).is_file()
    assert model.fingerprint == load_inception(str(weights_file)).fingerprint
    assert load_inception(url).fingerprint == model.fingerprint  # cached: no download needed any more
