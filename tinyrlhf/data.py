"""Data preparation: HH-RLHF (hub or a local copy of Anthropic's files) or the embedded synthetic set, parsed
into prompt / chosen / rejected, validated, de-duplicated, split by prompt and filtered by token length."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .chat import ASSISTANT, HUMAN, completion
from .config import Paths, Profile, hh_dir, resolve_source
from .results import atomic_write_json, atomic_write_jsonl, read_json, reusable, sha256_file

# Reasons a record is malformed; their share is bounded by data.max_skipped_share.
MALFORMED = ("bad_json", "missing_keys", "not_text", "no_assistant_turn", "no_human_turn", "empty_reply",
             "identical", "prompt_mismatch")
# Reasons a well-formed record is dropped on purpose; not bounded.
FILTERED = ("duplicate", "too_long")
SPLIT_FILES = ("train", "test")
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


def load_source(profile: Profile) -> RawSource:
    """Read the profile's data source into raw lines, with checksums of what was read."""
    source = resolve_source(profile)
    if source == "synthetic":
        from .synthetic import synthetic_jsonl

        text = synthetic_jsonl(profile.data.synthetic_pairs, seed=profile.seed)
        lines = [("synthetic", i, line) for i, line in enumerate(text.splitlines(), start=1)]
        return RawSource("synthetic", lines, {"synthetic": hashlib.sha256(text.encode()).hexdigest()}, [])
    if source == "local":
        root = hh_dir()
        if root is None:
            raise DataError("data.source is 'local' but TINYRLHF_HH_DIR is not set; point it at a folder "
                            "laid out like Anthropic's (harmless-base/train.jsonl.gz, ...)")
        if not root.is_dir():
            raise DataError(f"TINYRLHF_HH_DIR={root} is not a folder")
        files, missing = _local_files(root, profile.data.subsets)
        if not files:
            raise DataError(f"TINYRLHF_HH_DIR={root} holds none of the subsets {list(profile.data.subsets)} "
                            f"(expected e.g. {root}/harmless-base/train.jsonl.gz)")
        lines = [ln for p in files for ln in iter_file_lines(p)]  # reads fully: corrupt files fail here
        return RawSource("local", lines, {str(p): sha256_file(p) for p in files}, missing)
    return _load_hub(profile)


def _load_hub(profile: Profile) -> RawSource:
    try:
        import datasets

        lines, sums = [], {}
        for subset in profile.data.subsets:
            dsd = datasets.load_dataset("Anthropic/hh-rlhf", data_dir=subset)
            for split, ds in dsd.items():
                origin = f"hub:Anthropic/hh-rlhf/{subset}/{split}"
                rows = [json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) for r in ds]
                sums[origin] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
                lines += [(origin, i, r) for i, r in enumerate(rows, start=1)]
        return RawSource("hub", lines, sums, [])
    except DataError:
        raise
    except Exception as e:  # network, auth, offline mode: all mean the same to the user
        raise DataError(
            f"could not load Anthropic/hh-rlhf from the hub ({type(e).__name__}: {str(e)[:200]}). "
            "Offline? Set TINYRLHF_HH_DIR to a local copy of Anthropic's files, or use TINYRLHF_PROFILE=cpu "
            "for the embedded synthetic set."
        ) from None


# ------------------------------------------------------------------------------------- dedupe and split
def deduplicate(pairs: list[Pair]) -> tuple[list[Pair], int]:
    seen, out = set(), []
    for p in pairs:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out, len(pairs) - len(out)


