"""What critique and Fact-RLHF reward models read: facts and critiques in the token ids, critiques in the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlalign.data.collate import CollateConfig, collate, encode_record
from vlalign.data.records import PreferenceRecord, PromptRecord
from vlalign.rewards.base import Sample
from vlalign.rewards.rm_inputs import critique_record, facts_of, facts_prompt, with_facts, with_user_text

RED = str(Path(__file__).resolve().parents[1] / "fixtures" / "formats" / "images" / "red.png")
SCENE = {"image_size": 64, "objects": [
    {"shape": "circle", "color": "red", "size": "small", "x": 10, "y": 30, "bbox": [2, 22, 17, 37]},
    {"shape": "square", "color": "blue", "size": "small", "x": 40, "y": 30, "bbox": [32, 22, 47, 37]},
    {"shape": "square", "color": "blue", "size": "small", "x": 56, "y": 30, "bbox": [50, 22, 63, 37]},
]}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from vlalign.models.load import ModelConfig, load_model

    return load_model(ModelConfig(name_or_path=str(tiny_model_dir("llava"))))


def test_facts_come_from_meta_facts_or_the_scene():
    assert facts_of({"facts": ["a red circle", " a cat "]}, "row 0") == "a red circle; a cat"
    assert facts_of({"facts": "A red circle on grass."}, "row 0") == "A red circle on grass."
    assert facts_of({"scene": SCENE}, "row 0") == "the image shows two blue squares and a red circle"
    with pytest.raises(ValueError, match=r"row 3 \(id 'x'\): .*meta\['facts'\] is missing.*model.facts=false"):
        with_facts([PromptRecord("ok", [RED], "Q", None, {"facts": "f"})] * 3 + [PromptRecord("x", [RED], "Q", None, {})])
    with pytest.raises(ValueError, match=r"meta\['facts'\] is \[\]"):
        facts_of({"facts": []}, "row 0")


def test_facts_and_answer_go_into_the_last_user_turn_of_a_conversation():
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "user", "content": [{"type": "text", "text": "Describe it."}]}]
    rec = PromptRecord("c", [RED], "Describe it.", None, {"facts": "a red square"}, conv)
    (out,) = with_facts([rec])
    assert out.prompt == "Facts: a red square\nDescribe it."
    assert out.conversation[2]["content"][0]["text"] == "Facts: a red square\nDescribe it."
    assert out.conversation[0]["content"][1]["text"] == "Hi" and rec.conversation[2]["content"][0]["text"] == "Describe it."
    asked = critique_record(out, "A red square.", "Correct.", "chosen")
    assert (asked.id, asked.reference) == ("c/chosen", "Correct.")
    assert asked.conversation[2]["content"][0]["text"].endswith("Answer: A red square.\n\nCritique this answer: say what "
                                                              "it gets wrong about the image, or that it is correct.")
    no_text = with_user_text(PromptRecord("n", [RED], "", None, {}, [{"role": "user", "content": [{"type": "image"}]}]),
                             lambda t: t + "X")
    assert no_text.conversation[0]["content"] == [{"type": "image"}, {"type": "text", "text": "X"}]


def _ids(processor, record, kind="pair"):
    return encode_record(processor, record, 0, CollateConfig(max_length=400), kind).prompt_ids


def test_facts_context_is_in_the_token_ids(tiny):
    tok = tiny.processor.tokenizer
    plain = PreferenceRecord("p", [RED], "Describe the image.", "A red circle.", "A blue circle.", meta={"scene": SCENE})
    (facted,) = with_facts([plain])
    a, b = _ids(tiny.processor, plain), _ids(tiny.processor, facted)
    start = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # first id where they part
    tail = len(a) - start
    assert a[:start] == b[:start] and a[start:] == b[len(b) - tail:]  # the facts are one inserted block
    inserted = b[start : len(b) - tail]
    expected = tok(facts_prompt("Describe the image.", facts_of(plain.meta, "row 0")), add_special_tokens=False)["input_ids"]
    prompt_ids = tok("Describe the image.", add_special_tokens=False)["input_ids"]
    assert inserted + prompt_ids == expected  # exactly the ids of "Facts: the image shows ...\n"
    assert tok.decode(inserted).strip() == "Facts: the image shows two blue squares and a red circle"


def _critic(tiny, max_new_tokens=6):
    from vlalign.models.critique_head import CritiqueHeadModel
    from vlalign.rewards.critique import CritiqueReward
    from vlalign.rewards.learned import LoadedScalarModel

    torch.manual_seed(0)
    model = CritiqueHeadModel(tiny.model).eval()
    return CritiqueReward("unused", batch_size=4, max_new_tokens=max_new_tokens,
                          loaded=LoadedScalarModel(model, tiny.processor, "critique", Path("."), 400))


def test_critique_source_returns_its_critiques_and_scores_with_them(tiny):
    critic = _critic(tiny)
    samples = [Sample([RED], "Describe the image.", "A red circle.", {}),
               Sample([RED], "Describe the image.", "Two blue squares.", {})]
    out = critic.score(samples)
    assert out.notes == critic.write_critiques(samples)  # the greedy critiques, one per sample
    assert all(isinstance(n, str) for n in out.notes) and len(out.notes) == 2
    assert torch.equal(out.rewards, critic.score_with(samples, out.notes))
    assert out.parts["critique_rm"].shape == (2,)


def test_the_score_depends_on_the_critique(tiny):
    critic = _critic(tiny)
    sample = [Sample([RED], "Describe the image.", "A red circle.", {})]
    rows = critic.critique_rows(sample * 2, ["Correct.", "Mentions a red circle that is not in the image."])
    batch = collate([encode_record(tiny.processor, r, i, CollateConfig(max_length=400), "sft") for i, r in enumerate(rows)],
                    tiny.processor)
    ids = batch.inputs["input_ids"]  # (2, T): the same prompt and answer, two critiques
    n = int(batch.response_mask[0].nonzero()[0])  # where the critique starts
    assert torch.equal(ids[0, :n], ids[1, :n]) and not torch.equal(ids[0], ids[1])
    good, bad = critic.score_with(sample, ["Correct."]), critic.score_with(sample, ["Mentions a red circle that is not in the image."])
    assert abs(good.item() - bad.item()) > 1e-4  # the head reads the critique, not only the answer


def test_the_critique_source_refuses_a_plain_reward_model(tiny):
    from vlalign.models.heads import ScalarHeadModel
    from vlalign.rewards.critique import CritiqueReward
    from vlalign.rewards.learned import LoadedScalarModel

    loaded = LoadedScalarModel(ScalarHeadModel(tiny.model), tiny.processor, "reward", Path("m"), 400)
    with pytest.raises(ValueError, match="needs a critique reward model.*use source 'learned'"):
        CritiqueReward("m", loaded=loaded)


def test_a_facts_model_scores_with_the_sample_facts(tiny):
    from vlalign.models.heads import ScalarHeadModel
    from vlalign.rewards.learned import LearnedRewardOnly, LoadedScalarModel

    torch.manual_seed(0)
    loaded = LoadedScalarModel(ScalarHeadModel(tiny.model).eval(), tiny.processor, "reward", Path("m"), 400, facts=True)
    src = LearnedRewardOnly("m", loaded=loaded)
    s = [Sample([RED], "Describe the image.", "A red circle.", {"facts": "a red circle"}),
         Sample([RED], "Describe the image.", "A red circle.", {"facts": "a green triangle"})]
    r = src.score(s).rewards
    # same answer, other facts: the scores part by 0.013 here, where batch position moves them by ~1e-7
    assert abs(r[0].item() - r[1].item()) > 1e-4
    with pytest.raises(ValueError, match=r"row 0 \(id 'sample_0'\).*meta\['facts'\] is missing"):
        src.score([Sample([RED], "Describe the image.", "A red circle.", {})])
    plain = LearnedRewardOnly("m", loaded=loaded, facts=False).score(s).rewards
    assert plain[0].item() == pytest.approx(plain[1].item(), abs=1e-6)  # facts=false: the facts are not read


def test_a_policy_answer_longer_than_the_training_rows_still_scores(tiny):
    from vlalign.models.critique_head import CritiqueHeadModel
    from vlalign.rewards.critique import CritiqueReward
    from vlalign.rewards.learned import LoadedScalarModel

    # trained with max_length 100; the answer sits in the prompt, which is never cut
    loaded = LoadedScalarModel(CritiqueHeadModel(tiny.model).eval(), tiny.processor, "critique", Path("m"), 100)
    long_answer = "The image shows " + ", ".join(["a red circle"] * 40) + "."
    sample = [Sample([RED], "Describe the image.", long_answer, {})]
    assert CritiqueReward("m", max_new_tokens=4, loaded=loaded).score(sample).rewards.shape == (1,)
    with pytest.raises(ValueError, match="needs max_length >="):
        CritiqueReward("m", max_new_tokens=4, max_length=100, loaded=loaded).score_with(sample, ["Correct."])
