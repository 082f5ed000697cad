"""Evaluation of policies on held-out prompts, the way PPO sees them.

Replies are sampled as TRL's rollout samples them (left-padded queries, the same generation settings), scored from
their token ids through the one scoring path (reward.score_rollouts: cut after the first EOS, scored at the last
real token, `missing_eos_penalty` for a reply that never ends), and their KL to the reference is measured. The gold
judge scores the decoded text by the generator's rules, with the same missing-EOS convention. Every policy answers
the same prompts with the same sampling seed, so differences between policies are paired. A library: the ppo stage
in stages.py calls it.
"""

from __future__ import annotations

import datetime
import random
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .base_model import ModelLoadError
from .chat import full_text, turns
from .config import FIRST_DOWNLOAD, LATEST, PINNED_REVISIONS, hub_revision
from .kernels import dtype_name
from .logits import contiguous_output_input, response_logprobs
from .results import atomic_write_json, read_json
from .reward import CPURewardModel, grouped_reasons, load_for_scoring, load_reward_model, score_rollouts
from .runtime import reward_compute_dtype
from .stats import add_family_intervals, arm_statistics, fit_frontier, mean_std_ci, projection
from .synthetic import gold_reward

EVAL_SEED_OFFSET = 10_000  # evaluation sampling uses its own seed, the same for every policy


def eval_prompts(test_prompts, n: int, seed: int) -> list[str]:
    """A seeded random sample of `n` distinct test prompts (all of them when there are fewer)."""
    distinct = sorted(set(test_prompts))
    random.Random(seed).shuffle(distinct)
    return distinct[:n]


@dataclass
class Rollouts:
    """`samples` replies to each prompt, grouped by prompt (row i answers prompts[i // samples])."""

    prompts: list[str]
    samples: int
    queries: torch.Tensor  # left-padded prompt ids, one row per reply
    responses: torch.Tensor  # generated ids, cut after the first EOS and right-padded with the pad token
    has_eos: list[bool]
    texts: list[str]
    pad_token_id: int

    @property
    def prompt_of_row(self) -> list[str]:
        return [p for p in self.prompts for _ in range(self.samples)]

    def first(self, k: int) -> Rollouts:
        """The first `k` replies to each prompt."""
        if k >= self.samples:
            return self
        rows = [i for i in range(len(self.texts)) if i % self.samples < k]
        return Rollouts(self.prompts, k, self.queries[rows], self.responses[rows], [self.has_eos[i] for i in rows],
                        [self.texts[i] for i in rows], self.pad_token_id)

    def lengths(self) -> list[int]:
        """Reply lengths in tokens, the EOS included."""
        return [int(n) for n in (self.responses != self.pad_token_id).sum(1)]


def decode_reply(tokenizer, ids: list[int]) -> str:
    """A reply as text without special tokens; a multi-byte character cut by the length limit is dropped, not shown
    as U+FFFD."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text.rstrip("\ufffd").strip()


def queries_of(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Left-padded prompt ids, as TRL's PPO dataloader builds them."""
    from transformers import DataCollatorWithPadding

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        rows = [{"input_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        return DataCollatorWithPadding(tokenizer)(rows)["input_ids"]
    finally:
        tokenizer.padding_side = side


def sample(policy, tokenizer, prompts: list[str], *, samples: int, max_new: int, temperature: float, seed: int,
           chunk: int = 64, report=None) -> Rollouts:
    """`samples` replies per prompt with TRL's rollout settings (temperature + 1e-7, top_k 0, top_p 1), seeded and
    without touching the caller's random state. `report(done, total)` follows the replies generated."""
    from transformers import GenerationConfig
    from trl.experimental.ppo.ppo_trainer import truncate_response

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new, temperature=temperature + 1e-7, top_k=0, top_p=1.0,
                              do_sample=True, pad_token_id=pad, eos_token_id=eos)
    rows = [p for p in prompts for _ in range(samples)]
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
            contiguous_output_input(policy):
        torch.manual_seed(seed + EVAL_SEED_OFFSET)
        for i in range(0, len(rows), chunk):
            q = queries_of(tokenizer, rows[i: i + chunk]).to(device)
            mask = q != pad
            gen = policy.generate(input_ids=torch.masked_fill(q, ~mask, 0), attention_mask=mask,
                                  generation_config=config)
            out.append((q.cpu(), truncate_response(eos, pad, gen[:, q.shape[1]:]).cpu()))
            if report:
                report(min(i + chunk, len(rows)), len(rows))
    policy.train(was_training)
    queries = _stack([q for q, _ in out], pad, left=True)
    responses = _stack([r for _, r in out], pad, left=False)
    has_eos = [bool(x) for x in (responses == eos).any(1)]
    texts = [decode_reply(tokenizer, [t for t in row if t != pad]) for row in responses.tolist()]
    return Rollouts(prompts, samples, queries, responses, has_eos, texts, pad)


def _stack(parts: list[torch.Tensor], pad: int, *, left: bool) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    padded = [torch.nn.functional.pad(p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]), value=pad)
              for p in parts]
    return torch.cat(padded, 0)


