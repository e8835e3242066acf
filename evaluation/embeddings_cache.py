"""The embeddings cache: embeddings saved with everything that shaped them, reused only when all of it matches."""
from __future__ import annotations

import hashlib
import os
import pickle

import torch

from runtime.atomic_files import atomic_write


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of every state_dict tensor: tells whether cached embeddings came from these weights."""
    digest = hashlib.sha1()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_embeddings_cache(path: str, settings: dict) -> dict[str, torch.Tensor]:
    """Embeddings saved by save_embeddings_cache under the same settings; {} when absent or made otherwise."""
    if not path or not os.path.exists(path):
        return {}
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        print(f"Embeddings cache {path} cannot be read ({error}); computing afresh")
        return {}
    if not isinstance(content, dict) or content.get("settings") != settings:
        print(f"Embeddings cache {path} was made with other weights or crop settings; computing afresh")
        return {}
    print(f"Reusing {len(content['names'])} embeddings from {path}")
    return dict(zip(content["names"], content["embeddings"]))


def save_embeddings_cache(path: str, settings: dict, embeddings: dict[str, torch.Tensor]) -> None:
    """Write the embeddings with their settings (temporary file, then rename)."""
    with atomic_write(path) as temporary:
        torch.save({"settings": settings, "names": list(embeddings), "embeddings": list(embeddings.values())},
                   temporary)


def cache_key(model: torch.nn.Module, eval_frames: int, num_eval: int, autocast_dtype: torch.dtype | None,
              length_tolerance: float = 0.0) -> dict:
    """What the embeddings of `model` depend on: its weights, the options that shape its output (e.g. --log_input,
    a model's own options), the crops (with the whole-utterance length tolerance) and the precision."""
    return {"weights": model_fingerprint(model), "model": dict(getattr(model, "model_settings", {})),
            "eval_frames": int(eval_frames), "num_eval": int(num_eval), "autocast": str(autocast_dtype),
            "length_tolerance": float(length_tolerance)}
