"""A public reward model as the judge (eval.judge = a path or hub id): it reads the dialogue through its own chat
template, scores as the model itself scores (padding changes nothing), falls back to plain text and says so, is
pinned to a commit, and a bad name fails in one line saying what to set. No hub: a tiny Llama reward model is built
and saved here."""

from __future__ import annotations

import pytest
import torch

from tinyrlhf import config, evaluate
from tinyrlhf.base_model import ModelLoadError, train_tokenizer
from tinyrlhf.chat import ASSISTANT, dialogue, full_text, prompt_for, turns
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.runtime import reward_compute_dtype
from tinyrlhf.stages import judge_spec

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MULTI_TURN = dialogue([("Human", "How do I bake bread?"), ("Assistant", "Flour, water, salt and yeast."),
                       ("Human", "How long does it rise?")]) + ASSISTANT
PROMPTS = [prompt_for("What is the capital of France?"), MULTI_TURN]
REPLIES = ["Paris.", "About an hour, until it doubles in size, then shape it and let it rise again before baking."]


def _save_judge(folder, *, template: bool, bos: bool = False):
    """A tiny LlamaForSequenceClassification (one score) and a byte-level BPE tokenizer, saved as a hub model is;
    with `bos`, the tokenizer adds a BOS to every text and the template writes one too, as Llama 3's do."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = train_tokenizer([full_text(p, r) for p in PROMPTS for r in REPLIES] * 4, vocab_size=300)
    if template:
        tok.chat_template = ("{{ bos_token }}" if bos else "") + TEMPLATE
    if bos:
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return _save_judge(tmp_path_factory.mktemp("judge") / "rm", template=True)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return _save_judge(tmp_path_factory.mktemp("plain") / "rm", template=False)


def _rollouts(rows: list[tuple[str, str]], has_eos=None) -> evaluate.Rollouts:
    """One reply per prompt (TextJudge reads only the prompts, the texts and whether each ended)."""
    n = len(rows)
    return evaluate.Rollouts([p for p, _ in rows], 1, torch.zeros((n, 1), dtype=torch.long),
                             torch.zeros((n, 1), dtype=torch.long), has_eos or [True] * n, [t for _, t in rows], 0)


def _own_scores(folder, texts: list[str]) -> list[float]:
    """The model's own first logit for each text, one at a time, without padding, tokenized as its tokenizer does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts]


