"""The Hub client side of tests/hub: a process started with HF_ENDPOINT pointing at the server under test
(set before huggingface_hub is imported, as a user sets it), answering one JSON request per line.

Each request is `{"op": NAME, "args": {...}}`; each answer `{"result": ...}`, or `{"error": CLASS,
"classes": [CLASS and its bases], "message": ...}` when the client raised. The test process asserts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub
import torch
from huggingface_hub import file_download
from huggingface_hub.utils import build_hf_headers

Handler = Callable[..., Any]
Json = dict[str, Any]
OPS: dict[str, Handler] = {}


def op(function: Handler) -> Handler:
    OPS[function.__name__] = function
    return function


def _tensor_digests(model: torch.nn.Module) -> dict[str, str]:
    return {
        name: hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
        for name, tensor in model.state_dict().items()
    }


@op
def save_tiny_model(folder: str) -> None:
    """A GPT-2 of two layers and tiny dimensions built from its config, and a tokenizer (nothing
    downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    # A word-level tokenizer made on the spot: the files a trainer saves beside the weights.
    words = ["hello", "world", "the", "checkpoint", "registry", "loads"]
    tokenizer = Tokenizer(
        models.WordLevel({"[UNK]": 0} | {w: i + 1 for i, w in enumerate(words)}, "[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)


@op
def tokenize(repo_id: str, text: str, revision: str | None = None) -> list[int]:
    from transformers import AutoTokenizer

    ids: list[int] = AutoTokenizer.from_pretrained(repo_id, revision=revision).encode(text)
    return ids


@op
def save_adapter(base_repo: str, folder: str) -> None:
    """A LoRA adapter of the model at `base_repo` (loaded through the server), saved to `folder`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_repo)
    config = LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)


@op
def local_weights(folder: str) -> dict[str, str]:
    from transformers import AutoModelForCausalLM

    return _tensor_digests(AutoModelForCausalLM.from_pretrained(folder))


@op
def from_pretrained(repo_id: str, revision: str | None = None) -> dict[str, str]:
    from transformers import AutoModelForCausalLM

    return _tensor_digests(AutoModelForCausalLM.from_pretrained(repo_id, revision=revision))


@op
def peft_weights(base: str, adapter: str, revision: str | None = None) -> dict[str, str]:
    """The LoRA weights of the adapter as PeftModel loads it (through the server when `adapter` is a
    repository id, from disk when it is a folder)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), adapter, revision=revision
    )
    return {name: digest for name, digest in _tensor_digests(model).items() if "lora_" in name}


@op
def snapshot_download(repo_id: str, revision: str | None = None, **kwargs: Any) -> dict[str, Any]:
    folder = huggingface_hub.snapshot_download(repo_id, revision=revision, **kwargs)
    files = {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in Path(folder).rglob("*")
        if path.is_file() and path.relative_to(folder).parts[0] != ".cache"  # local_dir metadata
    }
    return {"folder": folder, "commit": Path(folder).name, "files": files}


@op
def hf_hub_download(repo_id: str, filename: str, revision: str | None = None, **kwargs: Any) -> str:
    path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, **kwargs)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@op
def resumed_download(repo_id: str, filename: str, have: int, revision: str | None = None) -> Any:
    """A download cut off after `have` bytes, resumed by the client's own `http_get` (the code that
    resumes a broken transfer with `Range: bytes=<have>-`): the metadata from HEAD, the first bytes
    from a ranged GET, then the rest appended by the client."""
    url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
    meta = huggingface_hub.get_hf_file_metadata(url)
    headers = build_hf_headers()
    if meta.location != url:  # a presigned URL: no token leaves for another host
        headers.pop("authorization", None)
    partial = Path(os.environ["HF_HOME"]) / "partial.incomplete"
    first = httpx.get(meta.location, headers={**headers, "Range": f"bytes=0-{have - 1}"})
    assert first.status_code == 206, first.status_code
    partial.write_bytes(first.content)
    with partial.open("ab") as out:
        file_download.http_get(
            meta.location, out, resume_size=have, headers=headers, expected_size=meta.size
        )
    return {
        "sha256": hashlib.sha256(partial.read_bytes()).hexdigest(),
        "etag": meta.etag,
        "size": meta.size,
        "commit": meta.commit_hash,
        "redirected": meta.location != url,
    }


@op
def list_repo_files(repo_id: str, revision: str | None = None, **kwargs: Any) -> list[str]:
    return huggingface_hub.list_repo_files(repo_id, revision=revision, **kwargs)


@op
def list_repo_tree(repo_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [
        {"type": "file" if isinstance(entry, huggingface_hub.hf_api.RepoFile) else "directory"}
        | {"path": entry.path}
        for entry in huggingface_hub.list_repo_tree(repo_id, **kwargs)
    ]


@op
def model_info(repo_id: str, revision: str | None = None, **kwargs: Any) -> dict[str, Any]:
    info = huggingface_hub.model_info(repo_id, revision=revision, files_metadata=True, **kwargs)
    return {
        "id": info.id,
        "sha": info.sha,
        "siblings": {
            sibling.rfilename: {"size": sibling.size, "sha256": sibling.lfs.sha256}
            for sibling in info.siblings or []
            if sibling.lfs is not None
        },
        "ckpt": getattr(info, "ckpt", None),
    }


def _plain(value: Any) -> Any:
    """A client result as JSON: a dataclass as its fields and `_type` (RepoFile or RepoFolder, ...),
    a datetime in ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
        return {"_type": type(value).__name__} | fields
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple) or inspect.isgenerator(value):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@op
def hf_api(method: str, **kwargs: Any) -> Any:
    """`HfApi().<method>(**kwargs)`, as a user script calls it, its result as plain JSON."""
    return _plain(getattr(huggingface_hub.HfApi(), method)(**kwargs))


@op
def hf_file_system(method: str, path: str, **kwargs: Any) -> Any:
    """`HfFileSystem().<method>(path, ...)`: the `hf://` paths pandas, datasets and fsspec read."""
    return _plain(getattr(huggingface_hub.HfFileSystem(), method)(path, **kwargs))


@op
def config(repo_id: str, revision: str | None = None) -> Json:
    from transformers import AutoConfig

    loaded: Json = AutoConfig.from_pretrained(repo_id, revision=revision).to_dict()
    return loaded


@op
def file_metadata(repo_id: str, filename: str, revision: str | None = None) -> Json:
    url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
    meta = huggingface_hub.get_hf_file_metadata(url)
    return {"commit": meta.commit_hash, "etag": meta.etag, "size": meta.size}


def answer(message: Json) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    answer({"ready": huggingface_hub.__version__})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            message: Json = {"result": OPS[request["op"]](**request.get("args", {}))}
        except Exception as exc:
            message = {
                "error": type(exc).__name__,
                "classes": [cls.__name__ for cls in type(exc).__mro__],
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
        answer(message)


if __name__ == "__main__":
    main()
