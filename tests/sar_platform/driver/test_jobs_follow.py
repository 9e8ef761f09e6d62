"""Following a job streams its log chunk by chunk as Ray's log websocket delivers it (never the
whole log again and again), goes on by polling where a broken stream stopped, and Ctrl-C while
following or submitting detaches with exit 130, printing the job id and the commands that follow or
stop it (the job goes on running)."""
import io
import types

import pytest

from sar_platform.driver import jobs, submit
from sar_platform.spec import load_job
from tests.support.specs import train_spec, write_spec


class FakeJobsClient:
    """A Jobs API client whose job writes `chunks`; `interrupt_after` chunks, Ctrl-C arrives."""

    def __init__(self, chunks, interrupt_after=None, stream_breaks=False):
        self.chunks, self.interrupt_after, self.stream_breaks = chunks, interrupt_after, stream_breaks
        self.delivered, self.full_log_reads, self.submitted = 0, 0, []

    def get_address(self):
        return "http://127.0.0.1:8265"

    def get_job_status(self, job_id):
        done = self.delivered == len(self.chunks) or self.stream_breaks
        return types.SimpleNamespace(value="SUCCEEDED" if done else "RUNNING")

    def get_job_logs(self, job_id):
        self.full_log_reads += 1
        return "".join(self.chunks)

    async def tail_job_logs(self, job_id):
        for i, chunk in enumerate(self.chunks):
            if i == self.interrupt_after:
                raise KeyboardInterrupt
            if self.stream_breaks and i == 1:
                raise RuntimeError("Connection closed unexpectedly")
            self.delivered += 1
            yield chunk

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return kwargs["submission_id"]


CHUNKS = ["[sar] step 1\n", "[sar] step 2\n", "[sar] MLflow run t: http://127.0.0.1:5000/#/x\n"]


def test_following_streams_each_chunk_once_and_reads_the_whole_log_only_at_the_end():
    client, out = FakeJobsClient(CHUNKS), io.StringIO()
    assert jobs.follow(client, "sar-t-1", out=out) == "SUCCEEDED"
    assert out.getvalue() == "".join(CHUNKS) and client.full_log_reads == 1


def test_a_broken_stream_goes_on_by_polling_from_where_it_stopped():
    client, out = FakeJobsClient(CHUNKS, stream_breaks=True), io.StringIO()
    assert jobs.follow(client, "sar-t-1", out=out, poll_s=0) == "SUCCEEDED"
    assert out.getvalue() == "".join(CHUNKS)  # nothing printed twice


def test_ctrl_c_while_following_detaches_with_the_job_id_and_the_commands(monkeypatch, capsys):
    monkeypatch.setattr(jobs, "connect", lambda address: FakeJobsClient(CHUNKS, interrupt_after=1))
    assert jobs.show_logs("http://head:8265", "sar-t-1", follow_=True) == 130
    err = capsys.readouterr().err
    assert "sar-t-1 goes on running on the cluster" in err and "Traceback" not in err
    assert "sar jobs logs sar-t-1 -f --address http://head:8265" in err and "sar jobs stop sar-t-1 --address http://head:8265" in err


@pytest.mark.parametrize("during", ["submitting", "following"])
def test_ctrl_c_during_sar_submit_detaches_with_exit_130(tmp_path, monkeypatch, capsys, during):
    job = load_job(write_spec(tmp_path, train_spec("t", head=("storage: {path: s3://bucket/ws}",),
                                                   tokenizer="s3://bucket/tok.safetensors")))
    client = FakeJobsClient(CHUNKS, interrupt_after=0)
    if during == "submitting":
        client.submit_job = lambda **kwargs: (_ for _ in ()).throw(KeyboardInterrupt)
    monkeypatch.setattr(jobs, "connect", lambda address: client)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    status = submit.submit_job(job, tmp_path / "spec.yaml", "http://head:8265", wait_for_nodes_s=120)
    err = capsys.readouterr().err
    assert status == 130 and "Traceback" not in err
    job_id = err.split("[sar] detached: ")[1].split()[0]
    assert job_id.startswith("sar-t-") and f"sar jobs stop {job_id}" in err and f"sar jobs logs {job_id} -f" in err
    if during == "following":
        assert client.submitted[0]["entrypoint"].endswith("--submitted --address auto --wait-for-nodes 120")
