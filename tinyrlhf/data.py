"""Data preparation: HH-RLHF (hub or a local copy of Anthropic's files) or the embedded synthetic set, parsed
into prompt / chosen / rejected, validated, de-duplicated, split by prompt and filtered by token length."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .chat import ASSISTANT, HUMAN, completion
from .config import LATEST, hub_revision
from .results import atomic_write_jsonl, sha256_file
from .synthetic import category, synthetic_jsonl

# Reasons a record is malformed; their share is bounded by data.max_skipped_share.
MALFORMED = ("bad_json", "missing_keys", "not_text", "no_assistant_turn", "no_human_turn", "empty_reply",
             "identical", "prompt_mismatch")
# Reasons a well-formed record is dropped on purpose; not bounded.
FILTERED = ("duplicate", "too_long")
SPLIT_FILES = ("train", "test")
HUB_ID = "Anthropic/hh-rlhf"
MAX_EXAMPLES_PER_REASON = 3


class DataError(RuntimeError):
    """Input data that cannot be used; the message names the file (and line) and what to do."""


class Malformed(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Pair:
    prompt: str  # the shared dialogue, ending with "\n\nAssistant:"
    chosen: str  # the preferred final reply, stripped
    rejected: str  # the other final reply, stripped
    category: str | None = None  # what is wrong with the rejected reply (synthetic data only; synthetic.category)


def parse_pair(chosen, rejected) -> Pair:
    """Split two Anthropic dialogues that share a prompt into prompt / chosen reply / rejected reply."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Malformed("not_text", "chosen and rejected must be strings")
    ic, ir = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    if ic < 0 or ir < 0:
        raise Malformed("no_assistant_turn", f"no {ASSISTANT.strip()!r} turn")
    prompt_c, prompt_r = chosen[: ic + len(ASSISTANT)], rejected[: ir + len(ASSISTANT)]
    if prompt_c != prompt_r:
        raise Malformed("prompt_mismatch", "chosen and rejected dialogues differ before the last reply")
    if HUMAN not in prompt_c:
        raise Malformed("no_human_turn", f"no {HUMAN.strip()!r} turn before the reply")
    reply_c, reply_r = chosen[ic + len(ASSISTANT):].strip(), rejected[ir + len(ASSISTANT):].strip()
    if not reply_c or not reply_r:
        raise Malformed("empty_reply", "a final reply is empty")
    if reply_c == reply_r:
        raise Malformed("identical", "chosen and rejected replies are the same")
    return Pair(prompt_c, reply_c, reply_r)


def parse_line(line: str) -> Pair:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise Malformed("bad_json", str(e)) from None
    if not isinstance(rec, dict) or "chosen" not in rec or "rejected" not in rec:
        raise Malformed("missing_keys", "a record needs 'chosen' and 'rejected'")
    return parse_pair(rec["chosen"], rec["rejected"])


@dataclass
class ParseReport:
    rows_read: int = 0
    skipped: Counter = None
    examples: dict = None  # reason -> [{"where": "file:line", "detail": ...}]

    def __post_init__(self):
        self.skipped = self.skipped or Counter()
        self.examples = self.examples or {}

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES_PER_REASON:
            ex.append({"where": where, "detail": detail[:200]})

    @property
    def malformed(self) -> int:
        return sum(self.skipped[r] for r in MALFORMED)


def parse_lines(lines: Iterable[tuple[str, int, str]], report: ParseReport) -> list[Pair]:
    """Parse (origin, line number, text) lines, counting and skipping malformed ones."""
    pairs = []
    for origin, lineno, line in lines:
        if not line.strip():
            continue
        report.rows_read += 1
        try:
            pairs.append(parse_line(line))
        except Malformed as m:
            report.skip(m.reason, f"{origin}:{lineno}", m.detail)
    return pairs