def kl_per_reply(policy, rollouts: Rollouts, *, temperature: float, chunk: int = 64) -> list[float]:
    """Sum over each reply's tokens (its EOS included) of log pi - log pi_ref, with TRL's forward conventions and
    logits scaled by the temperature as TRL scales them (logits.response_logprobs: logits only at the reply's
    positions, in float32); the reference is the policy with its LoRA adapter disabled. `chunk` replies at a time.
    Averaged over replies sampled from pi, it estimates KL(pi || ref)."""
    device = next(policy.parameters()).device
    pad = rollouts.pad_token_id
    ctx = rollouts.queries.shape[1]
    out = []
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        for i in range(0, len(rollouts.texts), chunk):
            qr = torch.cat((rollouts.queries[i: i + chunk], rollouts.responses[i: i + chunk]), 1).to(device)
            mask = qr[:, ctx:] != pad
            logp = response_logprobs(policy, qr, pad, ctx, temperature=temperature + 1e-7)
            with policy.disable_adapter():
                ref = response_logprobs(policy, qr, pad, ctx, temperature=temperature + 1e-7)
            out += ((logp - ref) * mask).sum(1).float().cpu().tolist()
    policy.train(was_training)
    return out


def proxy_scores(reward_model, rollouts: Rollouts, *, eos_token_id: int, missing_eos_penalty: float,
                 chunk: int = 64, report=None) -> list[float]:
    """Every reply scored by a reward model (a reward.CPURewardModel) through the one scoring path; a reply repeated
    token for token under the same prompt is scored once (a score depends on the token ids only: best-of-n's pool
    of 64 replies per prompt holds about 2.8 copies of each on the cpu profile). `report(done, total)` follows the
    distinct replies scored."""
    rows, of_row = distinct_rows(rollouts)
    scores: list[float] = []
    for i in range(0, len(rows), chunk):
        some = rows[i: i + chunk]
        scores += score_rollouts(reward_model, rollouts.queries[some], rollouts.responses[some],
                                 pad_token_id=rollouts.pad_token_id, eos_token_id=eos_token_id,
                                 missing_eos_penalty=missing_eos_penalty).cpu().tolist()
        if report:
            report(len(scores), len(rows))
    return [scores[j] for j in of_row]


def distinct_rows(rollouts: Rollouts) -> tuple[list[int], list[int]]:
    """The first row of each distinct (prompt ids, reply ids), and for every row the position of its own in that
    list."""
    first: dict[bytes, int] = {}
    rows, of_row = [], []
    for i, (q, r) in enumerate(zip(rollouts.queries, rollouts.responses)):
        key = q.numpy().tobytes() + b"|" + r.numpy().tobytes()
        if key not in first:
            first[key] = len(rows)
            rows.append(i)
        of_row.append(first[key])
    return rows, of_row


def gold_scores(rollouts: Rollouts, *, missing_eos_penalty: float) -> list[float]:
    """Every reply under the gold reward, lowered by `missing_eos_penalty` when it never ended (the same
    convention as the reward models')."""
    return [gold_reward(p, t) - (0.0 if e else missing_eos_penalty)
            for p, t, e in zip(rollouts.prompt_of_row, rollouts.texts, rollouts.has_eos)]


