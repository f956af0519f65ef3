"""Every OLLIMG_* setting and platformdirs path, read when called (never at import).

`ollimg serve --help` prints SETTINGS. Imports nothing from the rest of ollimg but errors.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ollimg.errors import InvalidInput

DEFAULT_PORT = 11500
DEFAULT_REGISTRY = "registry.ollimg.dev"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str


SETTINGS = [
    Setting("OLLIMG_HOST", f"127.0.0.1:{DEFAULT_PORT}", "address the server listens on and clients call; 0.0.0.0 must be explicit"),
    Setting("OLLIMG_MODELS", "<user data dir>/models", "model store root"),
    Setting("OLLIMG_REGISTRY", DEFAULT_REGISTRY, "registry host for names without one"),
    Setting("OLLIMG_REGISTRY_USER", "", "registry user name for pull/push (with OLLIMG_REGISTRY_PASSWORD), sent only to "
            "the OLLIMG_REGISTRY host; overrides `ollimg login` there"),
    Setting("OLLIMG_REGISTRY_PASSWORD", "", "registry password or token for OLLIMG_REGISTRY_USER (OLLIMG_REGISTRY host only)"),
    Setting("OLLIMG_REGISTRY_CONCURRENCY", "8", "blobs (and byte ranges of large blobs) transferred at once by pull/push"),
    Setting("OLLIMG_KEEP_ALIVE", "5m", "how long a model stays loaded after use; 0 unloads at once, negative keeps it forever"),
    Setting("OLLIMG_MAX_LOADED_MODELS", "3", "most models loaded at once"),
    Setting("OLLIMG_MAX_QUEUE", "64", "most requests waiting per server before 503"),
    Setting("OLLIMG_MAX_UPLOAD", "50MiB", "largest multipart image upload (/v1/images/edits, all its parts; units as "
            "OLLIMG_MAX_BODY); larger is refused with 413 while it is read; OLLIMG_MAX_BODY does not apply to it"),
    Setting("OLLIMG_BACKEND", "auto", "runtime backend: auto, torch, mlx"),
    Setting("OLLIMG_MLX_BLAS", "auto", "BLAS for MLX on a Linux CPU: auto (OpenBLAS when installed), bundled, or a library path"),
    Setting("OLLIMG_DEVICE", "auto", "torch device: auto, cpu, cuda, cuda:N"),
    Setting("OLLIMG_OFFLOAD", "auto", "text encoder weights on a CUDA GPU: auto uploads them for each prompt and frees "
            "them after when the whole model would not fit the free GPU memory, off keeps them, always uploads per prompt"),
    Setting("OLLIMG_COMPILE", "auto", "torch.compile of the denoiser's blocks: auto from a load's second generation on "
            "CUDA (the first runs eagerly), on from the first (CPU too), off never; compiled kernels are cached on disk"),
    Setting("OLLIMG_ATTENTION", "auto", "attention kernel of compiled blocks: auto uses FlashAttention 4 on Hopper and "
            "Blackwell where the flash-attn-4 package is installed (ollimg[flash]), else PyTorch's SDPA; sdpa always SDPA"),
    Setting("OLLIMG_FP8_MATMUL", "auto", "fp8 models on a GPU with fp8 tensor cores (compute capability 8.9+): "
            "auto multiplies in fp8 (activations scaled per token), off dequantizes the weights per call"),
    Setting("OLLIMG_ORIGINS", "", "extra allowed CORS origins, comma separated"),
    Setting("OLLIMG_API_KEY", "", "if set, the bearer key every request must carry (every route but the web page's "
            "shell at / and its static files)"),
    Setting("OLLIMG_LOAD_TIMEOUT", "5m", "how long a model may take to load"),
    Setting("OLLIMG_SPARE_RUNTIME", "on", "on: the server keeps one runtime process started ahead, its imports (torch or "
            "mlx, and torch's compiler where it compiles) done, so that loading a model does not wait for them; off "
            "starts each runtime when its model is asked for"),
    Setting("OLLIMG_DEBUG", "", "1 for debug logging and tracebacks"),
    Setting("OLLIMG_GALLERY", "<user data dir>/gallery", "where the server keeps the images made with \"gallery\": true (the web page's history)"),
    Setting("OLLIMG_GALLERY_MAX", "2GB", "size cap of the gallery (like 500MB or 10GB); the oldest images go first; 0 keeps nothing"),
    Setting("OLLIMG_MAX_PIXELS", "4194304", "most pixels (width x height) per image a request may ask for (2048x2048)"),
    Setting("OLLIMG_MAX_IMAGES", "4", "most images per request"),
    Setting("OLLIMG_MAX_STEPS", "100", "most denoising steps per request"),
    Setting("OLLIMG_MAX_BODY", "32MB", "largest request body accepted (413 beyond), base64 images in JSON included; "
            "units B, KB, MB, GB, KiB, MiB, GiB; not for /api/load, whose archive streams into the store, nor "
            "/v1/images/edits (OLLIMG_MAX_UPLOAD)"),
    Setting("OLLIMG_MAX_GENERATION_TIME", "10m", "longest a generation may run before it is cancelled (504); "
            "0 for no limit"),
]


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip().strip("'\"")


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("ollimg", appauthor=False))


def models_dir() -> Path:
    value = _env("OLLIMG_MODELS")
    return Path(value).expanduser() if value else data_dir() / "models"


def registry_host() -> str:
    return _env("OLLIMG_REGISTRY") or DEFAULT_REGISTRY


def registry_credentials() -> tuple[str, str] | None:
    """(user, password) from OLLIMG_REGISTRY_USER/PASSWORD when both are set."""
    user, password = _env("OLLIMG_REGISTRY_USER"), os.environ.get("OLLIMG_REGISTRY_PASSWORD", "")
    return (user, password) if user and password else None


def credentials_file() -> Path:
    """Where `ollimg login` keeps registry credentials (mode 0600)."""
    return data_dir() / "registry-credentials.json"


def registry_concurrency() -> int:
    value = _int("OLLIMG_REGISTRY_CONCURRENCY", 8)
    if not 1 <= value <= 64:
        raise InvalidInput(f"OLLIMG_REGISTRY_CONCURRENCY={value}: use a number from 1 to 64")
    return value


def host() -> tuple[str, int]:
    """(host, port) of OLLIMG_HOST; accepts host, host:port, :port and scheme://host:port."""
    value = _env("OLLIMG_HOST") or f"127.0.0.1:{DEFAULT_PORT}"
    value = re.sub(r"^[a-z]+://", "", value).rstrip("/")
    hostname, _, port = value.rpartition(":") if ":" in value else (value, "", "")
    if not port:
        hostname, port = value, str(DEFAULT_PORT)
    hostname = hostname.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"OLLIMG_HOST={value!r}: port must be a number from 1 to 65535")
    return hostname, int(port)


