"""The workspace: a local folder or an S3 prefix holding runs, checkpoints, shards and outputs.

Layout under the root:
    runs/<job>/            Ray Train run (checkpoints, run state), outputs.json once the job finished
    shards/<dataset>-<tokenizer fingerprint>/   pre-tokenized Parquet shards
    eval-assets/           (s3:// workspaces) trained metric classifiers and real reference features,
                           content-addressed, so every node scores with what the driver prepared
The embedded MLflow server always keeps its SQLite file and artifacts on the driver's local disk
(`mlflow_root`), under the workspace when the workspace is local.

Used by the driver (runs, outputs, shards) and by workers (checkpoints and shards to read).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from sar_core import paths

RUNS = "runs"
SHARDS = "shards"
EVAL_ASSETS = "eval-assets"
OUTPUTS = "outputs.json"


class StorageUnreachable(OSError):
    """A remote workspace or input that could not be reached (network, DNS, credentials, endpoint):
    bad input to report by field, not a crash."""

    def __init__(self, uri: str, error: OSError):
        self.uri = uri
        self.reason = " ".join(str(error).split())
        super().__init__(f"{uri} cannot be reached ({self.reason})")


def _reaching(method):
    """Turn a failure to reach S3 inside `method` into StorageUnreachable naming the URI. A missing
    object stays what it is (FileNotFoundError), and so does any error of a call that touches no
    remote location."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        remote = next((a for a in args if isinstance(a, str) and "://" in a), None)
        if remote is None and self.is_local:
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, StorageUnreachable):
            raise
        except OSError as e:
            raise StorageUnreachable(remote or self.root, e) from e

    return wrapper


@dataclass(frozen=True)
class Workspace:
    root: str
    s3_endpoint: str | None = None

    @classmethod
    def of(cls, storage) -> "Workspace":
        """The workspace a job's `storage` spec names."""
        return cls(storage.path, storage.s3_endpoint)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, root path inside it without scheme)."""
        if self.is_local:
            return pafs.LocalFileSystem(), self.root
        if not self.root.startswith("s3://"):
            raise ValueError(f"storage.path {self.root!r}: only local paths and s3:// URIs are supported")
        # Credentials are never passed here: the AWS SDK's default chain finds them on each machine
        # (AWS_* environment variables, ~/.aws, the instance or pod role), so no key ever sits in a
        # filesystem object that Ray pickles to workers or records in a run's state.
        kwargs: dict[str, Any] = {}
        if self.s3_endpoint:
            scheme, _, host = self.s3_endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return pafs.S3FileSystem(**kwargs), self.root[len("s3://"):]

    def path(self, *parts: str) -> str:
        """A location inside the workspace, as a path (local) or URI (s3)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def run_dir(self, run_name: str) -> str:
        """Where Ray Train keeps a run's checkpoints and the job leaves its outputs.json."""
        return self.path(RUNS, run_name)

    def outputs_path(self, run_name: str) -> str:
        return self.path(RUNS, run_name, OUTPUTS)

    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for Ray Train / Tune run configs: runs/ of the workspace."""
        if self.is_local:
            return self.path(RUNS), None
        fs, root = self.filesystem()
        return f"{root}/{RUNS}", fs

    def _fs_path(self, uri: str) -> tuple[pafs.FileSystem, str]:
        fs, _ = self.filesystem()
        return fs, uri[len("s3://"):] if uri.startswith("s3://") else uri

    @_reaching
    def exists(self, uri: str) -> bool:
        fs, p = self._fs_path(uri)
        return fs.get_file_info(p).type != pafs.FileType.NotFound

    @_reaching
    def write_json(self, uri: str, data: Any) -> None:
        fs, p = self._fs_path(uri)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p + ".tmp") as f:
            f.write(json.dumps(data, indent=2, default=str).encode())
        fs.move(p + ".tmp", p)

    @_reaching
    def read_json(self, uri: str) -> Any | None:
        fs, p = self._fs_path(uri)
        if fs.get_file_info(p).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(p) as f:
            return json.loads(f.read().decode())

    @_reaching
    def upload(self, local: str | Path, uri: str) -> str:
        if self.is_local:
            return str(local)
        fs, p = self._fs_path(uri)
        pafs.copy_files(str(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return uri

    @_reaching
    def local_copy(self, uri: str) -> Path:
        """A local file for `uri` (itself when local; else downloaded once into a cache)."""
        if "://" not in uri:
            return Path(uri)
        target = self._cache(uri) / uri.rsplit("/", 1)[-1]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fs, p = self._fs_path(uri)
            pafs.copy_files(p, str(target) + ".part", source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            os.replace(str(target) + ".part", target)
        return target

    def _cache(self, uri: str) -> Path:
        return paths.storage_cache() / hashlib.sha256(uri.encode()).hexdigest()[:16]

    @_reaching
    def local_folder(self, uri: str) -> Path:
        """A local copy of a workspace folder (itself when local; downloaded once otherwise)."""
        if "://" not in uri:
            return Path(uri)
        target = self._cache(uri) / uri.rstrip("/").rsplit("/", 1)[-1]
        if not target.exists():
            fs, p = self._fs_path(uri)
            tmp = Path(str(target) + ".part")
            shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier copy
            tmp.mkdir(parents=True)  # pyarrow copies a folder's files into an existing one
            pafs.copy_files(p, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            os.replace(tmp, target)
        return target

    def staging_dir(self, uri: str) -> Path:
        """A local folder in which to build what will be uploaded to `uri`."""
        path = self._cache(uri) / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @_reaching
    def upload_folder(self, local: str | Path, uri: str) -> None:
        fs, p = self._fs_path(uri)
        pafs.copy_files(str(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    @_reaching
    def eval_cache(self) -> Path | None:
        """The evaluation cache (metric classifiers, reference features) on this machine: None (the
        data cache) for a local workspace; for an s3:// one, a local mirror of eval-assets/ with
        every file the workspace holds there (files are named by content hashes: never stale)."""
        if self.is_local:
            return None
        uri = self.path(EVAL_ASSETS)
        mirror = self._cache(uri) / EVAL_ASSETS
        fs, root = self._fs_path(uri)
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            target = mirror / info.path[len(root):].lstrip("/")
            if info.type == pafs.FileType.File and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(info.path, str(target) + ".part", source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
                os.replace(str(target) + ".part", target)
        mirror.mkdir(parents=True, exist_ok=True)
        return mirror

    @_reaching
    def save_eval_cache(self, mirror: Path | None) -> None:
        """Upload what was added to the local mirror of eval-assets/ (nothing for a local workspace)."""
        if mirror is None:
            return
        fs, root = self._fs_path(self.path(EVAL_ASSETS))
        for path in sorted(p for p in mirror.rglob("*") if p.is_file() and not p.name.endswith((".part", ".tmp.npz"))):
            remote = f"{root}/{path.relative_to(mirror).as_posix()}"
            if fs.get_file_info(remote).type == pafs.FileType.NotFound:
                fs.create_dir(remote.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(path), remote, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def mlflow_root(self) -> Path:
        if self.is_local:
            return Path(self.root) / "mlflow"
        return Path.home() / ".local" / "share" / "sar-platform" / "mlflow"
