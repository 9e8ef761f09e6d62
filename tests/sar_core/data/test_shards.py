"""Pre-tokenized Parquet shards: contents, schedule serving, skip / resume / refuse, readers."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from sar_core import MultiScaleVQ, ScaleSchedule
from sar_core.checkpoint import fingerprint
from sar_core.data import shards as S
from sar_core.data.fashion_mnist import load_tensors
from tests.conftest import TINY_TOKENIZER

N = 300


@pytest.fixture(scope="module")
def images():
    x, y = load_tensors("train", limit=N)
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return MultiScaleVQ(TINY_TOKENIZER).eval()


@pytest.fixture(scope="module")
def encoded(images, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "fmnist"
    return S.encode_shards(tok, images, out, dataset_name="fashion_mnist", split="train", flip=True,
                           rows_per_shard=128, batch_size=100, progress=False)


def test_files_rows_and_metadata(encoded, tok):
    meta = encoded.meta
    assert [p.name for p in encoded.files] == [f"shard-0000{i}-of-00003.parquet" for i in range(3)]
    assert meta.fingerprint == fingerprint(tok) and meta.scales == (1, 2, 3, 4, 5, 6, 7)
    assert meta.flip and meta.dataset == "fashion_mnist" and meta.split == "train" and meta.num_rows == N
    assert meta.tokenizer_config["codebook_size"] == TINY_TOKENIZER.codebook_size
    file_meta = json.loads(pq.read_schema(encoded.files[1]).metadata[b"sar.shards"])
    assert file_meta["fingerprint"] == meta.fingerprint and file_meta["scales"] == list(meta.scales)
    table = pq.read_table(encoded.files[1])
    assert table.num_rows == 128 and table.column_names == ["index", "label", "tokens", "tokens_flip"]
    tokens_type = table.schema.field("tokens").type
    assert tokens_type.list_size == 140 and str(tokens_type.value_type) == "int16"


def test_tokens_and_flips_equal_direct_tokenization(encoded, images, tok):
    cols = encoded.load()
    x, y = images.tensors
    full = ScaleSchedule(encoded.scales)
    with torch.no_grad():
        np.testing.assert_array_equal(cols["tokens"], tok.tokenize_flat(x, full).numpy())
        np.testing.assert_array_equal(cols["tokens_flip"], tok.tokenize_flat(x.flip(-1), full).numpy())
    np.testing.assert_array_equal(cols["label"], y.numpy())
    np.testing.assert_array_equal(cols["index"], np.arange(N))


@pytest.mark.parametrize("scales", [(1, 2, 3, 5, 7), (2, 4, 7), (7,), (1, 2, 3, 4, 5, 6, 7)])
def test_any_schedule_is_a_gather_of_the_stored_scales(encoded, images, tok, scales):
    tokens = torch.from_numpy(encoded.load()["tokens"][:40]).long()
    with torch.no_grad():
        direct = tok.tokenize_flat(images.tensors[0][:40], ScaleSchedule(scales))
    torch.testing.assert_close(encoded.select(tokens, ScaleSchedule(scales)), direct)


def test_a_scale_that_is_not_stored_is_an_error():
    with pytest.raises(S.ShardError, match=r"needs scales \[4\]"):
        S.select_scales(torch.zeros(2, 1 + 4 + 9 + 49, dtype=torch.long), (1, 2, 3, 7), (1, 4, 7))


def test_complete_shards_are_reused_without_encoding(encoded, images, tok, monkeypatch):
    monkeypatch.setattr(S, "_encode_rows", lambda *a, **k: pytest.fail("re-encoded existing shards"))
    again = S.encode_shards(tok, images, encoded.folder, dataset_name="fashion_mnist", flip=True, rows_per_shard=999,
                            progress=False)
    assert again.meta == encoded.meta  # another shard size asks for the same rows: still reused


def test_another_tokenizer_or_scale_set_is_refused_and_nothing_is_touched(encoded, images):
    before = {p: p.read_bytes() for p in encoded.files}
    torch.manual_seed(123)
    other = MultiScaleVQ(TINY_TOKENIZER).eval()
    with pytest.raises(S.ShardError) as e:
        S.encode_shards(other, images, encoded.folder, dataset_name="fashion_mnist", flip=True, rows_per_shard=128, progress=False)
    assert encoded.meta.fingerprint in str(e.value) and fingerprint(other) in str(e.value)
    assert "another folder" in str(e.value)
    with pytest.raises(S.ShardError, match="scales"):
        S.encode_shards(encoded_tok(encoded), images, encoded.folder, dataset_name="fashion_mnist", flip=True,
                        scales=(1, 3, 7), rows_per_shard=128, progress=False)
    assert {p: p.read_bytes() for p in encoded.files} == before
    with pytest.raises(S.ShardError, match="not by"):
        encoded.check_tokenizer(other)


def encoded_tok(encoded):
    torch.manual_seed(0)
    tok = MultiScaleVQ(TINY_TOKENIZER).eval()
    assert fingerprint(tok) == encoded.meta.fingerprint
    return tok


def test_an_interrupted_encoding_resumes_and_keeps_finished_shards(images, tok, tmp_path, monkeypatch):
    kwargs = dict(dataset_name="fashion_mnist", flip=False, rows_per_shard=128, batch_size=128, progress=False)
    first = S.encode_shards(tok, images, tmp_path, **kwargs)
    (tmp_path / S.MANIFEST).unlink()  # as if the run died before finishing
    first.files[2].unlink()
    kept = first.files[0].stat().st_mtime_ns
    calls = []
    original = S._encode_rows
    monkeypatch.setattr(S, "_encode_rows", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    resumed = S.encode_shards(tok, images, tmp_path, **kwargs)
    assert calls == [range(256, 300)] and first.files[0].stat().st_mtime_ns == kept
    assert resumed.meta == first.meta and len(resumed.load()["label"]) == N
    (tmp_path / S.MANIFEST).unlink()
    torch.manual_seed(5)
    with pytest.raises(S.ShardError, match="shard shard-00000"):
        S.encode_shards(MultiScaleVQ(TINY_TOKENIZER), images, tmp_path, **kwargs)


def test_map_style_dataset_with_distributed_sampler_covers_every_row_once(encoded):
    ds = S.ShardDataset(encoded)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for batch in DataLoader(ds, batch_size=64, sampler=sampler):
            assert set(batch) == {"label", "tokens", "tokens_flip"} and batch["tokens"].dtype == torch.int64
            seen.append(batch["label"].shape[0])
    assert sum(seen) == N


def test_stream_splits_rows_by_rank_and_shuffles_with_a_seed(encoded):
    labels = encoded.load()["label"]
    parts = []
    for rank in range(3):
        rows = list(S.ShardStream(encoded, rank=rank, world=3))
        parts.append([int(r["label"]) for r in rows])
        assert len(rows) == N // 3
    assert parts[1] == labels[1::3].tolist()
    a = [int(r["tokens"][5]) for r in S.ShardStream(encoded, seed=1)]
    b = [int(r["tokens"][5]) for r in S.ShardStream(encoded, seed=1)]
    stream = S.ShardStream(encoded, seed=1)
    stream.set_epoch(1)
    c = [int(r["tokens"][5]) for r in stream]
    assert a == b and a != c and sorted(a) == sorted(c)
    in_workers = sum(len(x["label"]) for x in DataLoader(S.ShardStream(encoded, 1, 2), batch_size=32, num_workers=2))
    assert in_workers == N // 2


def test_training_batch_draws_flips_per_sample_from_the_seed(encoded):
    batch = next(iter(DataLoader(S.ShardDataset(encoded), batch_size=200)))
    labels, t1 = S.training_batch(batch, torch.Generator().manual_seed(0))
    _, t2 = S.training_batch(batch, torch.Generator().manual_seed(0))
    _, t3 = S.training_batch(batch, torch.Generator().manual_seed(1))
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    flipped = (t1 == batch["tokens_flip"]).all(1) & ~(t1 == batch["tokens"]).all(1)
    assert 60 < int(flipped.sum()) < 140
    _, none = S.training_batch(batch, torch.Generator().manual_seed(0), flip_prob=0.0)
    assert torch.equal(none, batch["tokens"]) and torch.equal(labels, batch["label"])