def split_by_prompt(pairs: list[Pair], test_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded split that keeps every pair of one prompt on the same side, so test prompts are unseen."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    n_test = max(1, round(len(prompts) * test_fraction)) if len(prompts) > 1 else 0
    test_prompts = set(prompts[:n_test])
    train = [p for p in pairs if p.prompt not in test_prompts]
    test = [p for p in pairs if p.prompt in test_prompts]
    return train, test


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


# ----------------------------------------------------------------------------------------------- stage
def data_files(paths: Paths) -> dict:
    return {"train": paths.data / "train_prefs.jsonl", "test": paths.data / "test_prefs.jsonl",
            "sft": paths.data / "sft_train.jsonl", "stats": paths.results / "data_stats.json"}


def read_pairs(path: Path) -> list[Pair]:
    if not Path(path).exists():
        raise DataError(f"{path} does not exist: run 01_Data_Preparation first")
    return [Pair(**json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_data(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """Parse, validate, de-duplicate, split and length-filter; write the three data files and data_stats.json.

    Reuses the previous output when the data settings and the source are unchanged, unless `force`.
    """
    from .base_model import tokenizer_for_data
    from .results import manifest

    paths.make()
    files = data_files(paths)
    source_name = resolve_source(profile)
    config_hash = profile.section_hash("data", "base") + f":{source_name}:{hh_dir() if source_name == 'local' else ''}"
    from .base_model import base_dir, is_scratch

    outputs = [files["train"], files["test"], files["sft"]]
    if is_scratch(profile):
        outputs.append(base_dir(paths) / "tokenizer.json")  # trained here, so part of this stage's output
    if not force and reusable(files["stats"], config_hash, outputs):
        stats = read_json(files["stats"])
        stats["reused"] = True
        return stats

    raw = load_source(profile)
    report = ParseReport()
    pairs = parse_lines(raw.lines, report)
    if report.rows_read == 0:
        raise DataError(f"no records in {', '.join(raw.sha256)}: the files are empty")
    share = report.malformed / report.rows_read
    if share > profile.data.max_skipped_share:
        first = next(iter(report.examples.values()))[0]["where"]
        raise DataError(
            f"{report.malformed} of {report.rows_read} records ({share:.1%}) are malformed, above "
            f"data.max_skipped_share={profile.data.max_skipped_share}: {dict(report.skipped)}; first at {first}. "
            "Check that the files are Anthropic's HH-RLHF format, or raise data.max_skipped_share."
        )
    pairs, n_dup = deduplicate(pairs)
    report.skipped["duplicate"] += n_dup
    capped_from = None
    if profile.data.max_pairs and len(pairs) > profile.data.max_pairs:
        capped_from = len(pairs)
        pairs = random.Random(profile.seed).sample(pairs, profile.data.max_pairs)
    train, test = split_by_prompt(pairs, profile.data.test_fraction, profile.seed)

    tokenizer = tokenizer_for_data(profile, paths, [p.prompt + " " + p.chosen for p in train]
                                   + [p.prompt + " " + p.rejected for p in train])
    kept = {}
    all_lengths = Lengths([], [], [])
    for name, part in (("train", train), ("test", test)):
        lengths = token_lengths(part, tokenizer)
        keep, drop = length_filter(part, lengths, profile.data.max_prompt_tokens, profile.data.max_response_tokens)
        report.skipped["too_long"] += len(drop)
        for i in drop[:MAX_EXAMPLES_PER_REASON - len(report.examples.get("too_long", []))]:
            report.examples.setdefault("too_long", []).append(
                {"where": name, "detail": f"prompt {lengths.prompt[i]} / replies {lengths.chosen[i]}, "
                                          f"{lengths.rejected[i]} tokens"})
        kept[name] = [part[i] for i in keep]
        for field_name in ("prompt", "chosen", "rejected"):
            getattr(all_lengths, field_name).extend(getattr(lengths, field_name)[i] for i in keep)
    if not kept["train"] or not kept["test"]:
        raise DataError(f"after filtering, train has {len(kept['train'])} and test {len(kept['test'])} pairs; "
                        "raise data.max_prompt_tokens / data.max_response_tokens or supply more data")

    atomic_write_jsonl(files["train"], [asdict(p) for p in kept["train"]])
    atomic_write_jsonl(files["test"], [asdict(p) for p in kept["test"]])
    atomic_write_jsonl(files["sft"], [{"prompt": p.prompt, "completion": completion(p.chosen)} for p in kept["train"]])
    stats = {
        "config_hash": config_hash,
        "source": raw.name,
        "sha256": raw.sha256,
        "missing_subsets": raw.missing,
        "rows_read": report.rows_read,
        "parsed": report.rows_read - report.malformed,
        "kept": len(kept["train"]) + len(kept["test"]),
        "train": len(kept["train"]),
        "test": len(kept["test"]),
        "capped_from": capped_from,
        "skipped": {r: report.skipped.get(r, 0) for r in MALFORMED + FILTERED},
        "skipped_examples": report.examples,
        "token_lengths": {k: percentiles(getattr(all_lengths, k)) for k in ("prompt", "chosen", "rejected")},
        "tokenizer": profile.base.model,
        "manifest": manifest(profile, "data", data_source={"source": raw.name, "sha256": raw.sha256}),
    }
    atomic_write_json(files["stats"], stats)
    stats["reused"] = False
    return stats


def lengths_of_prepared(profile: Profile, paths: Paths) -> dict:
    """Token lengths of the written train and test pairs, for the notebook's histogram."""
    from .base_model import load_tokenizer

    tok = load_tokenizer(profile, paths)
    out = {}
    for name in ("train", "test"):
        out[name] = asdict(token_lengths(read_pairs(data_files(paths)[name]), tok))
    return out
