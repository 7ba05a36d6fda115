"""Refactors do not move the numbers: for every shipped config, the first held-out batch gives the same
policy and reference log-probs, token counts and loss as when ``tests/data/golden_logps.safetensors`` was
written (before the layering refactor).

Byte-identical (``torch.equal``) when this machine's CPU kernels and torch version are the ones that
wrote the file; on another CPU (other SIMD kernels) or torch the same sums can round differently, so
there the check is atol 1e-5. Rewrite the file only on purpose: ``python tests/test_golden_logps.py --write``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden_logps.safetensors"
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")  # the assembled-model configs
                 if "adapters" in (yaml.safe_load(p.read_text()).get("model") or {}))


def _signature() -> str:
    return f"torch {torch.__version__} cpu {torch.backends.cpu.get_cpu_capability()}"


def compute(config: str) -> dict[str, torch.Tensor]:
    """Policy and reference log-probs of the first held-out batch of ``config``, as training computes them."""
    from anyalign.cli import build_cli
    from anyalign.model import StepCache

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order every run
    try:
        cli = build_cli(["--config", str(ROOT / "configs" / f"{config}.yaml"), "--data.num_workers", "0"])
        module, data = cli.model, cli.datamodule
        module.bind_data(data)
        # the held-out rows the config's negatives make (not the default reliance rows added since)
        batch = next(iter(data._loader(data.val_urls, data.val_batch_size, False, data.negatives)))
        module.eval()
        with torch.no_grad():
            cache = StepCache()
            policy = module.policy(batch, cache)
            reference = module.reference(batch, cache)
            loss, _ = module.loss_terms(policy, reference, batch)
        out = {"policy_logps": policy.logps, "policy_tokens": policy.tokens, "loss": loss.detach().reshape(1)}
        if reference is not None:
            out |= {"reference_logps": reference.logps, "reference_tokens": reference.tokens}
        for name, ix in batch["index"].items():
            out[f"index_{name}"] = ix
        return {k: v.detach().float().contiguous() for k, v in out.items()}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("config", CONFIGS)
def test_logps_unchanged(config, monkeypatch):
    from safetensors import safe_open
    monkeypatch.chdir(ROOT)
    with safe_open(str(GOLDEN), framework="pt") as f:
        meta = f.metadata()
        want = {k.split("/", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(config + "/")}
    assert want, f"{GOLDEN} has no values for {config}: write them with --write"
    got = compute(config)
    assert sorted(got) == sorted(want)
    exact = meta["signature"] == _signature()
    for k in want:
        if exact:
            assert torch.equal(got[k], want[k]), (config, k, got[k], want[k])
        else:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0, msg=f"{config} {k}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import os

    from safetensors.torch import save_file
    os.chdir(ROOT)
    tensors = {f"{c}/{k}": v for c in CONFIGS for k, v in compute(c).items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    save_file(tensors, str(GOLDEN), metadata={"signature": _signature(), "configs": json.dumps(CONFIGS)})
    print(f"wrote {len(tensors)} tensors for {len(CONFIGS)} configs to {GOLDEN} ({_signature()})")