def base_url() -> str:
    hostname, port = host()
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return f"http://{hostname}:{port}"


def parse_duration(value: str | int | float | None, default: float | None = 300.0) -> float | None:
    """Seconds from '5m', '1h30m', '10s', '300' or a number; negative means forever (None).
    A boolean, NaN or Infinity is no duration."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidInput(f"invalid duration {value!r}: use a number of seconds or a form like 5m, 1h, 30s")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        match = re.fullmatch(r"(-?)((?:\d+(?:\.\d+)?(?:ms|h|m|s)?)+)", text)
        if not match:
            raise InvalidInput(f"invalid duration {value!r}: use a number of seconds or a form like 5m, 1h, 30s")
        units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "": 1.0}
        seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", match.group(2)))
        if match.group(1):
            seconds = -seconds
    if not math.isfinite(seconds):
        raise InvalidInput(f"invalid duration {value!r}: use a finite number of seconds or a form like 5m, 1h, 30s")
    return None if seconds < 0 else seconds


def keep_alive() -> float | None:
    return parse_duration(_env("OLLIMG_KEEP_ALIVE"), 300.0)


def load_timeout() -> float:
    return parse_duration(_env("OLLIMG_LOAD_TIMEOUT"), 300.0) or 300.0


def _int(name: str, default: int) -> int:
    value = _env(name)
    if not value:
        return default
    if not value.lstrip("-").isdigit():
        raise InvalidInput(f"{name}={value!r} must be a whole number")
    return int(value)


def max_loaded_models() -> int:
    return _int("OLLIMG_MAX_LOADED_MODELS", 3)


def max_queue() -> int:
    return _int("OLLIMG_MAX_QUEUE", 64)


def max_upload() -> int:
    """Bytes an image upload (a multipart edit request, all its parts) may hold; larger is refused (413).
    The edit route's only limit: OLLIMG_MAX_BODY does not apply to it."""
    return _bytes("OLLIMG_MAX_UPLOAD", 50 * 2**20)


