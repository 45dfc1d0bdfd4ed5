"""Conditional steering: the decision (against a hand-written summary), its place in the one
decoder (fired row == the plain term, unfired row == unsteered, batched == alone, shared
prefill == own prefill), rules, files and bad input."""

from __future__ import annotations

import math
import statistics

import mlx.core as mx
import numpy as np
import pytest

from mlux import HookedModel, Steering, extract_steering_vectors, generate_batch
from mlux.conditions import Condition, Decision, all_of, any_of, not_
from mlux.decode import Decoder
from mlux.generate import collect_rows, prefill_with_cache, stream_rows
from mlux.testing import ARCHITECTURES, make_tiny_model
from mlux.toy import CONTRAST_PROMPTS
from mlux.vectors import SteeringVector

PROMPTS = [[5, 9, 13, 7, 21, 4], [8, 7, 21], [11, 12, 30, 6, 40, 41, 9, 22], [17, 6, 33, 5]]
FORMAL = ["furthermore the garden was remarkably", "yesterday the delegates felt notably",
          "the family remarked that the town was"]
CASUAL = ["so the garden was super", "today the pals felt kinda",
          "the family reckoned that the town was"]


@pytest.fixture(scope="module")
def toy():
    hooked = HookedModel.from_pretrained("mlux-toy")
    formality = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["formality"], [1, 3])
    sentiment = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"], [2])
    return hooked, formality, sentiment


def hand_scores(hooked, prompts, layer, direction, summary):
    """Each prompt alone, unbatched: numpy mean (or last) of its residuals, numpy cosine."""
    d = np.array(direction, dtype=np.float64)
    out = []
    for p in prompts:
        _, acts = hooked.run_with_cache(p, [f"residuals_{layer}"])
        x = np.array(acts[f"residuals_{layer}"][0].astype(mx.float32), dtype=np.float64)
        s = x.mean(axis=0) if summary == "mean" else x[-1]
        out.append(float(s @ d / np.linalg.norm(s) / np.linalg.norm(d)))
    return out


@pytest.mark.parametrize("summary", ["mean", "last"])
def test_scores_equal_a_hand_written_summary(toy, summary):
    hooked, formality, _ = toy
    cond = Condition(formality, 1, 0.0, summary=summary)
    got = [s[0] for s in cond.scores(hooked, FORMAL + CASUAL)]
    want = hand_scores(hooked, FORMAL + CASUAL, 1, formality[1], summary)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert cond.fires(hooked, FORMAL + CASUAL) == [w > 0.0 for w in want]


def test_decoder_decides_from_its_prefill_as_fires_does(toy):
    hooked, formality, sentiment = toy
    cond = Condition(formality, 1, 0.05)
    with Decoder(hooked) as decoder:
        uids = decoder.insert(FORMAL + CASUAL, max_tokens=2,
                              steering=[[Steering(sentiment, 2.0), Steering(sentiment, 2.0,
                                                                           condition=cond)]] * 6)
        decisions = [decoder.decisions(u) for u in uids]
    want = cond.scores(hooked, FORMAL + CASUAL)
    for d, w, fired in zip(decisions, want, cond.fires(hooked, FORMAL + CASUAL), strict=True):
        assert d[0] == Decision(True)  # unconditional terms always apply
        assert d[1].fired == fired
        np.testing.assert_allclose(d[1].scores, w, atol=1e-4)
    assert [d[1].fired for d in decisions] == [True] * 3 + [False] * 3


def plain_reference(hooked, prompt, term, max_tokens, behaviour_after_condition):
    """What a fired term must equal: the unconditional term from the last prompt token on when
    its layers are deeper than the condition's (decided in that very forward), else from the
    first generated token's position on."""
    n = len(hooked.tokenize(prompt).tokens[0].tolist())
    window = "generated" if behaviour_after_condition else n
    plain = Steering(term.vector, term.alpha, term.layers, window)
    return generate_batch(hooked, [prompt], max_tokens=max_tokens, steering=[plain])[0]


@pytest.mark.parametrize("condition_layer", [1, 3])
def test_fired_rows_are_steered_unfired_rows_are_not(toy, condition_layer):
    hooked, formality, sentiment = toy
    prompts = FORMAL + CASUAL
    cond = Condition(formality, condition_layer, 0.05)
    term = Steering(sentiment, 2.0, condition=cond)
    got = generate_batch(hooked, prompts, max_tokens=10, steering=[term] * len(prompts))
    base = generate_batch(hooked, prompts, max_tokens=10)
    fires = cond.fires(hooked, prompts)
    assert True in fires and False in fires
    # the complement rule (comparator flipped) does the opposite, row for row
    flipped = Steering(sentiment, 2.0, condition=cond.flipped())
    got_flipped = generate_batch(hooked, prompts, max_tokens=10, steering=[flipped] * 6)
    for p, g, gf, b, fired in zip(prompts, got, got_flipped, base, fires, strict=True):
        steered, plain = (g, gf) if fired else (gf, g)
        assert steered == plain_reference(hooked, p, term, 10, condition_layer < 2)
        assert steered != b and plain == b


