"""Steering by SAE feature: clamping keeps the error term (clamp-to-self is a no-op), equals an
independent additive reference, and runs on the one decoder (batched == alone, cached ==
uncached) and in `mlux serve`; the spliced CE/KL match a perplexity reference."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlux.evaluation import perplexity
from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.sae import SAEConfig, SparseAutoencoder, clamp_hook, spliced_metrics
from mlux.serve import create_server_app
from mlux.steering import Steering, create_additive_hook

HOOK, PROMPTS = "residuals_2", ["mood: happy the", "the cat", "yesterday the"]


@pytest.fixture(scope="module")
def hooked():
    return HookedModel.from_pretrained("mlux-toy")


def make_sae(hooked: HookedModel, norm: str = "none", seed: int = 0) -> SparseAutoencoder:
    """A JumpReLU SAE fitted loosely to the layer: decoder rows from real activations."""
    acts = np.asarray(hooked.capture(PROMPTS, [HOOK])[HOOK]).reshape(-1, hooked.hidden_size)
    rng = np.random.default_rng(seed)
    d, s = hooked.hidden_size, 48
    w_dec = rng.normal(size=(s, d)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    cfg = SAEConfig(d_in=d, d_sae=s, architecture="jumprelu", normalize_activations=norm,
                    hook_name="blocks.2.hook_resid_post")
    scale = 1.0 if norm != "none" else float(np.sqrt((acts**2).sum(1).mean() / d))
    return SparseAutoencoder.from_weights(cfg, {
        "W_enc": w_dec.T / scale, "W_dec": w_dec * scale, "b_enc": np.zeros(s, np.float32),
        "b_dec": acts.mean(0).astype(np.float32), "threshold": np.full(s, 0.1, np.float32)})


def _active_feature(sae: SparseAutoencoder, acts: mx.array) -> int:
    return int(np.argmax(np.asarray(sae.encode(acts)).reshape(-1, sae.config.d_sae).sum(0)))


@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_clamp_to_self_is_a_no_op(hooked, norm):
    sae = make_sae(hooked, norm)
    base_logits = hooked.forward(PROMPTS)
    acts = hooked.capture(PROMPTS, [HOOK])[HOOK]
    j = _active_feature(sae, acts)
    with hooked.hooks([(HOOK, clamp_hook(sae, j, None))]):  # None: each token's own value
        logits = hooked.forward(PROMPTS)
        after = hooked.capture(PROMPTS, [HOOK])[HOOK]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(base_logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.encode(after)), np.asarray(sae.encode(acts)),
                               atol=1e-5)
    # One token, clamped to the number it has: the same, though the reconstruction (which the
    # clamp never substitutes for the stream) misses part of the activation.
    t = acts.shape[1] - 1
    j = int(mx.argmax(sae.encode(acts)[0, t]))
    own = float(sae.encode(acts)[0, t, j])
    assert own > 0 and float(mx.abs(sae.forward(acts[0, t]) - acts[0, t]).max()) > 1e-2
    with hooked.hooks([(HOOK, clamp_hook(sae, j, own, positions=(t, t + 1)))]):
        logits = hooked.forward(PROMPTS[:1])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(base_logits[:1]), atol=1e-5)


@pytest.mark.parametrize("norm", ["none", "constant_norm_rescale"])
def test_clamp_adds_decode_clamped_minus_decode_original(hooked, norm):
    sae = make_sae(hooked, norm, seed=1)
    ids = hooked.tokenize(PROMPTS[:1]).tokens[0].tolist()
    acts = hooked.capture([ids], [HOOK])[HOOK][0]  # (T, D)
    j, value = _active_feature(sae, acts[None]), 9.0
    f = sae.encode(acts)
    clamped = mx.concatenate([f[:, :j], mx.full((f.shape[0], 1), value), f[:, j + 1:]], axis=1)
    delta = sae.decode(clamped, acts) - sae.decode(f, acts)  # the API's formula, literally
    with hooked.hooks([(HOOK, clamp_hook(sae, j, value))]):
        got = hooked.forward([ids])
    with hooked.hooks([(HOOK, create_additive_hook(delta))]):
        want = hooked.forward([ids])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
    assert float(mx.abs(got - hooked.forward([ids])).max()) > 1e-2  # it does steer


def test_sae_clamp_on_the_decoder_batched_cached_and_alone(hooked):
    sae = make_sae(hooked)
    j = _active_feature(sae, hooked.capture(PROMPTS, [HOOK])[HOOK])
    rows = [Steering(sae_clamp=(sae, j, 12.0)), None,
            [Steering(sae_clamp=(sae, (j + 1) % 48, 0.0)), Steering(sae_clamp=(sae, j, 6.0))]]
    batched = generate_batch(hooked, PROMPTS, max_tokens=6, steering=rows)
    alone = [generate_batch(hooked, [p], max_tokens=6, steering=[r])[0]
             for p, r in zip(PROMPTS, rows, strict=True)]
    assert batched == alone
    # Rows that end early leave the batch; the others keep their own clamps.
    ragged = generate_batch(hooked, PROMPTS, max_tokens=[2, 6, 4], steering=rows)
    assert ragged == [alone[0][:2], alone[1], alone[2][:4]]
    assert batched[0] != generate_batch(hooked, PROMPTS[:1], max_tokens=6)[0]
    # Uncached reference: the whole sequence re-run each step with the clamp hook.
    ids = hooked.tokenize(PROMPTS[:1]).tokens[0].tolist()
    with hooked.hooks([(HOOK, clamp_hook(sae, j, 12.0))]):
        for _ in range(6):
            ids.append(int(mx.argmax(hooked.forward([ids])[0, -1])))
    assert ids[-6:] == batched[0]


def test_bad_clamps_are_refused(hooked):
    sae = make_sae(hooked)
    with pytest.raises(ValueError, match=r"feature must be an int in 0..47, got 48"):
        clamp_hook(sae, 48, 1.0)
    with pytest.raises(ValueError, match=r"clamp value must be a finite number"):
        clamp_hook(sae, 0, math.nan)
    with pytest.raises(ValueError, match=r"a Steering term needs a vector or sae_clamp"):
        Steering().per_layer()
    wide = SparseAutoencoder(SAEConfig(d_in=32, d_sae=8, k=4, hook_name="blocks.2.hook_resid_post"))
    with pytest.raises(ValueError, match=r"d_in is 32 but the model's hidden size is 96"):
        generate_batch(hooked, PROMPTS[:1], max_tokens=2,
                       steering=[Steering(sae_clamp=(wide, 0, 1.0))])


def test_serve_takes_a_feature_clamp_per_request(hooked):
    sae = make_sae(hooked)
    j = _active_feature(sae, hooked.capture(PROMPTS, [HOOK])[HOOK])
    app = create_server_app(hooked, max_batch=4, sae=sae)
    try:
        client = app.test_client()
        body = {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0}
        clamped = client.post("/v1/completions", json={**body,
                                                       "sae_clamp": {"feature": j, "value": 12}})
        plain = client.post("/v1/completions", json=body)
        want = generate_batch(hooked, PROMPTS[:1], max_tokens=6,
                              steering=[Steering(sae_clamp=(sae, j, 12.0))])[0]
        assert clamped.status_code == 200, clamped.get_json()
        assert clamped.get_json()["choices"][0]["text"] == hooked.tokenizer.decode(want)
        assert plain.get_json()["choices"][0]["text"] != clamped.get_json()["choices"][0]["text"]
        bad = client.post("/v1/completions", json={**body, "sae_clamp": {"feature": 99,
                                                                         "value": 1}})
        err = bad.get_json()["error"]
        assert bad.status_code == 400 and err["param"] == "sae_clamp.feature"
    finally:
        app.extensions["mlux_serve"]["engine"].close()
    app = create_server_app(hooked, max_batch=2)  # no --sae: a clear 400
    try:
        r = app.test_client().post("/v1/completions", json={**body, "sae_clamp": {
            "feature": 0, "value": 1}})
        assert r.status_code == 400 and "--sae" in r.get_json()["error"]["message"]
    finally:
        app.extensions["mlux_serve"]["engine"].close()


def test_spliced_metrics_match_a_perplexity_reference(hooked):
    sae = make_sae(hooked)
    m = spliced_metrics(hooked, sae, PROMPTS, batch_size=2)  # padded batches

    def mean_nll(hooks) -> float:
        total = count = 0.0
        with hooked.hooks(hooks):
            for p in PROMPTS:
                ids = hooked.tokenize([p]).tokens[0].tolist()
                total += math.log(perplexity(hooked, ids[:1], ids[1:])) * (len(ids) - 1)
                count += len(ids) - 1
        return total / count

    splice = [(HOOK, lambda x, ctx: sae.forward(x))]
    ablate = [(HOOK, lambda x, ctx: mx.zeros_like(x))]
    assert m["ce_loss_clean"] == pytest.approx(mean_nll(None), rel=1e-4)
    assert m["ce_loss_with_sae"] == pytest.approx(mean_nll(splice), rel=1e-4)
    assert m["ce_loss_with_ablation"] == pytest.approx(mean_nll(ablate), rel=1e-4)
    gap = m["ce_loss_with_ablation"] - m["ce_loss_clean"]
    assert m["ce_loss_recovered"] == pytest.approx(
        (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"]) / gap)
    assert m["kl_div_with_sae"] > 0 and m["spliced_tokens"] == sum(
        len(hooked.tokenize([p]).tokens[0]) - 1 for p in PROMPTS)
    # An exact SAE (the identity map through a 1-1 code) recovers everything and has KL 0.
    exact = SparseAutoencoder.from_weights(
        SAEConfig(d_in=96, d_sae=96, architecture="standard", apply_b_dec_to_input=False,
                  hook_name="blocks.2.hook_resid_post"),
        {"W_enc": np.eye(96, dtype=np.float32), "W_dec": np.eye(96, dtype=np.float32),
         "b_enc": np.full(96, 1e3, np.float32), "b_dec": np.full(96, -1e3, np.float32)})
    e = spliced_metrics(hooked, exact, PROMPTS)
    assert e["kl_div_with_sae"] < 1e-6 and e["ce_loss_recovered"] == pytest.approx(1, abs=1e-4)
