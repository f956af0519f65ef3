"""What a request gets when its client does not choose: the model, and settings in place of stock ones.

Frontends cannot always name a model or settings that suit it:
- Models: a fresh store lists the default built-in model (imported on first listing), so that a
  frontend's first look finds one. A request naming no model, or one of OpenAI's own names
  (`dall-e-2`, `gpt-image-1`: all that Open WebUI's OpenAI engine offers), gets the default model:
  the A1111 checkpoint last chosen through `/sdapi/v1/options` (kept across restarts in
  `<data dir>/sdapi-options.json`), else the most recently created or pulled model, else the built-in.
- Settings: AUTOMATIC1111 clients always send their stock settings (webuiapi: 20 steps, CFG 7,
  512x512; Open WebUI: 50 steps, 512x512). On a distilled model (`distilled()`: Z-Image-Turbo,
  shapes, FLUX.2 klein's distilled models), those values give a broken image several times
  slower, so they are replaced by the model's recommended defaults, on every interface (native,
  /v1, /sdapi). Any other value is used as sent. The answer reports the settings used.

Imports the store, builtin and config; never fastapi or torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

from ollimg import builtin, config
from ollimg.errors import OllimgError
from ollimg.manifest import Model, Name, Store

log = logging.getLogger(__name__)

OPENAI_NAMES = re.compile(r"^(dall-e|gpt-image|chatgpt-image)", re.IGNORECASE)
STOCK_STEPS = (20, 50)
STOCK_GUIDANCE = 7.0
STOCK_SIZE = (512, 512)


def listed_models(store: Store) -> list[Model]:
    """The stored models; on an empty store, the default built-in model (imported now)."""
    stored = store.models()
    return stored or [builtin.get_or_import(store, Name.parse(builtin.DEFAULT_MODEL))]


def default_model(store: Store) -> Model:
    """The model for a request that names none: see the module docstring."""
    saved = saved_checkpoint()
    if saved:
        try:
            return store.get(Name.parse(saved))
        except OllimgError:  # removed since, or another store: fall through
            pass
    stored = store.models()
    if stored:
        return max(stored, key=lambda m: m.modified)
    return builtin.get_or_import(store, Name.parse(builtin.DEFAULT_MODEL))


def is_openai_name(name: str | None) -> bool:
    return bool(name) and bool(OPENAI_NAMES.match(name.strip()))


def saved_checkpoint() -> str | None:
    try:
        value = json.loads(_options_path().read_text()).get("sd_model_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def save_checkpoint(name: str) -> None:
    path = _options_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sd_model_checkpoint": name}))
    os.replace(tmp, path)


def _options_path():
    return config.data_dir() / "sdapi-options.json"


@dataclass
class Settings:
    steps: int | None
    guidance: float | None
    width: int | None
    height: int | None


def without_stock(model: Model, s: Settings) -> Settings:
    """`s` with A1111 clients' stock values replaced by None (the model's defaults) on a distilled model."""
    if not distilled(model):
        return s
    out = Settings(s.steps, s.guidance, s.width, s.height)
    if out.steps in STOCK_STEPS:
        out.steps = None
    if out.guidance == STOCK_GUIDANCE:
        out.guidance = None
    if (out.width, out.height) == STOCK_SIZE:
        out.width = out.height = None
    if out != s:
        log.info("%s is distilled: stock client settings %s replaced by its defaults", model.name.display(), s)
    return out


def distilled(model: Model) -> bool:
    """Whether the model is guidance-distilled, from what it states: its `ollimg.json` defaults
    (`distilled`, else a recommended guidance of 0), else its model_index.json's `is_distilled`
    (diffusers' flag, which FLUX.2 klein models carry). A model stating none of these counts as
    distilled: Z-Image's family default is guidance 0, and Z-Image-Turbo states nothing."""
    try:
        defaults = model.config.get("defaults") or {}
    except OllimgError:
        return False
    if isinstance(defaults.get("distilled"), bool):
        return defaults["distilled"]
    index = _model_index(model)
    if isinstance(index.get("is_distilled"), bool):
        return index["is_distilled"]
    if "guidance" in defaults:
        try:
            return float(defaults["guidance"]) == 0.0
        except (TypeError, ValueError):
            return False
    return True


def _model_index(model: Model) -> dict:
    path = model.files().get("model_index.json")
    try:
        index = json.loads(path.read_bytes()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}