def iter_file_lines(path: Path) -> Iterator[tuple[str, int, str]]:
    """Lines of a `.jsonl` or `.jsonl.gz` file; a corrupt file stops with its name and line."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                yield str(path), lineno, line
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt near line {lineno + 1}: {e}. Download the file again.") from None


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class RawSource:
    name: str  # synthetic | local | hub
    lines: list  # (origin, lineno, text)
    sha256: dict  # origin -> checksum of what was read
    missing: list  # subsets/splits asked for but absent


def _local_files(root: Path, subsets) -> tuple[list[Path], list[str]]:
    files, missing = [], []
    for subset in subsets:
        found = False
        for split in SPLIT_FILES:
            for suffix in (".jsonl.gz", ".jsonl"):
                p = root / subset / f"{split}{suffix}"
                if p.exists():
                    files.append(p)
                    found = True
                    break
        if not found:
            missing.append(subset)
    return files, missing


def load_source(source: str, *, subsets, synthetic_pairs: int = 0, off_topic_share: float = 0.75, seed: int = 0,
                hh_dir: Path | None = None, hub_id: str = HUB_ID, revision: str = LATEST) -> RawSource:
    """Read a data source ("synthetic", "local" or "hub") into raw lines, with checksums of what was read."""
    if source == "synthetic":
        text = synthetic_jsonl(synthetic_pairs, seed=seed, off_topic_share=off_topic_share)
        lines = [("synthetic", i, line) for i, line in enumerate(text.splitlines(), start=1)]
        return RawSource("synthetic", lines, {"synthetic": hashlib.sha256(text.encode()).hexdigest()}, [])
    if source == "local":
        if hh_dir is None:
            raise DataError("data.source is 'local' but TINYRLHF_HH_DIR is not set; point it at a folder "
                            "laid out like Anthropic's (harmless-base/train.jsonl.gz, ...)")
        if not hh_dir.is_dir():
            raise DataError(f"TINYRLHF_HH_DIR={hh_dir} is not a folder")
        files, missing = _local_files(hh_dir, subsets)
        if not files:
            raise DataError(f"TINYRLHF_HH_DIR={hh_dir} holds none of the subsets {list(subsets)} "
                            f"(expected e.g. {hh_dir}/harmless-base/train.jsonl.gz)")
        lines = [ln for p in files for ln in iter_file_lines(p)]  # reads fully: corrupt files fail here
        return RawSource("local", lines, {str(p): sha256_file(p) for p in files}, missing)
    return _load_hub(hub_id, subsets, revision)


def _load_hub(hub_id: str, subsets, revision: str = LATEST) -> RawSource:
    """The hub's copy of `hub_id` at commit `revision` (config.LATEST: its newest)."""
    try:
        import datasets

        lines, sums = [], {}
        for subset in subsets:
            dsd = datasets.load_dataset(hub_id, data_dir=subset, revision=hub_revision(revision))
            for split, ds in dsd.items():
                origin = f"hub:{hub_id}/{subset}/{split}"
                rows = [json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) for r in ds]
                sums[origin] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
                lines += [(origin, i, r) for i, r in enumerate(rows, start=1)]
        return RawSource("hub", lines, sums, [])
    except DataError:
        raise
    except Exception as e:  # network, auth, offline mode: all mean the same to the user
        raise DataError(
            f"could not load {hub_id} from the hub ({type(e).__name__}: {str(e)[:200]}). "
            "Offline? Set TINYRLHF_HH_DIR to a local copy of Anthropic's files, or use TINYRLHF_PROFILE=cpu "
            "for the embedded synthetic set."
        ) from None


def parse_source(raw: RawSource, max_skipped_share: float) -> tuple[list[Pair], ParseReport]:
    """Parse every line; stop when malformed records exceed `max_skipped_share` of what was read."""
    report = ParseReport()
    pairs = parse_lines(raw.lines, report)
    if report.rows_read == 0:
        raise DataError(f"no records in {', '.join(raw.sha256)}: the files are empty")
    share = report.malformed / report.rows_read
    if share > max_skipped_share:
        first = next(iter(report.examples.values()))[0]["where"]
        raise DataError(
            f"{report.malformed} of {report.rows_read} records ({share:.1%}) are malformed, above "
            f"data.max_skipped_share={max_skipped_share}: {dict(report.skipped)}; first at {first}. "
            "Check that the files are Anthropic's HH-RLHF format, or raise data.max_skipped_share."
        )
    return pairs, report


