"""AlignModule: log-probs -> weighted loss terms -> metrics. Deliberately thin.

The terms come from ``LOSSES``; the module asks the policy (and the reference, only if a term needs one)
for the sequences the terms name, and nothing more.
"""
from __future__ import annotations

import inspect
import logging
import math

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from torch import nn

from modalities import ModalityAdapter

from .data.negatives import validate_negatives
from .losses import DATA_INPUTS, RunningMean, parse_input, select_input, validate_terms
from .metrics import HeldOut, TermOutput, default_reward_term, step_metrics
from .families import build_policy
from .model import StepCache
from .reference import STRATEGIES, build_reference
from .sequences import Needs

log = logging.getLogger("anyalign")


class AlignModule(L.LightningModule):
    def __init__(
        self,
        lm: str = "assets/tiny-lm",
        adapters: dict[str, ModalityAdapter] | None = None,
        losses: list[dict] | None = None,
        negatives: dict[str, list[dict]] | None = None,
        reference: str = "auto",
        reference_cache: str | None = None,
        reference_sync: dict | None = None,
        lora: dict | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        scheduler: str = "cosine",
        attn_implementation: str = "auto",
        torch_dtype: str = "float32",
        chat_template: str | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        export_dir: str | None = "export",
        reward_term: str | None = None,
        freeze: list[str] | None = None,
        media: dict[str, dict] | None = None,
        processor_kwargs: dict | None = None,
        online: dict | None = None,
        lr_groups: dict[str, float] | None = None,
    ):
        """
        Args:
            lm: Hugging Face causal LM (local directory or hub id); its tokenizer must have a chat template.
            adapters: modality name -> adapter, e.g. ``{video: {class_path: VideoAdapter}}``.
            losses: weighted terms, e.g. ``[{name: sigmoid, weight: 1.0, beta: 0.1}, {name: sft, weight: 0.1}]``.
            negatives: corruption operators per modality for conditional negatives, e.g.
                ``{video: [{op: reverse, p: 0.5}, {op: drop_segment, p: 0.5, fraction: 0.4}]}``.
            reference: ``frozen_copy``, ``adapter_disabled`` (LoRA: the policy with its LoRA switched off),
                ``precomputed`` (read from ``reference_cache``), ``none``, or ``auto`` (adapter_disabled with
                LoRA, else frozen_copy, if a term needs one).
            reference_cache: directory of precomputed reference log-probs, written by
                ``python -m anyalign precompute --config <this config>`` (for ``reference: precomputed``).
            reference_sync: TR-DPO: move the frozen copy towards the policy after every N-th optimizer step,
                ``{every: N, alpha: α}``: θ_ref ← α·θ + (1 - α)·θ_ref (α = 1: a hard copy); ``frozen_copy`` only.
            lora: LoRA on the LM via peft, e.g. ``{r: 16, lora_alpha: 32, lora_dropout: 0.05}`` (any
                ``peft.LoraConfig`` field; ``target_modules`` defaults to ``all-linear``).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps.
            scheduler: ``cosine`` (decay to 0 at trainer.max_steps) or ``constant`` after warm-up.
            attn_implementation: LM attention kernel: ``auto`` (default: flex attention on CUDA when the LM
                supports it, with a block-sparse slot mask and no dense ``[rows, T, T]`` one; SDPA with the
                dense float mask elsewhere), ``sdpa``, ``eager`` or ``flex_attention`` (CUDA only: flex has no
                backward on CPU). Kernels that cannot take the shared layout's mask (``flash_attention_2``)
                train the concatenated layout.
            torch_dtype: dtype the LM is loaded in (``float32``, ``bfloat16``).
            chat_template: Jinja chat template (string or ``.jinja`` file) replacing the tokenizer's.
            gradient_checkpointing: recompute LM activations in backward to save memory.
            trust_remote_code: allow custom model code from the LM's repository (off unless you set it).
            export_dir: where the aligned model is written in Hugging Face format at the end of ``fit``
                (relative paths go under the run's log directory); None disables.
            reward_term: the loss term whose rewards are logged as ``rewards/*`` and give the held-out
                accuracy (default: the only term comparing chosen with rejected; required if there are several).
            freeze: pretrained multimodal models only (``lm`` a LLaVA, Qwen2-VL, Gemma 3, ... checkpoint, no
                ``adapters``): the parts kept fixed, from ``encoder`` (vision/audio towers), ``projector``, ``lm``
                (default ``[encoder]``; with ``lora`` the LM's base weights stay fixed anyway).
            media: pretrained multimodal models only: decoding options per modality, e.g.
                ``{video: {num_frames: 8, fps: 2}, audio: {max_seconds: 30}}``.
            processor_kwargs: pretrained multimodal models only: passed to ``AutoProcessor.from_pretrained``
                (e.g. ``{max_pixels: 401408}`` for Qwen2-VL).
            online: online and mixed DPO (with ``data.online_fraction`` > 0): K responses per online prompt sampled
                from the policy in each training step, ranked by a reward, e.g. ``{samples: 4, reward: {class_path:
                anyalign.online.TokenF1}, temperature: 1.0, max_new_tokens: 64}`` (see ``anyalign/online``).
            lr_groups: learning rates apart from ``lr`` for some trainable parameters: glob pattern over the
                policy's parameter names -> learning rate, e.g. ``{"adapters.*.projector.*": 1.0e-2}`` (the
                adapters' projectors; the first matching pattern wins). Same schedule and weight decay.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["adapters"])
        self.terms = validate_terms(losses if losses is not None else [{"name": "sigmoid"}])
        # each term's spec bound to its parameters (reference_free: true drops its reference inputs)
        needs_ref = any(t["spec"].needs_reference for t in self.terms)
        if reference == "auto":
            reference = ("adapter_disabled" if lora else "frozen_copy") if needs_ref else "none"
        if reference not in STRATEGIES:
            raise ValueError(f"model.reference={reference!r} is not one of {('auto',) + STRATEGIES}")
        if needs_ref and reference == "none":
            names = [t["name"] for t in self.terms if t["spec"].needs_reference]
            raise ValueError(f"model.reference=none but loss term(s) {names} need a reference model")
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"model.scheduler={scheduler!r} is not one of ('cosine', 'constant')")
        self.sequences = sorted(set().union(*(t["spec"].sequences for t in self.terms)))
        self.needs = Needs(tuple(self.sequences))
        self.reward_term = default_reward_term(self.terms, reward_term)
        # the sequences the terms take from the reference model
        ref_sequences = sorted(set().union(*(t["spec"].reference_sequences for t in self.terms)))
        self.policy = build_policy(lm, dict(adapters or {}), attn_implementation, torch_dtype, chat_template,
                                   gradient_checkpointing, trust_remote_code, lora, freeze, media, processor_kwargs)
        self.negatives = validate_negatives(negatives, self.policy.adapters)
        if self.needs.train_negatives and not self.negatives:
            names = [t["name"] for t in self.terms if Needs(tuple(t["spec"].sequences)).train_negatives]
            raise ValueError(f"loss term(s) {names} score a response under corrupted media, but "
                             "model.negatives names no corruption operator")
        self.reference = build_reference(reference if needs_ref else "none", self.policy, reference_cache,
                                         ref_sequences, torch_dtype, self.negatives, reference_sync)
        # running state of terms that keep one (BCO's reward mean): buffers, so checkpoints hold them
        self.term_state = nn.ModuleDict({str(i): RunningMean() for i, t in enumerate(self.terms)
                                         if t["spec"].state})
        if online is not None:
            from .online import OnlineSampler
            self.online = OnlineSampler(online)
            if self.needs.unpaired:
                raise ValueError("model.online samples K responses to rank; the loss terms train on unpaired samples "
                                 "(KTO): use a paired or listwise loss")
        else:
            self.online = None
        self.skipped: list[tuple[str, str, str]] = []
        self.online_history: list[tuple[int, int, int, float]] = []  # (step, prompts scored, tied, reward sum)
        self._online_tools = None
        self.val_history: list[dict] = []
        self._held_out = HeldOut()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=True, **kwargs):
        """Rebuild a module from an anyalign checkpoint (safetensors; Lightning's own loader would unpickle).

        The stored hyper-parameters are used, overridden by ``kwargs``. Adapters are objects, not
        hyper-parameters: pass them as the training config built them, e.g.
        ``AlignModule.load_from_checkpoint("runs/x/checkpoints/last.ckpt", adapters={"image": ImageAdapter(...)})``.
        """
        from .checkpoint import load_checkpoint
        if hparams_file is not None:
            raise ValueError("hparams_file is not used: anyalign checkpoints hold their hyper-parameters")
        ckpt = load_checkpoint(checkpoint_path, map_location or "cpu")
        known = inspect.signature(cls.__init__).parameters  # LightningCLI also stores its "_instantiator"
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k in known}
        module = cls(**{**hparams, **kwargs})
        stored = sorted({k.split(".")[2] for k in ckpt["state_dict"] if k.startswith("policy.adapters.")})
        if stored != sorted(m for m, a in module.policy.adapters.items() if a.state_dict()):
            raise ValueError(f"{checkpoint_path} was trained with adapters {stored}, the module has "
                             f"{sorted(module.policy.adapters)}: pass adapters={{...}} as the training config built them")
        missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
        if strict and (missing or unexpected):
            raise ValueError(f"{checkpoint_path} does not fit the module built from its hyper-parameters: "
                             f"missing {missing[:4]}, unexpected {unexpected[:4]}")
        return module

    # ---- log-probs and loss terms ----
    def _inputs(self, name: str, policy, reference, batch, state) -> torch.Tensor:
        if name in DATA_INPUTS:  # a label carried by the batch, e.g. KTO's desirable flag
            return batch[name]
        if name == "reward_shift":
            return state
        source, seq, kind = parse_input(name)  # sum, per-token average or token count of a sequence
        index = batch["index"][seq]
        logps, tokens = (policy if source == "policy" else reference).select(index.clamp(min=0))
        value = select_input(kind, logps, tokens)
        return value.masked_fill(index < 0, 0.0) if index.dim() > 1 else value  # [B, K]: absent responses 0

    def loss_terms(self, policy, reference, batch) -> tuple[torch.Tensor, list[TermOutput]]:
        """The weighted sum of the configured terms, and each term's output."""
        loss, outputs = 0.0, []
        for i, term in enumerate(self.terms):
            spec, state = term["spec"], self.term_state[str(i)] if str(i) in self.term_state else None
            out = spec.fn(**{n: self._inputs(n, policy, reference, batch, state) for n in spec.inputs},
                          **term["params"])
            loss = loss + term["weight"] * out[0].mean()
            outputs.append(TermOutput(term["name"], *out))
        return loss, outputs

    def _step(self, batch: dict, stage: str):
        self._record_skipped(batch, stage)
        if batch["num_sequences"] == 0:
            return None
        cache = StepCache()  # mask and media features built once for both forwards
        policy = self.policy(batch, cache)
        reference = self.reference(batch, cache)
        del cache  # freed before backward
        self.reference.check_batch(batch, policy)
        loss, outputs = self.loss_terms(policy, reference, batch)
        metrics, verdicts = step_metrics(loss, outputs, self.reward_term, policy, reference, batch)
        return loss, metrics, verdicts

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list:
        """``python -m anyalign precompute``: the initial policy's (= the reference's) log-probs per sample."""
        self._record_skipped(batch, "predict")
        if batch["num_sequences"] == 0:
            return []
        out = self.policy(batch, StepCache())
        seqs = self.reference.sequences
        records = []
        for i, key in enumerate(batch["keys"]):
            ix = torch.stack([batch["index"][s][i] for s in seqs])
            if bool((ix < 0).any()):
                raise RuntimeError(f"precompute: sample {key} has no {seqs} row")
            records.append((batch["urls"][i], key, batch["digests"][i], out.logps[ix].float().tolist(),
                            out.tokens[ix].long().tolist()))
        return records

    def _online_batch(self, batch: dict) -> dict:
        """An online batch (``pipeline.Deferred``): K responses sampled for its online examples and ranked by the
        reward, then the whole batch collated as an offline one would be (its reward figures logged)."""
        if self._online_tools is None:  # the data module's tokenizer and training collator, built once
            data = self.trainer.datamodule
            self._online_tools = (data.tokenizer(), data.train_collator())
        tokenizer, collate = self._online_tools
        examples, skipped, stats = self.online(self.policy, batch["examples"], tokenizer, self.global_step,
                                               self.global_rank)
        if examples:
            out = move_data_to_device(collate(examples), self.device)
        else:
            out = {"num_sequences": 0, "keys": []}
        out["skipped"] = list(batch.get("skipped", [])) + skipped
        if stats.prompts:
            scored = stats.rewards
            self.online_history.append((self.global_step, len(scored), stats.tied,
                                        sum(sum(r) / len(r) for r in scored)))
            values = [r for rewards in scored for r in rewards]
            log = {"online/prompts": float(stats.prompts), "online/tied": stats.tied / max(len(scored), 1),
                   "online/generate_s": stats.seconds}
            if values:
                log |= {"online/reward": sum(values) / len(values),
                        "online/reward_best": sum(max(r) for r in scored) / len(scored),
                        "online/reward_worst": sum(min(r) for r in scored) / len(scored),
                        "online/response_tokens": sum(stats.tokens) / max(len(stats.tokens), 1)}
            for k, v in log.items():
                self.log(k, v, prog_bar=k == "online/reward", batch_size=max(len(scored), 1))
        return out

    def _nothing_to_train(self):
        """A step without a sequence to score: skipped on one process; under several, a zero loss that reaches
        every trainable parameter, so this rank still joins the gradient all-reduce the others wait in."""
        if self.trainer.world_size == 1:
            return None
        return sum((p.sum() * 0.0 for p in self.policy.parameters() if p.requires_grad), torch.zeros((), device=self.device))

    def training_step(self, batch: dict, batch_idx: int):
        online = "examples" in batch
        if online:  # responses sampled from the policy as it is now
            batch = self._online_batch(batch)
        out = self._step(batch, "train")
        if out is None:
            return self._nothing_to_train() if online else None
        loss, metrics, _ = out
        bs = len(batch["keys"])
        self.log("train/loss", metrics.pop("loss"), prog_bar=True, batch_size=bs)
        self.log_dict(metrics, prog_bar=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val"):
        out = self._step(batch, stage)
        if out is None:
            return None
        _, metrics, verdicts = out
        bs = len(batch["keys"])
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v, prog_bar=k in ("loss", "rewards/accuracies", "media_reliance"), batch_size=bs,
                     sync_dist=True)
        if verdicts is not None:
            self._held_out.add(verdicts)

    def test_step(self, batch: dict, batch_idx: int):
        """``python -m anyalign test``: the held-out metrics of ``validate`` on ``data.test_shards``."""
        return self.validation_step(batch, batch_idx, "test")

    def on_validation_epoch_start(self) -> None:
        self._held_out = HeldOut()

    on_test_epoch_start = on_validation_epoch_start

    def on_test_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self._held_out.reduce(self.trainer.strategy, self.device)
        summary = self._held_out.summary(self.global_step, False)
        if summary is not None and self.trainer.is_global_zero:
            unpaired = bool(getattr(self.trainer.datamodule, "unpaired", False))
            what, unit = ("test reward accuracy (per sample, unpaired)", "samples") if unpaired else \
                ("test reward accuracy", "pairs")
            print(f"[anyalign] {what}: {summary['accuracy']:.3f} on {summary['pairs']} {unit} "
                  f"({summary['ties']} ties, counted as not right)")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self._held_out.reduce(self.trainer.strategy, self.device)
        summary = self._held_out.summary(self.global_step, self.trainer.sanity_checking)
        if summary is not None:
            self.val_history.append(summary)

    def _record_skipped(self, batch: dict, stage: str) -> None:
        for url, key, reason in batch.get("skipped", []):
            log.warning("skipped sample %s in %s: %s", key, url, reason)
            self.skipped.append((url, key, reason))
        if batch.get("skipped") and stage == "train":
            self.log("data/skipped", float(len(self.skipped)), reduce_fx="max", batch_size=1)

    # ---- devices, optimizer, callbacks ----
    def on_fit_start(self) -> None:
        self.policy.configure_attention(self.device)  # attn_implementation=auto, resolved on the real device
        strategy = self.trainer.strategy
        # FSDP and DeepSpeed rewrite the policy's modules in place: nothing of it can be shared there
        unsharded = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(strategy, DeepSpeedStrategy)
        online = self.online is not None and getattr(self.trainer.datamodule, "online_fraction", 0) > 0
        if online and self.trainer.state.fn == "fit":
            if not unsharded:
                raise ValueError(f"online sampling (data.online_fraction > 0) runs generation on each rank's own "
                                 f"prompts, which a sharded model ({type(strategy).__name__}) cannot do rank by rank: "
                                 "use trainer.strategy=ddp")
            self.online.bind(self.policy)  # a reward model or judge is loaded now: a bad path fails before step 0
        self.reference.setup(self.policy, self.device, share_frozen=unsharded)

    on_validation_start = on_test_start = on_predict_start = on_fit_start

    def setup(self, stage: str) -> None:
        self.reference.check_precision(str(self.trainer.precision))  # the data module's setup, run first, checked the rest

    def bind_data(self, data) -> None:
        """Late binding of the data module to this model: tokenizer, adapters, negatives, sequence needs and
        the reference's own data stages (a precomputed cache, checked against the data settings here)."""
        fraction = getattr(data, "online_fraction", 0.0)
        if fraction > 0 and self.online is None:
            raise ValueError(f"data.online_fraction={fraction} needs model.online (how to sample and reward the "
                             "responses), e.g. {samples: 4, reward: {class_path: anyalign.online.TokenF1}}")
        if fraction > 0 and self.hparams.reference == "precomputed":
            raise ValueError("model.reference=precomputed cannot score responses sampled during training "
                             f"(data.online_fraction={fraction}): use frozen_copy or adapter_disabled")
        if self.online is not None and fraction == 0:
            log.warning("model.online is set but data.online_fraction is 0: training on offline pairs only")
        data.bind(self.policy, self.negatives, self.needs, self.reference)

    def configure_optimizers(self):
        from fnmatch import fnmatchcase
        lr_groups = dict(self.hparams.get("lr_groups") or {})
        groups = {None: []} | {pattern: [] for pattern in lr_groups}  # None: the rest, at lr (param_groups[0])
        for name, p in self.policy.named_parameters():
            if p.requires_grad:
                groups[next((g for g in lr_groups if fnmatchcase(name, g)), None)].append(p)
        unmatched = [g for g in lr_groups if not groups[g]]
        if unmatched:
            raise ValueError(f"model.lr_groups: {unmatched} match(es) no trainable parameter of the policy "
                             f"(names like {[n for n, p in self.policy.named_parameters() if p.requires_grad][-2:]})")
        params = [{"params": ps, "lr": self.hparams.lr if g is None else float(lr_groups[g])}
                  for g, ps in groups.items() if ps]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.max_steps
        if self.hparams.scheduler == "cosine" and (total is None or total < 1):
            raise ValueError("model.scheduler=cosine needs trainer.max_steps (the step it decays to 0 at)")
        warm = self.hparams.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if self.hparams.scheduler == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Each optimizer step: its learning rate, and the policy's total gradient 2-norm before clipping."""
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=1)
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        if grads:  # none when the strategy holds them outside .grad (DeepSpeed ZeRO 2/3): no false 0 logged
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads).float(), batch_size=1)

    def configure_callbacks(self):
        from .callbacks import CurvesCallback, ExportCallback, ReportCallback
        callbacks = [ReportCallback()]
        if self.hparams.export_dir:
            callbacks.append(ExportCallback(self.hparams.export_dir))
        callbacks.append(CurvesCallback())
        return callbacks + self.reference.callbacks()  # TR-DPO's reference updates