def backend() -> str:
    value = _env("OLLIMG_BACKEND", "auto").lower() or "auto"
    if value not in ("auto", "torch", "mlx"):
        raise InvalidInput(f"OLLIMG_BACKEND={value!r}: use auto, torch or mlx")
    return value


def mlx_blas() -> str:
    return _env("OLLIMG_MLX_BLAS", "auto") or "auto"


def device() -> str:
    return _env("OLLIMG_DEVICE", "auto").lower() or "auto"


def offload() -> str:
    value = _env("OLLIMG_OFFLOAD", "auto").lower() or "auto"
    if value not in ("auto", "off", "always"):
        raise InvalidInput(f"OLLIMG_OFFLOAD={value!r}: use auto, off or always")
    return value


def compile_mode() -> str:
    """OLLIMG_COMPILE: torch.compile of the denoiser's blocks (ollimg/runtime/torch_compile.py)."""
    value = _env("OLLIMG_COMPILE", "auto").lower() or "auto"
    if value not in ("auto", "on", "off"):
        raise InvalidInput(f"OLLIMG_COMPILE={value!r}: use auto (on for CUDA), on or off")
    return value


def attention() -> str:
    """OLLIMG_ATTENTION: FlashAttention 4 where it runs, or SDPA (ollimg/runtime/torch_attention.py)."""
    value = _env("OLLIMG_ATTENTION", "auto").lower() or "auto"
    if value not in ("auto", "sdpa"):
        raise InvalidInput(f"OLLIMG_ATTENTION={value!r}: use auto or sdpa")
    return value


def spare_runtime() -> bool:
    value = _env("OLLIMG_SPARE_RUNTIME", "on").lower() or "on"
    if value not in ("on", "off", "1", "0", "true", "false"):
        raise InvalidInput(f"OLLIMG_SPARE_RUNTIME={value!r}: use on or off")
    return value in ("on", "1", "true")


def fp8_matmul() -> bool:
    value = _env("OLLIMG_FP8_MATMUL", "auto").lower() or "auto"
    if value not in ("auto", "off"):
        raise InvalidInput(f"OLLIMG_FP8_MATMUL={value!r}: use auto or off")
    return value == "auto"


def origins() -> list[str]:
    return [o.strip() for o in _env("OLLIMG_ORIGINS").split(",") if o.strip()]


def api_key() -> str:
    return _env("OLLIMG_API_KEY")


def gallery_dir() -> Path:
    value = _env("OLLIMG_GALLERY")
    return Path(value).expanduser() if value else data_dir() / "gallery"


def gallery_max() -> int:
    """OLLIMG_GALLERY_MAX in bytes: a number of bytes or a size like 500MB, 2GB (decimal units)."""
    value = _env("OLLIMG_GALLERY_MAX") or "2GB"
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?b?)", value.lower())
    if not match:
        raise InvalidInput(f"OLLIMG_GALLERY_MAX={value!r}: use a size like 500MB or 2GB, or 0 to keep nothing")
    scale = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
    return int(float(match.group(1)) * scale[match.group(2)])


def debug() -> bool:
    return _env("OLLIMG_DEBUG") not in ("", "0", "false")


def _bytes(name: str, default: int) -> int:
    value = _env(name).upper().replace(" ", "")
    if not value:
        return default
    match = re.fullmatch(r"(\d+)(B|KB|MB|GB|KIB|MIB|GIB)?", value)
    if not match:
        raise InvalidInput(f"{name}={value!r}: use a size like 32MB or 1048576")
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return int(match.group(1)) * units[match.group(2) or "B"]


def _positive(name: str, default: int) -> int:
    value = _int(name, default)
    if value < 1:
        raise InvalidInput(f"{name}={value}: use a number of at least 1")
    return value


def max_pixels() -> int:
    return _positive("OLLIMG_MAX_PIXELS", 2048 * 2048)


def max_images() -> int:
    return _positive("OLLIMG_MAX_IMAGES", 4)


def max_steps() -> int:
    return _positive("OLLIMG_MAX_STEPS", 100)


def max_body() -> int:
    value = _bytes("OLLIMG_MAX_BODY", 32 * 10**6)
    if value < 1024:
        raise InvalidInput(f"OLLIMG_MAX_BODY={value}: use at least 1KB")
    return value


def max_generation_time() -> float | None:
    """Seconds a generation may run; None for no limit (0 or negative)."""
    seconds = parse_duration(_env("OLLIMG_MAX_GENERATION_TIME"), 600.0)
    return None if not seconds else seconds
