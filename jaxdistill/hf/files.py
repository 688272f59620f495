"""Reading a Hugging Face model directory without torch: its ``config.json`` and every tensor
of its ``model.safetensors`` (or of the shards that ``model.safetensors.index.json`` lists).

Tensors are read through ``safetensors``' NumPy API, memory-mapped (nothing is copied until a
caller converts or places an array). NumPy has no bfloat16, so ``safetensors.numpy`` cannot
return a ``BF16`` tensor: those are read from the file's own header offsets as
``ml_dtypes.bfloat16`` arrays (the same bits; widening them to float32 is exact).
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
from safetensors import safe_open

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"


def _json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {what} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: the {what} is not a JSON object")  # noqa: TRY004 (bad file)
    return value


def check_dir(path: str) -> str:
    """``path`` expanded, checked to be a directory holding a config.json."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory; point at a Hugging Face model directory "
                         "(config.json + model.safetensors, e.g. from save_pretrained)")
    if not os.path.isfile(os.path.join(path, CONFIG)):
        raise ValueError(f"{path!r} has no {CONFIG}; is it a Hugging Face model directory?")
    return path


def read_config(path: str) -> dict:
    """The model's config.json as a dict."""
    return _json(os.path.join(check_dir(path), CONFIG), "model config")


def weight_files(path: str) -> list[str]:
    """The safetensors files of the model in ``path``: model.safetensors, or the shards
    named by model.safetensors.index.json, in order."""
    path = check_dir(path)
    single, index = os.path.join(path, WEIGHTS), os.path.join(path, INDEX)
    if os.path.isfile(single):
        return [single]
    if not os.path.isfile(index):
        found = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".h5", ".msgpack")))
        raise ValueError(f"{path!r} has neither {WEIGHTS} nor {INDEX}"
                         + (f" (found {', '.join(found)}: re-save with safe_serialization=True)"
                            if found else ""))
    weight_map = _json(index, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: no 'weight_map' naming the shards")
    shards = [os.path.join(path, s) for s in dict.fromkeys(weight_map.values())]
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise ValueError(f"{index} names missing shard(s): {', '.join(map(os.path.basename, missing))}")
    return shards


def _header(file: str) -> tuple[dict, int]:
    """The safetensors header (name -> dtype, shape, data_offsets) and where the data begins."""
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size)), 8 + size


def _read_file(file: str) -> dict[str, np.ndarray]:
    tensors, bf16 = {}, []
    try:
        with safe_open(file, framework="np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if f.get_slice(name).get_dtype() == "BF16":
                    bf16.append(name)
                else:
                    tensors[name] = f.get_tensor(name)
    except Exception as e:  # the Rust side raises its own error types
        raise ValueError(f"{file}: not a readable safetensors file "
                         f"({str(e).partition(chr(10))[0]})") from e
    if bf16:
        header, start = _header(file)
        data = np.memmap(file, dtype=np.uint8, mode="r")
        for name in bf16:
            begin, end = header[name]["data_offsets"]
            tensors[name] = (data[start + begin:start + end].view(ml_dtypes.bfloat16)
                             .reshape(header[name]["shape"]))
    return tensors


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of the model in ``path`` by its checkpoint name (float32, float16 or
    ``ml_dtypes.bfloat16`` NumPy arrays as stored)."""
    tensors = {}
    for file in weight_files(path):
        part = _read_file(file)
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise ValueError(f"{file}: tensor(s) {twice[:3]} also appear in another shard")
        tensors.update(part)
    return tensors


def tokenizer_path(path: str) -> str:
    """The model's tokenizer.json, or '' when it has none."""
    file = os.path.join(os.path.expanduser(os.fspath(path)), TOKENIZER)
    return file if os.path.isfile(file) else ""
