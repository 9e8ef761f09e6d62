"""The Ray Data path over token shards, on a real local Ray (one start for the module): the driver
builds the Dataset (`driver/inputs.shard_dataset`), workers turn its batches into training batches
(`worker/batches.worker_batch`)."""
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sar_core import MultiScaleVQ, ScaleSchedule
from sar_core.data import shards as S
from sar_core.data.fashion_mnist import load_tensors
from tests.conftest import TINY_TOKENIZER

pytestmark = pytest.mark.ray
N = 200


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    x, y = load_tensors("train", limit=N)
    torch.manual_seed(0)
    tok = MultiScaleVQ(TINY_TOKENIZER).eval()
    return S.encode_shards(tok, TensorDataset(x, y), tmp_path_factory.mktemp("shards"), dataset_name="fashion_mnist",
                           flip=True, rows_per_shard=64, progress=False)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module, or the session's cluster when another test already started one."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def test_read_parquet_serves_every_row_as_worker_batches(shard_set, ray_session):
    from sar_platform.driver.inputs import shard_dataset
    from sar_platform.worker.batches import worker_batch

    ds = shard_dataset(shard_set.folder, expected_fingerprint=shard_set.meta.fingerprint)
    assert set(ds.schema().names) == {"index", "label", "tokens", "tokens_flip"}
    reference = next(iter(DataLoader(S.ShardDataset(shard_set), batch_size=N)))
    index, labels, originals, flips, chosen = [], [], [], [], []
    gen = torch.Generator().manual_seed(0)
    for batch in ds.iter_torch_batches(batch_size=50):
        assert batch["tokens"].shape[1] == shard_set.meta.tokens_per_row
        lab, tok = worker_batch(batch, gen)
        assert lab.dtype == tok.dtype == torch.int64 and tok.shape == (len(lab), 140)
        index.append(batch["index"]), labels.append(lab), chosen.append(tok)
        originals.append(batch["tokens"].long()), flips.append(batch["tokens_flip"].long())
    order = torch.cat(index).argsort()  # Ray Data does not keep row order
    assert len(order) == N
    labels, originals, flips, chosen = (torch.cat(x)[order] for x in (labels, originals, flips, chosen))
    assert torch.equal(labels, reference["label"]) and torch.equal(originals, reference["tokens"])
    took_flip = (chosen == flips).all(1) & ~(chosen == originals).all(1)
    assert 60 < int(took_flip.sum()) < 140  # about half, per sample
    schedule = ScaleSchedule((1, 2, 4, 7))
    assert shard_set.select(chosen, schedule).shape == (N, schedule.num_tokens)


def test_workers_get_disjoint_streaming_splits(shard_set, ray_session):
    from sar_platform.driver.inputs import shard_dataset
    from sar_platform.worker.batches import worker_batch

    ray = ray_session
    splits = shard_dataset(shard_set.folder).streaming_split(2, equal=True)

    @ray.remote(num_cpus=0)
    def consume(split, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([worker_batch(b, gen)[0] for b in split.iter_torch_batches(batch_size=32)]).tolist()

    a, b = ray.get([consume.remote(splits[0], 0), consume.remote(splits[1], 1)])
    assert len(a) + len(b) == N and len(a) == len(b)


def test_a_shard_set_of_another_tokenizer_is_refused(shard_set, ray_session):
    from sar_platform.driver.inputs import shard_dataset

    with pytest.raises(S.ShardError, match="not by 0123456789abcdef"):
        shard_dataset(shard_set.folder, expected_fingerprint="0123456789abcdef")
