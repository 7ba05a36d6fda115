"""Attention kernels for the shared layout: flex BlockMask vs dense mask, auto choice, fallback, mask cache."""
import copy
import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask, create_mask

import anyalign.model
from anyalign.data.collate import collate_rows, rows_for
from anyalign.logprobs import attention_block_mask, attention_mask_4d
from anyalign.model import MultimodalLM, StepCache
from conftest import separate_logp
from test_model import _examples


@pytest.fixture()
def eager_flex(monkeypatch):
    """transformers compiles flex attention on first use (~30 s on 2 CPU cores, forward only on CPU); the
    unfused eager kernel applies the same BlockMask, which is what these tests are about."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def eager(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", eager)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
        yield


@pytest.fixture()
def text_model(tiny_lm):
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {}).eval()


def _batch(model, examples, layout):
    return collate_rows(rows_for(examples, layout), model.tokenizer.pad_token_id, dict(model.adapters.items()),
                        len(examples))


def _logps(model, batch, cache=None):
    out = model(batch, cache)
    return {k: out.logps[ix] for k, ix in batch["index"].items()}


def _text_examples(model):
    def ids(text):
        return model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return [{"key": "0", "media": {}, "prompt": ids("Say something about cats."),
             "responses": {"chosen": ids("Cats purr."), "rejected": ids("Dogs bark, loudly and often.")}},
            {"key": "1", "media": {}, "prompt": ids("Name a colour, please, any colour."),
             "responses": {"chosen": ids("Blue."), "rejected": ids("Seven.")}}]


def _roles(spans: list[list[tuple[int, int]]]) -> torch.Tensor:
    """Rows from (role, length) spans, padded with -1."""
    length = max(sum(n for _, n in row) for row in spans)
    return torch.tensor([sum(([r] * n for r, n in row), []) + [-1] * (length - sum(n for _, n in row))
                         for row in spans])


def test_dense_mask_rule_by_hand():
    allowed = attention_mask_4d(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 0, 0, 1, 0],   # slot 2 sees the prompt and itself, not slot 1
                             [0, 0, 0, 0, 0, 1]],  # padding sees itself only
                            dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_block_mask_equals_dense_mask():
    # longer than one 128-token block, so block sparsity (empty / partial / full blocks) is exercised
    roles = _roles([[(0, 100), (1, 60), (2, 90)],
                    [(0, 20), (1, 130), (2, 40), (3, 30)],
                    [(0, 150), (1, 150), (2, 70)]])
    dense = attention_mask_4d(roles) == 0  # [rows, 1, T, T]
    block_mask = attention_block_mask(roles)
    assert isinstance(block_mask, BlockMask) and block_mask.shape == (3, 1, 370, 370)
    rows, _, t, _ = dense.shape
    assert torch.equal(create_mask(block_mask.mask_mod, rows, 1, t, t, device="cpu"), dense)
    # the kernel visits exactly the blocks holding an allowed pair, and skips mask_mod only on all-allowed ones
    b = block_mask.BLOCK_SIZE[0]
    padded = torch.zeros(rows, 1, -(-t // b) * b, -(-t // b) * b, dtype=torch.bool)
    padded[..., :t, :t] = dense
    blocks = padded.unflatten(2, (-1, b)).unflatten(4, (-1, b))  # [rows, 1, qb, b, kb, b]
    assert torch.equal(block_mask.to_dense().bool(), blocks.any(5).any(3))
    full = BlockMask.from_kv_blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices,
                                    BLOCK_SIZE=block_mask.BLOCK_SIZE, seq_lengths=(t, t)).to_dense().bool()
    assert torch.equal(full, blocks.all(5).all(3))  # positions past T count as masked: edge blocks are partial
    assert full.any() and (~block_mask.to_dense().bool()).any()  # both kinds of block occur


def test_flex_equals_sdpa_and_separate_forwards(tiny_lm, tiny_vit, eager_flex):
    from modalities import ImageAdapter
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit)}).eval()
    exs = _examples(model)
    with torch.no_grad():
        separate = {name: torch.stack([separate_logp(model, ex, name) for ex in exs]) for name in ("chosen", "rejected")}
        sdpa = _logps(model, _batch(model, exs, "shared"))
        model.lm.set_attn_implementation("flex_attention")
        batch = _batch(model, exs, "shared")
        cache = StepCache()
        flex = _logps(model, batch, cache)
    assert model.attn_implementation == "flex_attention"
    assert [type(m) for m in cache.masks.values()] == [BlockMask]  # no dense mask was built
    for name in ("chosen", "rejected"):
        torch.testing.assert_close(flex[name], separate[name], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(flex[name], sdpa[name], atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention has no backward on CPU (torch 2.14)")
def test_flex_gradients_match_concatenated(tiny_lm):
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {}).cuda()
    exs = _text_examples(model)
    grads = {}
    for layout, attn in (("concatenated", "sdpa"), ("shared", "flex_attention")):
        model.lm.set_attn_implementation(attn)
        model.zero_grad()
        batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _batch(model, exs, layout).items()}
        batch["index"] = {k: v.cuda() for k, v in batch["index"].items()}
        cache = StepCache()
        lp = _logps(model, batch, cache)
        (lp["chosen"].sum() - 0.5 * lp["rejected"].sum()).backward()
        grads[layout] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert isinstance(next(iter(cache.masks.values())), BlockMask)
    for a, b in zip(grads["shared"], grads["concatenated"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_layout_unsupported_reason(text_model):
    for attn in ("sdpa", "eager", "flex_attention"):
        text_model.lm.set_attn_implementation(attn)
        assert text_model.shared_layout_unsupported_reason() is None, attn
    text_model.lm.config._attn_implementation_internal = "flash_attention_2"  # not installed here: fake it
    assert "flash_attention_2" in text_model.shared_layout_unsupported_reason()
    text_model.lm.config._attn_implementation_internal = "sdpa"
    config = text_model.lm.config
    config.layer_types = ["full_attention", "sliding_attention"]  # Gemma / Qwen2 with a window
    assert "sliding_attention" in text_model.shared_layout_unsupported_reason()
    config.layer_types, config.sliding_window = None, 4096  # Mistral: one window for every layer
    assert "sliding_window" in text_model.shared_layout_unsupported_reason()


def test_multi_slot_row_with_unsupported_kernel_raises(text_model):
    exs = _text_examples(text_model)
    text_model.lm.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match=r"attn_implementation='flash_attention_2'.*data\.layout: concatenated"):
        text_model(_batch(text_model, exs, "shared"))


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_mask_built_once_per_batch(text_model, attn, monkeypatch, eager_flex):
    built = []
    for name in ("attention_block_mask", "attention_mask_4d"):
        fn = getattr(anyalign.model, name)
        monkeypatch.setattr(anyalign.model, name, lambda *a, fn=fn, name=name: built.append(name) or fn(*a))
    text_model.lm.set_attn_implementation(attn)
    reference = copy.deepcopy(text_model)  # what the frozen_copy reference is
    batch = _batch(text_model, _text_examples(text_model), "shared")
    first = "attention_block_mask" if attn == "flex_attention" else "attention_mask_4d"
    with torch.no_grad():
        cache = StepCache()
        policy, ref = text_model(batch, cache), reference(batch, cache)
        assert built == [first]
        torch.testing.assert_close(policy.logps, ref.logps)
        reference.lm.set_attn_implementation("eager")  # another kernel gets a mask of its own
        torch.testing.assert_close(reference(batch, cache).logps, policy.logps, atol=1e-4, rtol=1e-5)
    assert built == [first, "attention_mask_4d"]


def test_auto_is_flex_on_cuda_and_sdpa_elsewhere(tiny_lm):
    model = MultimodalLM(tiny_lm, {}, attn_implementation="auto")
    assert model.attn_implementation == "sdpa"  # built on CPU
    assert model.configure_attention(torch.device("cuda")) == "flex_attention"  # only the config changes here
    assert model.lm.config._attn_implementation == "flex_attention"
    reference = copy.deepcopy(model)
    assert model.configure_attention("cpu") == "sdpa" and reference.attn_implementation == "flex_attention"
    model.lm.config.get_text_config().attention_dropout = 0.1  # transformers' flex path refuses dropout
    assert model.configure_attention("cuda") == "sdpa"
    explicit = MultimodalLM(tiny_lm, {}, attn_implementation="eager")
    assert explicit.configure_attention("cuda") == "eager"


def test_data_module_falls_back_to_concatenated_with_a_warning(image_model, monkeypatch, caplog):
    """An LM whose attention cannot take the 4-D mask trains the duplicated layout, and says so."""
    from anyalign.data import PreferenceDataModule
    from conftest import ASSETS
    shard = str(ASSETS / "data/image/val-000.tar")
    data = PreferenceDataModule(train_shards=shard, num_workers=0)
    data.bind(image_model)
    assert data.layout == "shared"
    monkeypatch.setattr(type(image_model), "attn_implementation", property(lambda self: "flash_attention_2"))
    data = PreferenceDataModule(train_shards=shard, num_workers=0)
    with caplog.at_level("WARNING", logger="anyalign"):
        data.bind(image_model)
    assert data.layout == "concatenated"
    assert "attn_implementation='flash_attention_2' cannot take" in caplog.text
    batch = next(iter(data.train_dataloader()))
    assert int(batch["roles"].max()) == 1  # one response per row: no 4-D mask needed
    assert image_model(batch).logps.shape == (16,)
