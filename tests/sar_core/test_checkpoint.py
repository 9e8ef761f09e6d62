import dataclasses

import pytest
import torch

from sar_core.checkpoint import (CheckpointError, checkpoint_folder_problems, load_model, read_header, save_model,
                                 verify_checkpoint_folder, write_manifest)
from sar_core.generator import GeneratorConfig, ScaleGenerator
from tests.conftest import TINY_GENERATOR


def test_checkpoint_round_trip_restores_config_and_outputs(generator_model, schedule, tmp_path):
    path = save_model(generator_model, tmp_path / "g.safetensors", {"step": 12})
    kind, config, meta = read_header(path)
    assert kind == "generator" and config == generator_model.config and meta == {"step": "12"}
    loaded = load_model(path).eval()
    idx = torch.randint(0, 64, (2, schedule.num_tokens))
    labels = torch.tensor([1, 2])
    torch.testing.assert_close(loaded.forward_tokens(labels, idx, schedule), generator_model.forward_tokens(labels, idx, schedule))
    assert torch.equal(loaded.codebook, generator_model.codebook)


def test_loading_into_a_mismatched_config_lists_keys_and_shapes(generator_model, tmp_path):
    path = save_model(generator_model, tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(path, config=dataclasses.replace(TINY_GENERATOR, depth=3))
    assert "missing (12)" in str(err.value) and "blocks.2.attn.qkv.weight" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_model(path, config=dataclasses.replace(TINY_GENERATOR, vocab_size=128))
    assert "shape mismatch (3)" in str(err.value)
    assert "head.weight: checkpoint (64, 64) vs model (128, 64)" in str(err.value)


def test_wrong_kind_and_foreign_files_are_refused(generator_model, tmp_path):
    path = save_model(generator_model, tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError, match="holds a generator, not a tokenizer"):
        load_model(path, kind="tokenizer")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        read_header(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_header(tmp_path / "missing.safetensors")


def test_fingerprint_changes_with_any_weight(tokenizer):
    from sar_core.checkpoint import fingerprint

    a = fingerprint(tokenizer)
    assert a == fingerprint(tokenizer)
    with torch.no_grad():
        tokenizer.codebook.weight[3, 0] += 1e-3
    assert fingerprint(tokenizer) != a


def test_a_checkpoint_folder_manifest_catches_truncation_overwritten_bytes_and_missing_files(tmp_path, tokenizer):
    folder = tmp_path / "checkpoint_00000004"
    save_model(tokenizer, folder / "tokenizer.safetensors")
    (folder / "train_state.pt").write_bytes(b"state" * 100)
    assert checkpoint_folder_problems(folder) == ["no manifest.json: the checkpoint was not completely written"]
    write_manifest(folder)
    verify_checkpoint_folder(folder)

    model = folder / "tokenizer.safetensors"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0x01  # one flipped bit in the tensor bytes: the header still parses
    model.write_bytes(bytes(data))
    assert checkpoint_folder_problems(folder) == [
        "tokenizer.safetensors does not match its checksum (its bytes changed after it was written)"]
    model.write_bytes(bytes(data[: len(data) // 2]))
    (folder / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.safetensors has .* bytes, .* were written.*train_state.pt is missing"):
        verify_checkpoint_folder(folder)
