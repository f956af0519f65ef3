"""`ollimg create` and the store commands through the real CLI (subprocesses), bad input included."""

import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import OLLIMG, cli_env
from tests.synthetic_model import listing, make_big_model, make_model, set_dtype


def ollimg(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([*OLLIMG, *args], env=cli_env(), capture_output=True, text=True, timeout=120, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_error_line(proc, code, text):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_zimage_round_trips_byte_for_byte(tiny_zimage_dir, store_dir):
    out = ollimg("create", "tiny", "-f", str(tiny_zimage_dir), "--json")
    result = json.loads(out.stdout)
    assert result["name"] == "tiny:latest" and result["new_bytes"] > 0
    listed = json.loads(ollimg("list", "--json").stdout)
    assert [(m["name"], m["id"]) for m in listed] == [("tiny:latest", result["id"])]
    manifest_path = store_dir / "manifests" / "registry.ollimg.dev" / "library" / "tiny" / "latest"
    manifest = json.loads(manifest_path.read_bytes())
    layers = {l["annotations"]["org.opencontainers.image.title"]: l for l in manifest["layers"]}
    count = 0
    for shard in sorted(tiny_zimage_dir.rglob("*.safetensors")):
        component = shard.relative_to(tiny_zimage_dir).parts[0]
        with safe_open(shard, "pt") as src:
            for key in src.keys():
                layer = layers[f"{component}/{key}"]
                blob = store_dir / "blobs" / layer["digest"].replace(":", "-")
                with safe_open(blob, "pt") as f:
                    assert list(f.keys()) == ["data"]
                    want, got = src.get_tensor(key), f.get_tensor("data")
                    assert got.dtype == want.dtype and got.shape == want.shape
                    assert got.contiguous().view(torch.uint8).equal(want.contiguous().view(torch.uint8)), key
                count += 1
    assert count == sum(1 for l in manifest["layers"] if l["mediaType"] == "application/vnd.ollimg.tensor.v1")
    for path in tiny_zimage_dir.rglob("*"):
        rel = path.relative_to(tiny_zimage_dir).as_posix()
        if path.is_file() and not rel.endswith((".safetensors", ".safetensors.index.json")):
            blob = store_dir / "blobs" / layers[rel]["digest"].replace(":", "-")
            assert blob.read_bytes() == path.read_bytes(), rel
    show = json.loads(ollimg("show", "tiny", "--json").stdout)
    assert show["architecture"] == "ZImagePipeline" and show["capabilities"] == ["image"]
    assert show["components"]["transformer"]["class_name"] == "ZImageTransformer2DModel"
    assert "all good" in ollimg("verify", "tiny").stdout


def test_fp8_create_show_and_verify(tiny_zimage_dir):
    out = ollimg("create", "tiny:fp8", "-f", str(tiny_zimage_dir), "--quantize", "fp8", "--dtype", "bf16")
    assert out.stdout.startswith("created tiny:fp8") and "deduplicated" in out.stdout
    show = ollimg("show", "tiny:fp8").stdout
    assert "fp8_e4m3" in show and "relative RMS error" in show and "ZImagePipeline" in show
    data = json.loads(ollimg("show", "tiny:fp8", "--json").stdout)
    assert data["quantization"]["tensors"] > 0 and 0 < data["quantization"]["rel_rms_error"] < 0.05
    assert "F8_E4M3" in data["components"]["transformer"]["dtypes"]
    assert "F8_E4M3" not in data["components"]["vae"]["dtypes"]
    assert "all good" in ollimg("verify").stdout


def test_list_rm_cp_prune_verify(tmp_path, store_dir):
    src = make_model(tmp_path / "m")
    ollimg("create", "a", "-f", str(src))
    ollimg("cp", "a", "team/b:v1")
    table = ollimg("list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert {row.split()[0] for row in table[1:]} == {"a:latest", "team/b:v1"}
    assert "ago" in table[1] and ("KB" in table[1] or "MB" in table[1])
    ollimg("rm", "a")
    assert "all good" in ollimg("verify", "team/b:v1").stdout
    assert_one_error_line(ollimg("rm", "a", check=False), 3, "not found")
    ollimg("rm", "team/b:v1")
    assert not list((store_dir / "blobs").iterdir())
    assert "removed 0 unused blobs" in ollimg("prune").stdout


def test_verify_fails_on_a_corrupt_blob(tmp_path, store_dir):
    ollimg("create", "a", "-f", str(make_model(tmp_path / "m")))
    blob = max((store_dir / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 1
    blob.write_bytes(bytes(raw))
    proc = ollimg("verify", check=False)
    assert proc.returncode == 1
    assert blob.name.replace("-", ":") in proc.stdout and "1 bad" in proc.stdout
    assert_one_error_line(proc, 1, "missing or corrupt")


def _shard(d: Path, n: int = 2) -> Path:
    return d / "transformer" / f"diffusion_pytorch_model-0000{n}-of-00002.safetensors"


def _truncate(path: Path, by: int) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:-by])


def _corrupt_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:16] = b"{broken!"
    path.write_bytes(bytes(raw))


BAD = {
    "not a diffusers dir": (lambda d: (d / "model_index.json").unlink(), "not a diffusers model directory"),
    "missing shard": (lambda d: _shard(d).unlink(), "is missing"),
    "truncated shard": (lambda d: _truncate(_shard(d), 100), "truncated"),
    "corrupt header": (lambda d: _corrupt_header(_shard(d, 1)), "corrupt safetensors header"),
    "unsupported dtype": (lambda d: set_dtype(d / "vae" / "diffusion_pytorch_model.safetensors", "decoder.conv_in.bias", "C64"), "unsupported dtype"),
    "a file, not a dir": (lambda d: None, "not a diffusers model directory"),  # one answer for any path with no model
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_error_line_and_the_store_is_unchanged(tmp_path, store_dir, case):
    ollimg("create", "good", "-f", str(make_model(tmp_path / "good")))
    before = listing(store_dir)
    bad = make_model(tmp_path / "bad", seed=7)
    damage, message = BAD[case]
    damage(bad)
    target = bad / "model_index.json" if case == "a file, not a dir" else bad
    proc = ollimg("create", "bad", "-f", str(target), check=False)
    assert_one_error_line(proc, 2, message)
    assert listing(store_dir) == before


@pytest.mark.parametrize("name", ["Bad Name", "a/b/c/d", "x:", "UPPER/ok:tag!"])
def test_invalid_name_is_refused(tmp_path, store_dir, name):
    src = make_model(tmp_path / "m")
    proc = ollimg("create", name, "-f", str(src), check=False)
    assert_one_error_line(proc, 2, "invalid name")
    assert listing(store_dir) == []


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a kill
    return apply


def test_no_space_left_is_one_error_line_and_the_store_is_unchanged(tmp_path, store_dir):
    ollimg("create", "good", "-f", str(make_model(tmp_path / "good")))
    before = listing(store_dir)
    big = make_big_model(tmp_path / "big", tensors=8, tensor_bytes=4 << 20)  # each blob is 4 MB
    proc = ollimg("create", "big", "-f", str(big), check=False, preexec_fn=_limit_file_size(1 << 20))
    assert_one_error_line(proc, 1, "no space left")
    assert listing(store_dir) == before


@pytest.mark.slow
def test_a_create_killed_mid_write_leaves_no_model_and_prune_cleans_up(tmp_path, store_dir):
    ollimg("create", "good", "-f", str(make_model(tmp_path / "good")))
    before = listing(store_dir)
    big = make_big_model(tmp_path / "big", tensors=96, tensor_bytes=4 << 20)
    proc = subprocess.Popen([*OLLIMG, "create", "big", "-f", str(big)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blobs = store_dir / "blobs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once it has committed some tensor blobs and is writing more
        if len(_big_files(blobs)) >= 3 and proc.poll() is None:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(_big_files(blobs)) < 96  # really mid-create
    assert "big" not in ollimg("list").stdout
    assert_one_error_line(ollimg("show", "big", check=False), 3, "not found")
    assert "all good" in ollimg("verify").stdout
    ollimg("prune")
    assert listing(store_dir) == before
    assert "created big" in ollimg("create", "big", "-f", str(big)).stdout  # and it imports fine afterwards


def _big_files(blobs: Path) -> list[Path]:
    """Files over 4 MiB; temp files renamed or removed while we look are skipped."""
    found = []
    for p in blobs.iterdir() if blobs.is_dir() else []:
        try:
            if p.stat().st_size > 4 << 20:
                found.append(p)
        except FileNotFoundError:
            continue
    return found


def test_two_concurrent_creates_both_succeed(tmp_path, store_dir):
    a = make_big_model(tmp_path / "a", tensors=16, tensor_bytes=1 << 20)
    b = make_model(tmp_path / "b", seed=3)
    procs = [subprocess.Popen([*OLLIMG, "create", name, "-f", str(src)], env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name, src in (("a", a), ("a2", a), ("b", b))]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    names = {m["name"] for m in json.loads(ollimg("list", "--json").stdout)}
    assert names == {"a:latest", "a2:latest", "b:latest"}
    assert "all good" in ollimg("verify").stdout
    assert "removed 0 unused blobs" in ollimg("prune").stdout


def test_verify_fix_deletes_a_corrupt_blob_and_create_restores_it(tmp_path, store_dir):
    src = make_model(tmp_path / "m")
    ollimg("create", "a", "-f", str(src))
    blob = max((store_dir / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(b"\0" * blob.stat().st_size)
    assert_one_error_line(ollimg("verify", check=False), 1, "run ollimg verify --fix, then re-create or pull: a:latest")
    assert_one_error_line(ollimg("verify", "--fix", check=False), 1, "1 corrupt ones deleted")
    assert not blob.exists()
    ollimg("create", "a", "-f", str(src))
    assert "all good" in ollimg("verify").stdout


@pytest.mark.slow
def test_ctrl_c_mid_create_exits_130_and_removes_what_it_wrote(tmp_path, store_dir):
    ollimg("create", "good", "-f", str(make_model(tmp_path / "good")))
    before = listing(store_dir)
    big = make_big_model(tmp_path / "big", tensors=96, tensor_bytes=4 << 20)
    proc = subprocess.Popen([*OLLIMG, "create", "big", "-f", str(big)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    blobs = store_dir / "blobs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_big_files(blobs)) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == ["Error: interrupted"]
    assert listing(store_dir) == before
