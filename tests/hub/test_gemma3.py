"""Gemma 3 (and Gemma 2) from Hugging Face files: logits within 1e-4 of transformers on
left-padded rows longer than the sliding window, cached decode and the sampler's greedy tokens
(past the window, with a reused prefix and padding between it and the prompt), scanned and
sharded layouts, a training loss over packed segments, the multimodal file's language model,
and clear refusals."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.reference import (GEMMA3, HF_COMMON, full_logits, hf_forward, hf_greedy, hf_logits,
                               hf_model, randomise, save_hf)
from star_jax.engine import lora, params as params_lib
from star_jax.engine.trainer import loss_sums
from star_jax.hub import CheckpointError, load_pretrained
from star_jax.sampling import Sampler

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _batch(lengths=(40, 23, 1), T=40, seed=0):
  """Left-padded rows, most longer than the window of 8."""
  rng = np.random.default_rng(seed)
  tokens_BxT = np.zeros((len(lengths), T), np.int32)
  mask_BxT = np.zeros((len(lengths), T), np.int32)
  for b, n in enumerate(lengths):
    tokens_BxT[b, T - n:] = rng.integers(1, 128, n)
    mask_BxT[b, T - n:] = 1
  return tokens_BxT, mask_BxT


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
  model = hf_model("gemma3")
  return model, save_hf(model, tmp_path_factory.mktemp("gemma3"))


@pytest.mark.parametrize("kind", ["gemma3", "gemma2"])
def test_logits_match_transformers(tmp_path, mesh1, kind, gemma3):
  model, path = gemma3 if kind == "gemma3" else (m := hf_model(kind), save_hf(m, tmp_path / kind))
  pre = load_pretrained(path, mesh1)
  cfg = pre.model_cfg
  assert (cfg.block_type, cfg.sliding_window, cfg.query_pre_attn_scalar) == ("gemma", 8, 24.0)
  assert cfg.num_params() == params_lib.count(pre.params)
  if kind == "gemma3":
    assert cfg.sliding_layers == (True, False, True, True) and cfg.qk_norm
    assert (cfg.rope_base, cfg.local_rope_base, cfg.rope_scaling) == (1000.0, 100.0,
                                                                      ("linear", 4.0))
  else:
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.qk_norm) == (2.0, 5.0, False)
  tokens_BxT, mask_BxT = _batch()
  ours = hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  ref = hf_logits(model, tokens_BxT, mask_BxT)
  real = mask_BxT.astype(bool)
  assert np.abs(ref[real]).max() > 1.0
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
  # The window is what makes them agree: without it the same weights are another model.
  unwindowed = pre.model_cfg.replace(layer_types=())
  graphdef = params_lib.abstract_model(unwindowed)[0]
  far = hf_forward(graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  assert np.abs(far[real] - ref[real]).max() > 1e-2


def test_greedy_and_cached_decode_past_the_window(gemma3, mesh1):
  """The sampler's cached decode: transformers' greedy tokens, alone and batched with a reused
  prefix (left padding between it and the shorter prompt: slots are not positions)."""
  model, path = gemma3
  pre = load_pretrained(path, mesh1)
  rng = np.random.default_rng(1)
  prompt = rng.integers(1, 128, 20).tolist()
  out = Sampler(pre.model_cfg, pre.graphdef, mesh1, batch_size=1).sample(pre.params, [prompt],
                                                                         24)
  ref = hf_greedy(model, prompt, 24)
  assert out.sequences(0) == ref
  # Cached decode equals the full forward of the whole text.
  logits = full_logits(pre.graphdef, pre.params, prompt + ref)
  assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == ref
  prefix = rng.integers(1, 128, 6).tolist()
  prompts = [prefix + rng.integers(1, 128, 3).tolist(), prefix + rng.integers(1, 128, 12).tolist()]
  sampler = Sampler(pre.model_cfg, pre.graphdef, mesh1, batch_size=2, min_prefix=4)
  out = sampler.sample(pre.params, prompts, 16)
  assert out.prefill_tokens == 6 + 2 * 16  # the prefix once, then both rests padded to 16
  for i, p in enumerate(prompts):
    assert out.sequences(i) == hf_greedy(model, p, 16), i


def test_scanned_and_sharded_equal_one_device(gemma3, mesh1, mesh8):
  _, path = gemma3
  one = load_pretrained(path, mesh1)
  tokens_BxT, mask_BxT = _batch()
  real = mask_BxT.astype(bool)
  a = hf_forward(one.graphdef, mesh1)(one.params, tokens_BxT, mask_BxT)
  for kw in (dict(), dict(scan_layers=True, remat=True)):
    other = load_pretrained(path, mesh8, **kw)
    b = hf_forward(other.graphdef, mesh8)(other.params, tokens_BxT, mask_BxT)
    np.testing.assert_allclose(b[real], a[real], atol=1e-5, rtol=0, err_msg=str(kw))


def _packed(lengths=(20, 17)):
  """One row of packed segments, each longer than the window, positions restarting in each."""
  rng = np.random.default_rng(2)
  segs = [rng.integers(1, 128, n + 1) for n in lengths]
  T = sum(lengths) + 3  # and padding at the end
  tokens, targets, seg_ids, positions = (np.zeros((1, T), np.int32) for _ in range(4))
  at = 0
  for i, s in enumerate(segs):
    n = len(s) - 1
    tokens[0, at:at + n], targets[0, at:at + n] = s[:-1], s[1:]
    seg_ids[0, at:at + n], positions[0, at:at + n] = i + 1, np.arange(n)
    at += n
  micro = dict(tokens=tokens, targets=targets, segment_ids=seg_ids, positions=positions,
               loss_mask=(seg_ids > 0).astype(np.int32))
  return {k: jnp.asarray(v) for k, v in micro.items()}, segs


@pytest.mark.parametrize("kind", ["gemma3", "gemma2"])
def test_training_loss_over_packed_segments_is_transformers(tmp_path, mesh1, kind, gemma3):
  model, path = gemma3 if kind == "gemma3" else (m := hf_model(kind), save_hf(m, tmp_path / kind))
  micro, segs = _packed()
  with torch.no_grad():
    ref = sum(float(model(input_ids=torch.tensor(s[None, :-1].astype(np.int64)),
                          labels=torch.tensor(s[None, 1:].astype(np.int64)),
                          shift_labels=torch.tensor(s[None, 1:].astype(np.int64))).loss)
              * (len(s) - 1) for s in segs)
  for kw in (dict(), dict(scan_layers=True, remat=True)):
    pre = load_pretrained(path, mesh1, **kw)
    loss = lambda p, gd=pre.graphdef: loss_sums(params_lib.merge(gd, p), micro)[0]
    total, grads = jax.jit(jax.value_and_grad(loss))(pre.params)
    np.testing.assert_allclose(float(total), ref, rtol=1e-5)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # LoRA on top of the loaded base trains its adapters through the windowed layers.
  cfg = pre.model_cfg.replace(lora_rank=2, scan_layers=False, remat=True)
  base = load_pretrained(path, mesh1).params
  lgraphdef, lparams = lora.add_adapters(cfg, mesh1, base)
  adapters, frozen = lora.partition(lparams)
  grads = jax.grad(lambda a: loss_sums(params_lib.merge(lgraphdef, a, frozen), micro)[0])(adapters)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


def test_multimodal_checkpoint_loads_its_language_model(tmp_path, mesh1):
  torch.manual_seed(6)
  text = transformers.Gemma3TextConfig(**{**HF_COMMON, **GEMMA3})
  vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           image_size=28, patch_size=14)
  model = transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
      text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4))
  randomise(model, norm_one=0.0)
  model.eval()
  path = save_hf(model, tmp_path / "mm")
  assert "text_config" in json.load(open(os.path.join(path, "config.json")))
  pre = load_pretrained(path, mesh1)
  assert pre.model_cfg.sliding_layers == (True, False, True, True)
  tokens_BxT, mask_BxT = _batch((30, 12), T=30)
  real = mask_BxT.astype(bool)
  np.testing.assert_allclose(hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT,
                                                            mask_BxT)[real],
                             hf_logits(model, tokens_BxT, mask_BxT)[real], atol=1e-4, rtol=0)


def _with_config(path, tmp_path, edit):
  cfg = json.load(open(os.path.join(path, "config.json")))
  edit(cfg)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "model.safetensors").write_bytes(open(os.path.join(path, "model.safetensors"),
                                               "rb").read())
  (bad / "config.json").write_text(json.dumps(cfg))
  return str(bad)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["rope_parameters"]["sliding_attention"].update(rope_type="yarn"),
     r"config\.json: RoPE scaling 'yarn' of the sliding_attention layers is not implemented"),
    (lambda c: c["rope_parameters"]["full_attention"].update(rope_type="dynamic"),
     r"config\.json: RoPE scaling 'dynamic' of the full_attention layers"),
    (lambda c: c.pop("query_pre_attn_scalar"), r"config\.json: no 'query_pre_attn_scalar', which "
     r"a Gemma3ForCausalLM config needs"),
    (lambda c: c.pop("sliding_window"), r"config\.json: no 'sliding_window'"),
    (lambda c: c.update(hidden_activation="relu"), r"config\.json: hidden_activation='relu'"),
    (lambda c: c.update(layer_types=["full_attention"]), r"config\.json: layer_types="),
])
def test_bad_configs_are_refused_by_file_and_key(gemma3, tmp_path, mesh1, edit, match):
  _, path = gemma3
  with pytest.raises(CheckpointError, match=match):
    load_pretrained(_with_config(path, tmp_path, edit), mesh1)