def per_prompt(values: list[float], samples: int) -> list[float]:
    """Means over each prompt's `samples` replies."""
    return [sum(values[i: i + samples]) / samples for i in range(0, len(values), samples)]


def summary(rollouts: Rollouts, *, judge: list[float], proxy: list[float] | None = None,
            kl: list[float] | None = None, show: int = 0) -> dict:
    """What one evaluation records: means, per-prompt means (for the bootstrap), EOS share, lengths, samples."""
    k = rollouts.samples
    mean = lambda v: sum(v) / len(v)
    rec = {"judge_mean": mean(judge), "judge_per_prompt": per_prompt(judge, k),
           "eos_share": mean([float(e) for e in rollouts.has_eos]), "length_mean": mean(rollouts.lengths())}
    if proxy is not None:
        rec |= {"proxy_mean": mean(proxy), "proxy_per_prompt": per_prompt(proxy, k)}
    if kl is not None:
        rec |= {"kl_mean": mean(kl), "kl_per_prompt": per_prompt(kl, k)}
    if show:
        rows = range(0, len(rollouts.texts), k)  # the first reply to each prompt
        rec["samples"] = [{"prompt": rollouts.prompt_of_row[i], "response": rollouts.texts[i],
                           "judged_reward": judge[i], "ended": rollouts.has_eos[i]} for i in list(rows)[:show]]
    return rec


# ------------------------------------------------------------------------------------------------------ judges
class GoldJudge:
    """The synthetic generator's rules (synthetic.GOLD_RULE)."""

    def scores(self, rollouts: Rollouts, *, eos_token_id: int, missing_eos_penalty: float) -> list[float]:
        return gold_scores(rollouts, missing_eos_penalty=missing_eos_penalty)


class RewardModelJudge:
    """A reward model trained here (the heldout judge): scored from the token ids, like every proxy."""

    def __init__(self, path, *, trust_remote_code: bool = False, cpu_dtype: str = "auto", device: str = "cpu"):
        if device == "cpu":
            model, _ = load_reward_model(path, trust_remote_code=trust_remote_code, device="cpu", cpu_dtype=cpu_dtype)
        else:  # an idle card: its dense copy in the card's dtype, as every reward model scores there
            model, _ = load_for_scoring(path, device=device, trust_remote_code=trust_remote_code, cpu_dtype=cpu_dtype)
        self.model = CPURewardModel(model, device)

    def scores(self, rollouts: Rollouts, *, eos_token_id: int, missing_eos_penalty: float) -> list[float]:
        return proxy_scores(self.model, rollouts, eos_token_id=eos_token_id, missing_eos_penalty=missing_eos_penalty)


