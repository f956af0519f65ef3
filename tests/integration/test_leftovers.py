"""What interrupted writes leave in the store, with the real CLI and Debian's docker-registry: a
later pull removes it when no other writer runs (never the temp files of a writer running in
another process, nor a partial download a pull may still resume), and `prune` reports the disk
space it really frees (blocks, not the apparent size of sparse files).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

from ollimg import models
from ollimg.manifest import Name, Store
from ollimg.registry import push
from tests.conftest import cli_env
from tests.integration.test_registry import run_cli, small_model

GiB = 1 << 30
DAY = 24 * 3600


def sparse(path, size: int, mtime: float | None = None) -> None:
    """A file of `size` bytes that holds one written block, as a pull's partial download does at first."""
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
        f.truncate(size)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def leftovers(store: Store, stored_digest: str) -> dict[str, list]:
    """What killed writers leave: `.tmp-<id>` files (blobs in flight, a manifest being written) and
    partial downloads with their records: one untouched for two days, one fresh, one of a blob the
    store has meanwhile."""
    store.blobs.root.mkdir(parents=True, exist_ok=True)
    old, fresh = store.blobs.partial_path("sha256:" + "a" * 64), store.blobs.partial_path("sha256:" + "b" * 64)
    done = store.blobs.partial_path(stored_digest)
    files = {"temp": [store.blobs.root / f".tmp-{uuid.uuid4().hex}", store.manifests_root / "x" / ".tmp-manifest"],
             "old": [old, old.with_name(old.name + ".json")], "fresh": [fresh, fresh.with_name(fresh.name + ".json")],
             "done": [done, done.with_name(done.name + ".json")]}
    files["temp"][1].parent.mkdir(parents=True, exist_ok=True)
    for path in files["temp"]:
        path.write_bytes(b"x" * 1000)
    sparse(old, GiB, mtime=time.time() - 2 * DAY)
    sparse(fresh, GiB)
    sparse(done, GiB)
    for kind in ("old", "fresh", "done"):
        record = files[kind][1]
        record.write_text('{"size": 1073741824, "parts": [[0, 1073741824, 4096]]}')
        if kind == "old":
            os.utime(record, (time.time() - 2 * DAY,) * 2)
    return files


def test_a_pull_removes_what_interrupted_writers_left_but_not_a_running_writers_files(registry, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    first, second = f"{registry.host}/team/left-a:v1", f"{registry.host}/team/left-b:v1"
    model = small_model(src, first, seed=21, count=4)
    push(src, first)
    small_model(src, second, seed=22, count=4)
    push(src, second)
    assert run_cli("pull", first, models=dst.root).returncode == 0
    files = leftovers(dst, model.manifest.layers[0].digest)
    everything = [p for paths in files.values() for p in paths]

    # Another process writes to the store (holds its lock shared, as create, pull and load do):
    # its temp files may be in use, so a pull now removes nothing.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ollimg.manifest import Store; s = Store(sys.argv[1])\n"
                               "with s.lock():\n    print('locked', flush=True); time.sleep(120)", str(dst.root)],
        stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        pulled = run_cli("pull", second, models=dst.root)
        assert pulled.returncode == 0, pulled.stderr
        assert all(p.exists() for p in everything)
    finally:
        holder.kill()
        holder.wait()

    # The next pull of anything, with no other writer: stale files go, a fresh partial stays.
    again = run_cli("pull", first, models=dst.root)
    assert again.returncode == 0, again.stderr
    assert not [p for kind in ("temp", "old", "done") for p in files[kind] if p.exists()]
    assert all(p.exists() for p in files["fresh"])
    assert sorted(dst.blobs.temp_files()) == sorted(files["fresh"])

    # prune takes the rest and says what it freed on disk: a block or two, not the 1 GiB the
    # sparse file claims
    pruned = run_cli("prune", models=dst.root)
    assert pruned.returncode == 0, pruned.stderr
    freed = re.search(r"removed 0 unused blobs and 2 temp files, freed ([\d.]+) (B|KB)\b", pruned.stdout)
    assert freed, pruned.stdout
    assert dst.blobs.temp_files() == []


def test_prune_and_rm_report_the_blocks_they_free(tmp_path):
    store = Store(tmp_path / "models")
    model = small_model(store, "me/sizes:v1", seed=23, count=4)
    blobs = [store.blobs.path(d) for d in sorted({d.digest for d in model.manifest.blobs()})]
    on_disk = sum(p.stat().st_blocks * 512 for p in blobs)
    partial = store.blobs.partial_path("sha256:" + "c" * 64)
    sparse(partial, 100 * GiB)
    held = partial.stat().st_blocks * 512
    assert held < 1 << 20  # the filesystem keeps it sparse

    result = models.prune(store)
    assert (result.temp_files, result.bytes) == (1, held)
    removed = models.remove(store, [Name.parse("me/sizes:v1")])
    assert removed.bytes == on_disk and removed.blobs == len(blobs)

    sparse(partial, 100 * GiB)
    cli = run_cli("prune", models=store.root)
    assert cli.returncode == 0 and "freed 107" not in cli.stdout and re.search(r"freed [\d.]+ KB", cli.stdout), cli.stdout