def test_rules_combine_conditions(toy):
    hooked, formality, _ = toy
    c1, c3 = Condition(formality, 1, 0.05), Condition(formality, 3, 0.05)
    prompts = FORMAL + CASUAL
    f1, f3 = c1.fires(hooked, prompts), c3.fires(hooked, prompts)
    assert any_of(c1, not_(c1)).fires(hooked, prompts) == [True] * 6
    assert all_of(c1, not_(c1)).fires(hooked, prompts) == [False] * 6
    assert any_of(c1, c3).fires(hooked, prompts) == [a or b for a, b in zip(f1, f3, strict=True)]
    assert not_(c1).fires(hooked, prompts) == c1.flipped().fires(hooked, prompts)
    with pytest.raises(ValueError, match="at least one"):
        any_of()


def test_rule_table_steers_each_row_by_its_own_rules(toy):
    """A multi-steer rule table: happy if formal, sad if not; the two terms of a row are
    decided independently (one fires, the other not)."""
    hooked, formality, sentiment = toy
    cond = Condition(formality, 1, 0.05)
    table = [Steering(sentiment, 2.0, condition=cond),
             Steering(sentiment, -2.0, condition=not_(cond))]
    prompts = FORMAL[:1] + CASUAL[:1]
    got = generate_batch(hooked, prompts, max_tokens=8, steering=[table, table])
    happy = plain_reference(hooked, prompts[0], table[0], 8, True)
    sad = plain_reference(hooked, prompts[1], table[1], 8, True)
    assert got == [happy, sad]


def tiny(arch, bits=None):
    hooked = HookedModel(make_tiny_model(arch, quantize_bits=bits)[0], None)
    key = mx.random.key(1)
    cond_dir, beh = mx.random.normal((2, hooked.hidden_size), key=key)
    scale = mx.linalg.norm(hooked.capture([PROMPTS[0]], ["residuals_1"])["residuals_1"], axis=-1)
    behaviour = beh / mx.linalg.norm(beh) * scale.mean()
    scores = [s[0] for s in Condition(cond_dir, 0, 0.0).scores(hooked, PROMPTS)]
    # a threshold between the scores: two rows fire, two don't
    cond = Condition(cond_dir, 0, statistics.median(scores))
    return hooked, cond, behaviour


@pytest.mark.parametrize(("arch", "bits"), [(a, None) for a in ARCHITECTURES]
                         + [("llama", 4), ("gpt_bigcode", 4)])  # 4-bit: padded, row by row
def test_mixed_batch_rows_equal_each_prompt_alone(arch, bits):
    hooked, cond, behaviour = tiny(arch, bits)
    term = Steering(behaviour, 1.0, layers=[1, 2], condition=cond)
    fired = cond.fires(hooked, PROMPTS)
    assert sorted(fired) == [False, False, True, True]
    got = generate_batch(hooked, PROMPTS, max_tokens=6, steering=[term] * 4)
    base = generate_batch(hooked, PROMPTS, max_tokens=6)
    for p, g, b, f in zip(PROMPTS, got, base, fired, strict=True):
        assert g == generate_batch(hooked, [p], max_tokens=6, steering=[term])[0]
        assert g == (plain_reference(hooked, p, term, 6, True) if f else b)


def test_shared_prefill_continuations_see_the_same_decision():
    """Rows of one prompt share one prefill of prompt[:-1] (conditional terms never steer it);
    each continuation is what that prompt gets with its own prefill."""
    hooked, cond, behaviour = tiny("llama")
    for prompt, fired in zip(PROMPTS, cond.fires(hooked, PROMPTS), strict=True):
        terms = [Steering(behaviour, a, layers=[1, 2], condition=cond) for a in (0.5, 1.0, 2.0)]
        shared = collect_rows(stream_rows(hooked, prompt, terms, max_tokens=5), 3)
        alone = [generate_batch(hooked, [prompt], max_tokens=5, steering=[t])[0] for t in terms]
        assert shared == alone
        with Decoder(hooked) as decoder:
            uids = decoder.insert([prompt] * 3, max_tokens=2, steering=terms)
            assert [decoder.decisions(u)[0].fired for u in uids] == [fired] * 3


