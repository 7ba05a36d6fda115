"""Stored reference log-probs (``model.reference: precomputed``): fingerprints, the read side used in the
data workers, and the writer ``python -m anyalign precompute`` uses.

What is stored is tied to what produced it:

- ``manifest.json`` holds a fingerprint of the **model** (a hash of the initial policy's weights, the
  LM dtype and the adapters' preprocessing arguments), the **template** (chat template, tokenizer
  vocabulary, placeholders) and the **data** settings (``max_length``, and the corruption seed and
  operators when conditional rows are stored). ``fit`` refuses a cache whose fingerprint differs.
- each sample carries a digest of its raw tar members (``anyalign.data.pipeline.sample_digest``); a sample
  whose bytes changed, or that the cache does not know, stops training with its key and shard named.
  Token counts are checked at each step.

Cache layout: ``DIR/manifest.json`` and ``DIR/shards/<shard>-<hash of its path>.r<rank>.safetensors``
(tensors ``logps`` and ``tokens`` of shape ``[samples, sequences]``; keys and digests in the header).
Several ranks may precompute in parallel (``--trainer.strategy ddp``); each writes its own part files.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

VERSION = 1
class StaleCache(ValueError):
    """The reference cache does not describe this run's model, template or data."""


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprint(policy, torch_dtype: str) -> str:
    """Hash of the initial policy: every weight and buffer (names, dtypes, shapes, bytes), the LM dtype and
    each adapter's constructor arguments (its preprocessing: frames, sizes, pooling, ...)."""
    h = hashlib.sha256()
    for name, t in sorted(policy.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    adapters = {m: (type(a).__module__ + "." + type(a).__qualname__, a.init_args) for m, a in policy.adapters.items()}
    h.update(json.dumps([torch_dtype, adapters], sort_keys=True, default=str).encode())
    return h.hexdigest()


def template_fingerprint(policy) -> str:
    tok = policy.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return _sha(tok.chat_template, vocab.encode(), policy.media_token_ids, tok.pad_token_id)


def shard_id(url: str) -> str:
    """File-name-safe id of a shard: its name plus a hash of its resolved path (or URL)."""
    where = os.path.realpath(url) if "://" not in url and not url.startswith("pipe:") else url
    stem = Path(url.split("?")[0]).name.split(".")[0] or "shard"
    return f"{stem}-{hashlib.sha1(where.encode()).hexdigest()[:12]}"


def _rerun(cache: str) -> str:
    return f"recompute it with `python -m anyalign precompute` and this run's config (model.reference_cache={cache})"


class ReferenceCache:
    """Read side, used in the data workers: (shard url, sample key) -> reference values. Picklable; each
    worker loads the part files of the shards it reads, when it first meets them."""

    def __init__(self, path: str, fingerprint: str):
        self.path, self.fingerprint = str(path), fingerprint
        self._shards: dict[str, dict[str, tuple[str, list[float], list[int]]]] = {}
        self.sequences: list[str] = []

    def load_manifest(self) -> dict:
        f = Path(self.path) / "manifest.json"
        if not f.is_file():
            raise StaleCache(f"model.reference=precomputed: no reference cache at {self.path} (no manifest.json); "
                             f"compute it first with `python -m anyalign precompute --config <this config>`")
        manifest = json.loads(f.read_text())
        if manifest.get("version") != VERSION:
            raise StaleCache(f"reference cache {self.path} has format version {manifest.get('version')}, "
                             f"this anyalign reads {VERSION}; {_rerun(self.path)}")
        self.sequences = manifest["sequences"]
        return manifest

    def _load_shard(self, url: str) -> dict:
        from safetensors import safe_open
        parts = sorted((Path(self.path) / "shards").glob(f"{shard_id(url)}.r*.safetensors"))
        if not parts:
            raise StaleCache(f"reference cache {self.path} has no log-probs for shard {url}: it was not among the "
                             f"shards precomputed (or it moved); {_rerun(self.path)}")
        entries = {}
        for part in parts:
            with safe_open(str(part), framework="pt") as f:
                meta = f.metadata()
                if meta.get("fingerprint") != self.fingerprint:
                    raise StaleCache(f"reference cache part {part} was written by another precompute run than "
                                     f"{self.path}/manifest.json; {_rerun(self.path)}")
                logps, tokens = f.get_tensor("logps").tolist(), f.get_tensor("tokens").tolist()
            for key, digest, lp, tk in zip(json.loads(meta["keys"]), json.loads(meta["digests"]), logps, tokens):
                entries[key] = (digest, lp, tk)
        return entries

    def lookup(self, url: str, key: str, digest: str) -> dict[str, tuple[float, int]]:
        if url not in self._shards:
            self._shards[url] = self._load_shard(url)
        entry = self._shards[url].get(key)
        if entry is None:
            raise StaleCache(f"reference cache {self.path} has no entry for sample {key} of shard {url}: the shard "
                             f"changed since the reference log-probs were computed; {_rerun(self.path)}")
        if entry[0] != digest:
            raise StaleCache(f"sample {key} of shard {url} changed since its reference log-probs were computed "
                             f"(its bytes no longer match the cache {self.path}); {_rerun(self.path)}")
        return {seq: (lp, tk) for seq, lp, tk in zip(self.sequences, entry[1], entry[2])}


class CacheWriter:
    """Collects ``predict_step`` records per shard; ``write`` stores this rank's part of each shard."""

    def __init__(self, path: str, fingerprint: str, manifest: dict):
        self.path, self.fingerprint, self.manifest = Path(path), fingerprint, manifest
        self.rows: dict[str, list] = {}

    def add(self, records: list) -> None:
        for url, key, digest, logps, tokens in records:
            self.rows.setdefault(url, []).append((key, digest, logps, tokens))

    def write(self, rank: int) -> int:
        from safetensors.torch import save_file
        shards = self.path / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        n = 0
        for url, rows in self.rows.items():
            save_file({"logps": torch.tensor([r[2] for r in rows], dtype=torch.float32),
                       "tokens": torch.tensor([r[3] for r in rows], dtype=torch.int32)},
                      str(shards / f"{shard_id(url)}.r{rank}.safetensors"),
                      metadata={"fingerprint": self.fingerprint, "url": url,
                                "keys": json.dumps([r[0] for r in rows]), "digests": json.dumps([r[1] for r in rows])})
            n += len(rows)
        if rank == 0:
            (self.path / "manifest.json").write_text(json.dumps(self.manifest, indent=1))
        return n