# ------------------------------------------------------------------------------------- dedupe and split
def deduplicate(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """The pairs in order with exact repeats removed, and how many were removed."""
    seen, out = set(), []
    for p in pairs:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out, len(pairs) - len(out)


def with_categories(pairs: list[Pair]) -> list[Pair]:
    """The synthetic pairs tagged with what is wrong with their rejected reply (rude, off_topic, harmful)."""
    return [replace(p, category=category(p.prompt, p.rejected)) for p in pairs]


def cap(pairs: list[Pair], max_pairs: int, seed: int) -> tuple[list[Pair], int | None]:
    """A seeded sample of `max_pairs` pairs (0: keep all), and the count it was capped from (None if not)."""
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs, None
    return random.Random(seed).sample(pairs, max_pairs), len(pairs)


def split_by_prompt(pairs: list[Pair], test_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded split that keeps every pair of one prompt on the same side, so test prompts are unseen."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    n_test = max(1, round(len(prompts) * test_fraction)) if len(prompts) > 1 else 0
    test_prompts = set(prompts[:n_test])
    train = [p for p in pairs if p.prompt not in test_prompts]
    test = [p for p in pairs if p.prompt in test_prompts]
    return train, test


def flip_labels(pairs: list[Pair], share: float, seed: int, on: str = "any") -> tuple[list[Pair], list[int]]:
    """A copy of `pairs` with chosen and rejected swapped in round(share x len) of them, drawn with `seed`: the
    label noise of Coste et al. 2023, for a reward model known to be worse (the positive control). `on`
    (rm.label_noise_on, resolved): "any", uniformly; else a category whose pairs are drawn before any other (then
    the rest, at random). Returns the pairs and the sorted indices flipped."""
    rng = random.Random(seed)
    if on == "any":
        flipped = sorted(rng.sample(range(len(pairs)), round(share * len(pairs))))
    else:
        preferred = [i for i, p in enumerate(pairs) if p.category == on]
        rest = [i for i, p in enumerate(pairs) if p.category != on]
        rng.shuffle(preferred)
        rng.shuffle(rest)
        flipped = sorted((preferred + rest)[: round(share * len(pairs))])
    out = list(pairs)
    for i in flipped:
        out[i] = replace(pairs[i], chosen=pairs[i].rejected, rejected=pairs[i].chosen)
    return out, flipped


def percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def q(f):
        return v[min(len(v) - 1, int(round(f * (len(v) - 1))))]

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[-1], "mean": sum(v) / len(v)}


@dataclass
class Lengths:
    prompt: list
    chosen: list
    rejected: list


def token_lengths(pairs: list[Pair], tokenizer) -> Lengths:
    eos = tokenizer.eos_token or ""

    def n(texts):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    return Lengths(n([p.prompt for p in pairs]), n([completion(p.chosen, eos) for p in pairs]),
                   n([completion(p.rejected, eos) for p in pairs]))


def length_filter(pairs: list[Pair], lengths: Lengths, max_prompt: int, max_response: int) -> tuple[list, list]:
    keep = [i for i in range(len(pairs)) if lengths.prompt[i] <= max_prompt
            and lengths.chosen[i] <= max_response and lengths.rejected[i] <= max_response]
    kept = set(keep)
    return keep, [i for i in range(len(pairs)) if i not in kept]


def filter_by_length(parts: dict[str, list[Pair]], tokenizer, max_prompt: int, max_response: int,
                     report: ParseReport) -> tuple[dict[str, list[Pair]], Lengths]:
    """Drop pairs over the token limits from each part (counted in `report`); the kept pairs and their lengths."""
    kept = {}
    all_lengths = Lengths([], [], [])
    for name, part in parts.items():
        lengths = token_lengths(part, tokenizer)
        keep, drop = length_filter(part, lengths, max_prompt, max_response)
        report.skipped["too_long"] += len(drop)
        for i in drop[:MAX_EXAMPLES_PER_REASON - len(report.examples.get("too_long", []))]:
            report.examples.setdefault("too_long", []).append(
                {"where": name, "detail": f"prompt {lengths.prompt[i]} / replies {lengths.chosen[i]}, "
                                          f"{lengths.rejected[i]} tokens"})
        kept[name] = [part[i] for i in keep]
        for field_name in ("prompt", "chosen", "rejected"):
            getattr(all_lengths, field_name).extend(getattr(lengths, field_name)[i] for i in keep)
    return kept, all_lengths


def write_prepared(train: list[Pair], test: list[Pair], *, train_path: Path, test_path: Path, sft_path: Path) -> None:
    """The preference pairs of each split, and the SFT rows (prompt, completion = the chosen reply)."""
    atomic_write_jsonl(train_path, [asdict(p) for p in train])
    atomic_write_jsonl(test_path, [asdict(p) for p in test])
    atomic_write_jsonl(sft_path, [{"prompt": p.prompt, "completion": completion(p.chosen)} for p in train])


def read_pairs(path: Path) -> list[Pair]:
    if not Path(path).exists():
        raise DataError(f"{path} does not exist: run 01_Data_Preparation first")
    return [Pair(**json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