class TextJudge:
    """A public sequence-classification reward model with its own tokenizer: it reads the decoded dialogue through
    that tokenizer's chat template (the prompt's turns, then the reply, as the model's authors score it), or as plain
    text when the tokenizer has none. Weights in reward_compute_dtype(device, cpu_dtype) (bf16 on a card, the host's
    dtype on the CPU); texts right-padded, `batch` at a time; one longer than `max_length` tokens (default: what the
    tokenizer and the model's positions allow) keeps its end, where the score is read, and is counted."""

    def __init__(self, name: str, *, revision: str | None = None, trust_remote_code: bool = False,
                 cpu_dtype: str = "auto", device: str = "cpu", max_length: int | None = None, batch: int = 16):
        from transformers import AutoModelForSequenceClassification

        self.tokenizer = _judge_part(name, "tokenizer", revision, trust_remote_code)
        self.dtype, self.device, self.batch = reward_compute_dtype(device, cpu_dtype), device, batch
        self.model = _judge_part(name, "model", revision, trust_remote_code, dtype=self.dtype,
                                 loader=AutoModelForSequenceClassification).to(device).eval()
        self.chat_template = bool(self.tokenizer.chat_template)
        self.max_length = judge_max_length(self.tokenizer, self.model.config, max_length)
        self.pad_id = _judge_pad_id(self.tokenizer, self.model.config, name)
        # sequence classification reads each row at its last token that is not config.pad_token_id
        self.model.config.pad_token_id = self.pad_id
        bos = self.tokenizer.bos_token_id
        self._adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]
        self.truncated = self.scored = self.last_truncated = self.last_scored = 0

    def text(self, prompt: str, reply: str) -> str:
        """What the judge reads: the dialogue through its chat template, or the plain text without one."""
        if not self.chat_template:
            return full_text(prompt, reply)
        return self.tokenizer.apply_chat_template(chat_messages(prompt, reply), tokenize=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of a judged text with one BOS: as the Skywork-Reward-V2 cards do, a template's leading BOS is
        dropped before a tokenizer that adds its own tokenizes the text."""
        bos = self.tokenizer.bos_token
        if self.chat_template and self._adds_bos and text.startswith(bos):
            text = text[len(bos):]
        return self.tokenizer(text)["input_ids"]

    def score_texts(self, texts: list[str]) -> list[float]:
        """The model's score of each text (its first logit), in texts' order."""
        ids = [self.encode(t) for t in texts]
        fitted = [keep_end(i, self.max_length, self.tokenizer.bos_token_id) for i in ids]
        self.last_truncated, self.last_scored = sum(len(a) != len(b) for a, b in zip(ids, fitted)), len(ids)
        self.truncated, self.scored = self.truncated + self.last_truncated, self.scored + self.last_scored
        order = sorted(range(len(fitted)), key=lambda i: len(fitted[i]))  # like lengths share a batch: less padding
        out = [0.0] * len(fitted)
        with torch.no_grad():
            for i in range(0, len(order), self.batch):
                some = order[i: i + self.batch]
                input_ids, mask = right_padded([fitted[j] for j in some], self.pad_id)
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for j, score in zip(some, logits[:, 0].float().cpu().tolist()):
                    out[j] = score
        return out

    def scores(self, rollouts: Rollouts, *, eos_token_id: int, missing_eos_penalty: float) -> list[float]:
        """Every reply judged, a (prompt, reply) repeated in the pool scored once, lowered by `missing_eos_penalty`
        when it never ended."""
        rows = list(zip(rollouts.prompt_of_row, rollouts.texts))
        distinct = list(dict.fromkeys(rows))
        judged = dict(zip(distinct, self.score_texts([self.text(p, t) for p, t in distinct])))
        return [judged[r] - (0.0 if e else missing_eos_penalty) for r, e in zip(rows, rollouts.has_eos)]


ROLES = {"Human": "user", "Assistant": "assistant"}


def chat_messages(prompt: str, reply: str) -> list[dict]:
    """An HH-RLHF prompt's turns, then the reply, as chat messages; the prompt's open last turn is the reply's, and
    consecutive turns of one speaker are joined (chat templates expect the roles to alternate)."""
    said = turns(prompt)
    if said and said[-1] == ("Assistant", ""):
        said = said[:-1]
    out: list[dict] = []
    for who, text in [*said, ("Assistant", reply.strip())]:
        if out and out[-1]["role"] == ROLES[who]:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": ROLES[who], "content": text})
    return out


def keep_end(ids: list[int], max_length: int | None, bos_id: int | None) -> list[int]:
    """`ids` cut to `max_length` from the left, a leading BOS kept: the reply and the last token, where a sequence
    classifier reads its score, survive."""
    if max_length is None or len(ids) <= max_length:
        return ids
    head = ids[:1] if bos_id is not None and ids[:1] == [bos_id] else []
    return head + ids[len(ids) - (max_length - len(head)):]


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids padded on the right with `pad_id`, and the attention mask: the real tokens keep the positions they
    have alone, so padding changes no score."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def judge_max_length(tokenizer, config, given: int | None = None) -> int | None:
    """The longest text a judge reads: the smallest of `given`, the tokenizer's model_max_length and the model's
    positions (None when none is set; transformers says "no limit" with a huge model_max_length)."""
    limits = [n for n in (given, getattr(tokenizer, "model_max_length", None),
                          getattr(config, "max_position_embeddings", None)) if n and n < 10**9]
    return min(limits, default=None)


def _judge_pad_id(tokenizer, config, name: str) -> int:
    """The model's own pad id, else the tokenizer's, else its EOS (Llama and Qwen3 tokenizers may have no pad). With
    pad == EOS, a text ending in EOS is read at the token before it, batched or alone alike, as the model reads it."""
    for pad in (config.pad_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return pad
    raise ModelLoadError(f"eval.judge={name!r}: neither its model nor its tokenizer names a pad or EOS token; set "
                         "eval.judge to a reward model whose tokenizer has one")


def _judge_part(name: str, part: str, revision: str | None, trust_remote_code: bool, dtype=None, loader=None):
    """The tokenizer, config or model of a judge named by path or hub id; a name that loads none fails in one line
    saying what to set."""
    from transformers import AutoConfig, AutoTokenizer

    looks_local = _looks_local(name)
    if looks_local and not Path(name).expanduser().exists():
        raise ModelLoadError(f"eval.judge={name!r}: no such folder. {JUDGE_ADVICE}")
    loader = loader or {"tokenizer": AutoTokenizer, "config": AutoConfig}[part]
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        return loader.from_pretrained(str(Path(name).expanduser()) if looks_local else name, revision=revision,
                                      trust_remote_code=trust_remote_code, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to load is the same advice
        reason = " ".join(str(e).split())[:200]
        raise ModelLoadError(f"eval.judge={name!r}: cannot load its {part} ({type(e).__name__}: {reason}). "
                             f"{JUDGE_ADVICE}") from None


def _looks_local(name: str) -> bool:
    """Whether a judge's name is a folder's path rather than a hub id (ORG/NAME)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or Path(name).expanduser().exists()


JUDGE_ADVICE = ("Set eval.judge to a folder holding a sequence-classification reward model and its tokenizer, to "
                "its hub id (offline: download it to a folder first), or to 'heldout'.")


def judge_revision(name: str, revision: str, pins: Path | None = None) -> tuple[str | None, str | None]:
    """What a public judge's record says of its commit, and how it was pinned: (None, None) for a local folder
    (nothing to pin); "unpinned" for LATEST (the newest commit at every load); for FIRST_DOWNLOAD the commit the pin
    file `pins` holds, or the one this first load gets, recorded there; else the commit eval.judge_revision or
    PINNED_REVISIONS names."""
    if _looks_local(name):
        return None, None
    if revision == LATEST:
        return "unpinned", "eval.judge_revision='latest': the hub's newest commit, at every load"
    if revision == FIRST_DOWNLOAD:
        if pins is None:
            raise ValueError(f"eval.judge={name!r} is pinned at its first download, which needs a pin file")
        sha, at = judge_pin(name, pins)
        return sha, f"pinned at first download, {pins.parent.name}/{pins.name} ({at})"
    return revision, ("PINNED_REVISIONS" if PINNED_REVISIONS.get(name) == revision else "eval.judge_revision")


def judge_pin(name: str, pins: Path) -> tuple[str, str]:
    """(commit, date pinned) of hub id `name` in the pin file `pins` ({hub id: {"revision", "pinned_at"}}); at its
    first load in the workdir, the commit the hub (or, offline, the cache) serves now, written there atomically so
    that every later load in the workdir loads the same one."""
    known = read_json(pins) if pins.exists() else {}
    if name not in known:
        known[name] = {"revision": hub_commit(name), "pinned_at": datetime.date.today().isoformat()}
        atomic_write_json(pins, known)
    return known[name]["revision"], known[name]["pinned_at"]


def hub_commit(name: str) -> str:
    """The commit hub id `name`'s default branch resolves to: the hub's cache keeps each commit's files in
    snapshots/<commit>/, so the folder its config is fetched to (or, offline, found in) names it."""
    from transformers.utils import cached_file

    try:
        config = Path(cached_file(name, "config.json"))
    except Exception as e:  # noqa: BLE001 - any failure to fetch is the same advice
        reason = " ".join(str(e).split())[:200]
        raise ModelLoadError(f"eval.judge={name!r}: cannot fetch its config to pin its commit ({type(e).__name__}: "
                             f"{reason}). {JUDGE_ADVICE}") from None
    if config.parent.parent.name != "snapshots" or not re.fullmatch(r"[0-9a-f]{40}", config.parent.name):
        raise ModelLoadError(f"eval.judge={name!r}: its config came from {config.parent}, not a hub cache's "
                             "snapshots/<commit>/ folder, so its commit is unknown: set eval.judge_revision to it")
    return config.parent.name


def text_judge_facts(name: str, *, revision: str, device: str, cpu_dtype: str = "auto",
                     trust_remote_code: bool = False, max_length: int | None = None, pins: Path | None = None) -> dict:
    """What the record of a public judge says before it scores: its commit and how it was pinned (`pins`: the
    workdir's pin file, for FIRST_DOWNLOAD), whether it reads its chat template, the dtype and device it scores in,
    the longest text it reads. Loads its tokenizer and config only (at that commit), so a bad name fails here,
    before any stage trains."""
    pinned, how = judge_revision(name, revision, pins)
    rev = None if pinned in (None, "unpinned") else pinned
    tokenizer = _judge_part(name, "tokenizer", rev, trust_remote_code)
    config = _judge_part(name, "config", rev, trust_remote_code)
    template = bool(tokenizer.chat_template)
    return {"revision": pinned, "pinned": how, "chat_template": template,
            "reads": "its tokenizer's chat template: the prompt's Human and Assistant turns as user and assistant "
                     "messages, then the reply" if template else
                     "plain text, prompt + ' ' + reply: its tokenizer has no chat template",
            "dtype": dtype_name(reward_compute_dtype(device, cpu_dtype)), "device": device,
            "max_length": judge_max_length(tokenizer, config, max_length)}


def judge_counts(judge) -> dict:
    """How many distinct candidates a public judge scored and had to cut to its max_length (none for the others)."""
    return {"truncated": judge.truncated, "scored": judge.scored} if isinstance(judge, TextJudge) else {}


def judge_once(spec: dict, rollouts: Rollouts, *, eos_token_id: int, missing_eos_penalty: float, pairs=(),
               **load) -> tuple[list[float], dict, tuple | None]:
    """Every reply scored by the judge `spec` names, loaded for this once (`load`: load_judge's settings) and gone
    when it returns; with judge_counts' facts of a public judge, for its record, and, given preference `pairs`
    (a text judge's: gold or public), its scores of their chosen and rejected replies (judge_pair_scores)."""
    judge = load_judge(spec, **load)
    scores = judge.scores(rollouts, eos_token_id=eos_token_id, missing_eos_penalty=missing_eos_penalty)
    return scores, judge_counts(judge), judge_pair_scores(judge, pairs) if pairs else None


def judge_pair_scores(judge, pairs: list) -> tuple[list[float], list[float]]:
    """A text judge's (gold, public) scores of each pair's chosen and rejected replies, as written."""
    texts = SimpleNamespace(prompt_of_row=[p.prompt for p in pairs for _ in (0, 1)],
                            texts=[t for p in pairs for t in (p.chosen, p.rejected)], has_eos=[True] * (2 * len(pairs)))
    scores = judge.scores(texts, eos_token_id=-1, missing_eos_penalty=0.0)
    return scores[0::2], scores[1::2]


def load_judge(spec: dict, *, trust_remote_code: bool = False, cpu_dtype: str = "auto", device: str = "cpu"):
    """The judge a ppo stage result names: {"kind": "gold" | "reward_model" | "external", "path": ...}; a reward
    model judge scores on `device` (an idle card: best-of-n's pool) and on the CPU computes in what `cpu_dtype`
    (rm.cpu_dtype) says; an external one loads at the spec's revision."""
    if spec["kind"] == "gold":
        return GoldJudge()
    if spec["kind"] == "reward_model":
        return RewardModelJudge(spec["path"], trust_remote_code=trust_remote_code, cpu_dtype=cpu_dtype, device=device)
    revision = spec.get("revision")
    return TextJudge(spec["path"], revision=None if revision in (None, "unpinned") else hub_revision(revision),
                     trust_remote_code=trust_remote_code, cpu_dtype=cpu_dtype, device=device,
                     max_length=spec.get("max_length"))


def evaluate_policy(policy, tokenizer, prompts: list[str], *, samples: int, judge, proxy=None, with_kl: bool,
                    max_new: int, temperature: float, seed: int, missing_eos_penalty: float, show: int = 0,
                    kl_chunk: int = 64):
    """Sample, then score under the judge (and the proxy reward model, when given) and measure KL (`kl_chunk`
    replies per forward: the profile's rollout chunk, as PPO's own forwards). Returns (summary, rollouts, per-reply
    judge scores)."""
    rollouts = sample(policy, tokenizer, prompts, samples=samples, max_new=max_new, temperature=temperature,
                      seed=seed)
    eos = tokenizer.eos_token_id
    judged = judge.scores(rollouts, eos_token_id=eos, missing_eos_penalty=missing_eos_penalty)
    proxied = None if proxy is None else proxy_scores(proxy, rollouts, eos_token_id=eos,
                                                      missing_eos_penalty=missing_eos_penalty)
    kl = kl_per_reply(policy, rollouts, temperature=temperature, chunk=kl_chunk) if with_kl else None
    rec = summary(rollouts, judge=judged, proxy=proxied, kl=kl, show=show)
    if isinstance(judge, TextJudge):  # a public judge cuts texts longer than it reads: how many, in this evaluation
        rec |= {"judge_truncated": judge.last_truncated, "judge_scored": judge.last_scored}
    return rec, rollouts, judged


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of paired replies where `a` scores higher (ties count half)."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def checkpoint_steps(steps: int, checkpoints: int) -> list[int]:
    """`checkpoints` updates evenly spaced along `steps`, the last at the end."""
    return sorted({max(1, round(steps * (i + 1) / checkpoints)) for i in range(checkpoints)})


# ------------------------------------------------------------------------------------------------ aggregates
def _avg(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def aggregate_arm(arm: str, runs: list[dict], stats: dict, sft: dict, precision: str, *, resamples: int,
                  seed: int) -> dict:
    """One arm over its runs (every reward-model seed, every PPO seed): status, means, the statistics (`stats`)
    and the frontier."""
    ok = [r for r in runs if r["status"] == "ok"]
    judged, spread, _ = mean_std_ci([r["judge_mean"] for r in ok])
    rec = {"precision": precision, "status": "ok" if ok and len(ok) == len(runs) else "partial" if ok else "failed",
           "reason": None if len(ok) == len(runs) else grouped_reasons(
               [(f"RM seed {r.get('rm_seed')}, PPO seed {r['seed']}", r["reason"]) for r in runs
                if r["status"] != "ok"]),
           "judge_mean": judged, "judge_std_over_seeds": spread,
           **{k: _avg(ok, k) for k in ("proxy_mean", "kl_mean", "eos_share", "length_mean", "win_rate_vs_sft")},
           "train_seconds_mean": _avg(ok, "train_seconds"),
           "peak_memory_bytes_max": max((r["peak_memory_bytes"] for r in ok), default=None),
           **stats, "seeds": runs}
    rec["frontier"] = frontier(arm, ok, sft, resamples=resamples, seed=seed) if ok else None
    return rec


def frontier(arm: str, runs: list[dict], sft: dict, *, resamples: int, seed: int) -> dict:
    """Judge and proxy gain over SFT against d = sqrt(KL) at every checkpoint of every run (SFT at d = 0), and
    R(d) = d (alpha - beta log d) fitted to the judge's points. A run's proxy gain is measured under its own reward
    model (the SFT policy scored by that model)."""
    points = [{"seed": None, "step": 0, "d": 0.0, "kl": 0.0, "gold_gain": 0.0, "proxy_gain": 0.0}]
    for run in runs:
        sft_proxy = sft["cross"].get(f"{arm}/seed{run['rm_seed']}")
        for ck in run["checkpoints"]:
            kl = max(ck["kl_mean"], 0.0)
            points.append({"seed": run["seed"], "rm_seed": run["rm_seed"], "step": ck["step"], "kl": ck["kl_mean"],
                           "d": kl ** 0.5, "gold_gain": ck["judge_mean"] - sft["judge_mean"],
                           "proxy_gain": None if sft_proxy is None else ck["proxy_mean"] - sft_proxy})
    fit = fit_frontier([p | {"run": p["seed"]} for p in points if p["seed"] is not None], resamples=resamples,
                       seed=seed)
    return {"points": points, "fit": fit}


def cross_matrix(sft: dict, runs: dict, arms, rm_seeds) -> dict:
    """Mean reward of every policy (SFT, then each arm's runs) under the judge and under every arm's reward models:
    a policy trained against seed s is scored by each arm's model of seed s, averaged over seeds (the SFT policy by
    every seed's)."""
    judges = ["judge", *arms]

    def under(arm, rows):
        values = [v for r in rows for v in [r["cross"].get(f"{arm}/seed{r['rm_seed']}")] if v is not None]
        return sum(values) / len(values) if values else None

    sft_rows = [{"cross": sft["cross"], "rm_seed": s} for s in rm_seeds]
    rows = [[sft["judge_mean"], *(under(a, sft_rows) for a in arms)]]
    for arm in arms:
        ok = [r for r in runs[arm] if r["status"] == "ok"]
        rows.append([_avg(ok, "judge_mean"), *(under(a, ok) for a in arms)] if ok else [None] * len(judges))
    return {"policies": ["sft", *arms], "judges": judges, "mean_reward": rows}


def seed_cells(runs: list[dict], rm_seeds, n_prompts: int) -> np.ndarray:
    """(reward-model seeds x prompts) of the judge's per-prompt means, the PPO runs of one reward model averaged
    (PPO seeds nested within reward-model seeds); NaN for a seed any of whose runs failed (a seed averaged over
    fewer runs in one arm would no longer be paired with the others' on PPO seeds)."""
    cells = np.full((len(rm_seeds), n_prompts), np.nan)
    for i, s in enumerate(rm_seeds):
        mine = [r for r in runs if r.get("rm_seed") == s]
        if mine and all(r["status"] == "ok" for r in mine):
            cells[i] = np.mean(np.array([r["judge_per_prompt"] for r in mine], dtype=float), axis=0)
    return cells


def experiment_result(judge: dict, sft: dict, runs: dict, *, precisions: dict, rm_seeds, null: str | None,
                      noisy: str | None, bootstrap: int, seed: int, eval_info: dict) -> dict:
    """The ppo stage's result from the SFT evaluation and every run's record: win rates, every arm's statistics
    (gains, taxes, the controls; intervals over reward-model seeds and prompts, stats.arm_statistics), the
    frontier, the projection and the cross matrix. `runs` maps arm -> run records (each with its rm_seed);
    `precisions` maps arm -> its reward models' precision."""
    sft_judged = sft.pop("judge_scores", None)
    for rec in (r for rs in runs.values() for r in rs if r["status"] == "ok"):
        judged = rec.pop("judge_scores", None)
        if judged is not None and sft_judged is not None:
            rec["win_rate_vs_sft"] = win_rate(judged, sft_judged)
    n_prompts = len(sft["judge_per_prompt"])
    cells = {arm: seed_cells(runs[arm], rm_seeds, n_prompts) for arm in runs}
    sft_cells = np.array(sft["judge_per_prompt"], dtype=float)
    stats = arm_statistics(cells, sft_cells, reference="bf16", null=null)
    add_family_intervals(stats, [a for a in stats if a not in ("bf16", null, noisy)], "PPO's precision arms")
    arms = {}
    for arm in runs:
        arms[arm] = aggregate_arm(arm, runs[arm], stats.get(arm, {}), sft, precisions[arm], resamples=bootstrap,
                                  seed=seed)
        if arm != "bf16":
            arms[arm]["projection"] = projection(cells, sft_cells, reference="bf16", arm=arm, seed=seed)
    if judge.get("kind") == "external":  # every evaluation's cut texts: the SFT policy's, each run's checkpoints'
        ok = [r for rs in runs.values() for r in rs if r["status"] == "ok"]
        evaluations = [sft, *(c for r in ok for c in r.get("checkpoints", []))]
        judge = judge | {k: sum(e.get(f"judge_{k}", 0) for e in evaluations) for k in ("truncated", "scored")}
    return {"judge": judge, "null_arm": null, "noisy_arm": noisy, "rm_seeds": list(rm_seeds),
            "eval": eval_info | {"interval": "95%, crossed jackknife variances, each scaled by Student's t at its own df, "
                                             "over reward-model seeds and prompts, paired across arms"},
            "sft": sft, "arms": arms, "cross_matrix": cross_matrix(sft, runs, list(runs), rm_seeds)}