class _Recorder(torch.nn.Module):
    """The judge's model, recording the unpadded token ids of every row it is fed."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.fed = model, []

    def forward(self, input_ids, attention_mask):
        self.fed += [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_turns_invert_the_anthropic_layout_and_become_alternating_chat_messages():
    said = [("Human", "Hi"), ("Assistant", "Hello."), ("Human", "A joke?")]
    assert turns(dialogue(said)) == said
    assert turns(MULTI_TURN)[-1] == ("Assistant", "")  # a prompt's last turn is the reply's, still open
    assert evaluate.chat_messages(MULTI_TURN, " It rises. ") == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Flour, water, salt and yeast."},
        {"role": "user", "content": "How long does it rise?"},
        {"role": "assistant", "content": "It rises."}]
    # two Human turns in a row are one user message: templates expect the roles to alternate
    assert evaluate.chat_messages(dialogue([("Human", "a"), ("Human", "b")]) + ASSISTANT, "c") == [
        {"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]


def test_the_judge_reads_its_chat_template_of_the_turns_then_the_reply(judge_dir):
    from transformers import AutoTokenizer

    judge = evaluate.TextJudge(str(judge_dir), cpu_dtype="fp32")
    tok = AutoTokenizer.from_pretrained(judge_dir)
    judge.model = _Recorder(judge.model)
    judge.scores(_rollouts(list(zip(PROMPTS, REPLIES))), eos_token_id=0, missing_eos_penalty=1.0)
    expected = [tok.apply_chat_template([*({"role": "user" if w == "Human" else "assistant", "content": t}
                                           for w, t in turns(p)[:-1]), {"role": "assistant", "content": r}],
                                        tokenize=False) for p, r in zip(PROMPTS, REPLIES)]
    assert [judge.text(p, r) for p, r in zip(PROMPTS, REPLIES)] == expected
    assert expected[1].count("<|user|>") == 2 and expected[1].count("<|assistant|>") == 2  # the multi-turn prompt
    # fed token for token (shortest first: like lengths share a batch), no special token added twice
    assert sorted(judge.model.fed, key=len) == sorted((tok(t)["input_ids"] for t in expected), key=len)


def test_a_template_that_writes_a_bos_before_a_tokenizer_that_adds_one_gives_one_bos(tmp_path):
    folder = _save_judge(tmp_path / "rm", template=True, bos=True)
    judge = evaluate.TextJudge(str(folder), cpu_dtype="fp32")
    judge.model = _Recorder(judge.model)
    judge.scores(_rollouts([(PROMPTS[0], REPLIES[0])]), eos_token_id=0, missing_eos_penalty=1.0)
    bos = judge.tokenizer.bos_token_id
    assert judge.text(PROMPTS[0], REPLIES[0]).startswith(judge.tokenizer.bos_token)
    assert judge.model.fed[0][0] == bos and judge.model.fed[0][1] != bos  # as the Skywork-Reward-V2 cards score


def test_scores_are_the_models_own_and_padding_changes_none(judge_dir):
    rows = [(p, r[:n]) for p in PROMPTS for r in REPLIES for n in (3, 40, 200)]  # lengths differ within a batch
    judge = evaluate.TextJudge(str(judge_dir), cpu_dtype="fp32", batch=16)
    batched = judge.scores(_rollouts(rows), eos_token_id=0, missing_eos_penalty=1.0)
    alone = evaluate.TextJudge(str(judge_dir), cpu_dtype="fp32", batch=1)
    one_at_a_time = alone.scores(_rollouts(rows), eos_token_id=0, missing_eos_penalty=1.0)
    own = _own_scores(judge_dir, [judge.text(p, r) for p, r in rows])
    assert batched == pytest.approx(own, abs=1e-5) and one_at_a_time == pytest.approx(own, abs=1e-5)
    assert len(set(round(s, 6) for s in own)) > 1  # the replies are told apart
    unfinished = judge.scores(_rollouts(rows[:2], has_eos=[True, False]), eos_token_id=0, missing_eos_penalty=1.0)
    assert unfinished == pytest.approx([own[0], own[1] - 1.0], abs=1e-5)
    assert judge.dtype == torch.float32 and judge.truncated == 0


def test_a_text_longer_than_the_judge_reads_keeps_its_end_and_is_counted(judge_dir):
    judge = evaluate.TextJudge(str(judge_dir), cpu_dtype="fp32", max_length=12)
    judge.scores(_rollouts(list(zip(PROMPTS, REPLIES))), eos_token_id=0, missing_eos_penalty=1.0)
    assert judge.max_length == 12 and evaluate.judge_counts(judge) == {"truncated": 2, "scored": 2}
    assert evaluate.keep_end([7, 1, 2, 3, 4], 3, bos_id=7) == [7, 3, 4]  # a leading BOS is kept
    assert evaluate.keep_end([1, 2, 3, 4], 3, bos_id=7) == [2, 3, 4]


def test_without_a_chat_template_the_judge_reads_plain_text_and_says_so(plain_dir, tmp_path):
    judge = evaluate.TextJudge(str(plain_dir), cpu_dtype="fp32")
    assert not judge.chat_template and judge.text(PROMPTS[1], REPLIES[1]) == full_text(PROMPTS[1], REPLIES[1])
    scores = judge.scores(_rollouts(list(zip(PROMPTS, REPLIES))), eos_token_id=0, missing_eos_penalty=1.0)
    assert scores == pytest.approx(_own_scores(plain_dir, [full_text(p, r) for p, r in zip(PROMPTS, REPLIES)]),
                                   abs=1e-5)
    spec = judge_spec(get_profile("cpu", overrides={"eval.judge": str(plain_dir)}), get_paths(tmp_path), {})
    assert spec["chat_template"] is False and "no chat template" in spec["why"]


def test_the_record_says_commit_template_dtype_and_device(judge_dir, tmp_path, monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setitem(config.PINNED_REVISIONS, "some-org/some-reward-model", sha)
    assert get_profile("cpu", overrides={"eval.judge": "some-org/some-reward-model"}).eval.judge_revision == sha
    # an id not listed: pinned at its first download in the workdir (tests/test_judge_pin.py)
    assert get_profile("cpu", overrides={"eval.judge": "other-org/rm"}).eval.judge_revision == config.FIRST_DOWNLOAD
    assert get_profile("cpu", overrides={"eval.judge": "other-org/rm", "eval.judge_revision": "latest"}
                       ).eval.judge_revision == config.LATEST
    assert get_profile("cpu", overrides={"eval.judge": "heldout"}).eval.judge_revision == "auto"  # loads nothing
    assert evaluate.judge_revision("other-org/rm", config.LATEST)[0] == "unpinned"
    assert evaluate.judge_revision("some-org/some-reward-model", sha) == (sha, "PINNED_REVISIONS")
    assert evaluate.judge_revision("other-org/rm", sha) == (sha, "eval.judge_revision")
    profile = get_profile("cpu", overrides={"eval.judge": str(judge_dir)})
    spec = judge_spec(profile, get_paths(tmp_path), {})
    assert spec | {"why": None, "reads": None} == {
        "kind": "external", "name": str(judge_dir), "path": str(judge_dir), "revision": None,  # a folder: no commit
        "pinned": None,
        "chat_template": True, "dtype": str(reward_compute_dtype("cpu", profile.rm.cpu_dtype)).removeprefix("torch."),
        "device": "cpu", "max_length": 512, "why": None, "reads": None}
    assert "chat template" in spec["why"]
    judge = evaluate.load_judge(spec, cpu_dtype=profile.rm.cpu_dtype)  # as the stages load it: as the record says
    assert str(judge.dtype).removeprefix("torch.") == spec["dtype"] and judge.max_length == spec["max_length"]


@pytest.mark.parametrize("name", ["/no/such/judge", "./models/missing-judge"])
def test_a_bad_judge_path_fails_in_one_line_saying_what_to_set(name, tmp_path):
    with pytest.raises(ModelLoadError) as e:
        judge_spec(get_profile("cpu", overrides={"eval.judge": name}), get_paths(tmp_path), {})
    assert "\n" not in str(e.value) and f"eval.judge={name!r}: no such folder" in str(e.value)
    assert "Set eval.judge to a folder" in str(e.value) and "'heldout'" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"eval.judge=.*cannot load its tokenizer .*Set eval.judge") as e:
        evaluate.load_judge({"kind": "external", "path": str(empty)})
    assert "\n" not in str(e.value)


def test_on_a_card_the_judge_is_recorded_and_loaded_in_bf16(judge_dir, monkeypatch):
    """The card's path without a card: where CUDA has bf16 the judge's record and its load ask for bf16 (a CPU
    without native bf16 keeps float32 under the default rm.cpu_dtype="auto")."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    facts = evaluate.text_judge_facts(str(judge_dir), revision="auto", device="cuda")
    assert facts["dtype"] == "bfloat16" and facts["device"] == "cuda"
    loaded = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: loaded.append(a) or self)  # no card to move to
    judge = evaluate.TextJudge(str(judge_dir), device="cuda")
    assert judge.dtype == torch.bfloat16 and next(judge.model.parameters()).dtype == torch.bfloat16
    assert ("cuda",) in loaded
