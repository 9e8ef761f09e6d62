"""The ADM evaluator's .npz: NHWC uint8 arr_0 (+ arr_1 labels), streamed both ways."""
import numpy as np
import pytest
import torch

from sar_core.eval import export as E


def test_samples_round_trip_as_nhwc_uint8(tmp_path):
    images = torch.rand(5, 3, 8, 6) * 2 - 1
    path = E.save_samples_npz(tmp_path / "s.npz", images, labels=torch.arange(5))
    with np.load(path) as z:
        arr, labels = z["arr_0"], z["arr_1"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 6, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    expected = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    np.testing.assert_array_equal(arr, expected)
    assert np.concatenate(list(E.read_npz_batches(path, batch_size=2))).tobytes() == arr.tobytes()


def test_streaming_writer_checks_counts_and_leaves_no_partial_file(tmp_path):
    with E.NpzWriter(tmp_path / "big.npz", 6, (4, 4, 1)) as w:
        for _ in range(3):
            w.write(torch.zeros(2, 1, 4, 4))
    assert np.load(tmp_path / "big.npz")["arr_0"].shape == (6, 4, 4, 1)
    with pytest.raises(ValueError, match="wrote 2 of 6"):
        with E.NpzWriter(tmp_path / "short.npz", 6, (4, 4, 1)) as w:
            w.write(torch.zeros(2, 1, 4, 4))
    assert not (tmp_path / "short.npz").exists() and not list(tmp_path.glob("short*"))


def test_reference_batch_reading_and_merging(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=imgs, mu=np.zeros(3), sigma=np.eye(3))  # as the VIRTUAL_*.npz batches
    ref = E.read_reference_npz(tmp_path / "ref.npz")
    assert ref.num_images == 7 and ref.image_shape_HWC == (4, 4, 3) and ref.mu.shape == (3,) and ref.labels is None
    back = torch.cat(list(ref.batches(3)))
    np.testing.assert_array_equal(E.to_nhwc_uint8(back), imgs)
    a = E.save_samples_npz(tmp_path / "a.npz", torch.from_numpy(imgs[:3]).permute(0, 3, 1, 2), labels=[0, 1, 2])
    b = E.save_samples_npz(tmp_path / "b.npz", torch.from_numpy(imgs[3:]).permute(0, 3, 1, 2), labels=[3, 4, 5, 6])
    merged = np.load(E.merge_npz([a, b], tmp_path / "all.npz"))
    np.testing.assert_array_equal(merged["arr_0"], imgs)
    assert merged["arr_1"].tolist() == list(range(7))
    np.savez(tmp_path / "bad.npz", arr_0=imgs.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        E.read_reference_npz(tmp_path / "bad.npz")
