"""`sar validate` on a machine that cannot reach the spec's S3 inputs (no network, a dead endpoint)
ends with exit 2 naming each unreachable field and the reason, never a traceback; with
--skip-remote it checks everything else and says which fields it left unchecked."""
import subprocess

import pytest

from tests.support.processes import SAR, free_ports
from tests.support.specs import train_spec, write_spec


@pytest.fixture
def unreachable_spec(tmp_path, monkeypatch):
    """A tiny train job whose tokenizer lies on an S3 endpoint nobody listens on."""
    (port,) = free_ports(1)
    for key, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "SAR_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    storage = f"storage: {{path: s3://bucket/ws, s3_endpoint: 'http://127.0.0.1:{port}'}}"
    return write_spec(tmp_path, train_spec("offline", head=(storage,), tokenizer="s3://bucket/tok.safetensors"))


def test_unreachable_s3_inputs_are_refused_by_field_with_the_reason(unreachable_spec):
    out = subprocess.run([*SAR, "validate", str(unreachable_spec)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"{unreachable_spec}:4:1: tokenizer: s3://bucket/tok.safetensors cannot be reached (" in out.stderr
    assert "sar validate --skip-remote" in out.stderr


def test_skip_remote_checks_everything_else_and_names_what_it_skipped(unreachable_spec):
    out = subprocess.run([*SAR, "validate", str(unreachable_spec), "--skip-remote"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ok:" in out.stdout and "not checked (--skip-remote): tokenizer" in out.stdout
    broken = unreachable_spec.read_text().replace("steps: 10", "steps: 0")
    unreachable_spec.write_text(broken)
    out = subprocess.run([*SAR, "validate", str(unreachable_spec), "--skip-remote"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
