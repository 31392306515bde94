"""config.json, the tokenizer files and model.safetensors of an artifact folder."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_config(out: Path, config: dict) -> None:
    (out / "config.json").write_text(json.dumps(config))


def find_inflight(explicit: str | None) -> str | None:
    """The inflight binary: --inflight, $INFLIGHT_BIN, PATH, then this checkout's
    target/{release,debug}."""
    candidates = [explicit, os.environ.get("INFLIGHT_BIN"), shutil.which("inflight")]
    repo = Path(__file__).resolve().parents[2]
    candidates += [str(repo / "target/release/inflight"), str(repo / "target/debug/inflight")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def write_tokenizer(model: Path, out: Path, inflight: str | None) -> None:
    """A Hugging Face folder's tokenizer files are copied. A GGUF's tokenizer is
    written by inflight itself (`inflight models export-tokenizer`), so the folder
    holds exactly the tokenizer inflight reads from that GGUF (pre-tokenizer
    included), not another converter's approximation."""
    if model.is_dir():
        if not (model / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model}: no tokenizer.json")
        for name in TOKENIZER_FILES:
            if (model / name).is_file():
                shutil.copyfile(model / name, out / name)
        return
    binary = find_inflight(inflight)
    if binary is None:
        raise FileNotFoundError(
            "a GGUF's tokenizer is exported by the inflight binary: pass --inflight PATH "
            "(or set INFLIGHT_BIN, or put inflight on PATH)"
        )
    done = subprocess.run(
        [binary, "models", "export-tokenizer", str(model.resolve()), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{binary} models export-tokenizer failed:\n{done.stderr}")


def write_weights_f32(out: Path, weights: dict) -> None:
    from safetensors.numpy import save_file

    save_file({n: np.ascontiguousarray(w, dtype=np.float32) for n, w in sorted(weights.items())}, out / "model.safetensors")