def test_condition_files_round_trip(toy, tmp_path):
    hooked, formality, _ = toy
    cond = Condition(formality, 1, 0.043, comparator="smaller", summary="last")
    path = cond.save(tmp_path / "formal.safetensors")
    back = Condition.load(path)
    assert (back.layer, back.threshold, back.comparator, back.summary) == (1, 0.043, "smaller",
                                                                          "last")
    np.testing.assert_array_equal(np.array(back.direction), np.array(cond.direction))
    assert SteeringVector.load(path).layers == [1]  # an ordinary vector file too
    assert back.fires(hooked, FORMAL + CASUAL) == cond.fires(hooked, FORMAL + CASUAL)
    formality.save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="carries no condition"):
        Condition.load(tmp_path / "plain.safetensors")


def test_bad_conditions_are_one_clear_error(toy):
    hooked, formality, sentiment = toy
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        Condition(formality, 1, math.nan)
    with pytest.raises(ValueError, match="unknown comparator 'bigger'; valid: larger, smaller"):
        Condition(formality, 1, 0.1, comparator="bigger")
    with pytest.raises(ValueError, match="unknown summary"):
        Condition(formality, 1, 0.1, summary="max")
    for wrong_type in (hooked.model, [[1.0], [2.0, 3.0]], "formal"):  # not MLX's own message
        with pytest.raises(ValueError, match="condition vector must be an array of numbers"):
            Condition(wrong_type, 1, 0.1)
    with pytest.raises(ValueError, match="condition vector contains NaN"):
        Condition(mx.full((96,), math.nan), 1, 0.1)
    wrong_size = Condition(mx.ones((8,)), 1, 0.1)
    out_of_range = Condition(formality[1], 7, 0.1)
    for bad, msg in ((wrong_size, "hidden size 8; the model's is 96"),
                     (out_of_range, r"layer 7 is out of range .* \(valid: 0..5\)")):
        with pytest.raises(ValueError, match=msg):
            generate_batch(hooked, FORMAL[:1], max_tokens=2,
                           steering=[Steering(sentiment, 1.0, condition=bad)])
        with pytest.raises(ValueError, match=msg):
            bad.fires(hooked, FORMAL[:1])
    with pytest.raises(ValueError, match="shape \\(8,\\); the model's hidden size is 96"):
        generate_batch(hooked, FORMAL[:1], max_tokens=2, steering=[
            Steering(mx.ones((8,)), 1.0, layers=[2], condition=Condition(formality, 1, 0.0))])
    with pytest.raises(ValueError, match="takes a Condition or a rule"):
        generate_batch(hooked, FORMAL[:1], max_tokens=2,
                       steering=[Steering(sentiment, 1.0, condition="formal")])
    cache, logits = prefill_with_cache(hooked, FORMAL[0])
    with pytest.raises(ValueError, match="decoder's own prefill"):
        Decoder(hooked).insert_prefilled(cache, logits, prompt_length=5, max_tokens=2,
                                         steering=Steering(sentiment, 1.0,
                                                           condition=Condition(formality, 1, 0)))


def test_exported_from_mlux():
    import mlux
    from mlux.condition_search import find_condition_point

    assert mlux.Condition is Condition and mlux.find_condition_point is find_condition_point
    assert {"Condition", "find_condition_point"} <= set(mlux.__all__)


def test_conditional_sae_clamp(toy):
    """An SAE clamp gated by a condition: fired rows equal the plain clamp from the first
    generated token's position on, unfired rows the unsteered model."""
    from test_sae_steering import make_sae

    hooked, formality, _ = toy
    sae = make_sae(hooked)
    cond = Condition(formality, 1, 0.05)
    term = Steering(sae_clamp=(sae, 3, 12.0), condition=cond)
    prompts = FORMAL + CASUAL
    got = generate_batch(hooked, prompts, max_tokens=8, steering=[term] * 6)
    base = generate_batch(hooked, prompts, max_tokens=8)
    fires = cond.fires(hooked, prompts)
    assert True in fires and False in fires
    for p, g, b, fired in zip(prompts, got, base, fires, strict=True):
        n = len(hooked.tokenize(p).tokens[0].tolist())
        plain = Steering(sae_clamp=(sae, 3, 12.0), positions=n)
        assert g == (generate_batch(hooked, [p], max_tokens=8, steering=[plain])[0] if fired
                     else b)
    assert any(g != b for g, b, f in zip(got, base, fires, strict=True) if f)
