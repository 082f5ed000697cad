import gzip
import json

import pytest
from conftest import HH_DIR, requires_hh

from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.data import (
    flip_labels,
    DataError,
    Malformed,
    Pair,
    deduplicate,
    parse_line,
    parse_pair,
    read_pairs,
    split_by_prompt,
)
from tinyrlhf.results import read_json
from tinyrlhf.stages import run_data

H, A = "\n\nHuman:", "\n\nAssistant:"


def test_multi_turn_prompt_is_the_shared_dialogue_up_to_the_last_assistant_turn():
    prompt = f"{H} Hi{A} Hello!{H} How do I bake bread?{A}"
    pair = parse_pair(prompt + " Mix flour and water.", prompt + " No.")
    assert pair == Pair(prompt, "Mix flour and water.", "No.")


@pytest.mark.parametrize("line, reason", [
    ("{not json", "bad_json"),
    (json.dumps({"chosen": f"{H} a{A} b"}), "missing_keys"),
    (json.dumps(["chosen", "rejected"]), "missing_keys"),
    (json.dumps({"chosen": 3, "rejected": f"{H} a{A} b"}), "not_text"),
    (json.dumps({"chosen": f"{H} a b", "rejected": f"{H} a{A} b"}), "no_assistant_turn"),
    (json.dumps({"chosen": f"{A} b", "rejected": f"{A} c"}), "no_human_turn"),
    (json.dumps({"chosen": f"{H} a{A}  ", "rejected": f"{H} a{A} c"}), "empty_reply"),
    (json.dumps({"chosen": f"{H} a{A} same", "rejected": f"{H} a{A} same "}), "identical"),
    (json.dumps({"chosen": f"{H} a{A} b", "rejected": f"{H} x{A} c"}), "prompt_mismatch"),
])
def test_malformed_records_are_named_by_reason(line, reason):
    with pytest.raises(Malformed) as e:
        parse_line(line)
    assert e.value.reason == reason


def test_dedupe_and_split_are_deterministic_and_keep_prompts_on_one_side():
    pairs = [Pair(f"{H} q{i % 30}{A}", f"good {i}", f"bad {i}") for i in range(300)]
    uniq, dropped = deduplicate(pairs + pairs[:5])
    assert dropped == 5 and uniq == pairs
    train, test = split_by_prompt(uniq, 0.2, seed=1)
    assert (train, test) == split_by_prompt(uniq, 0.2, seed=1)
    assert split_by_prompt(uniq, 0.2, seed=2) != (train, test)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len({p.prompt for p in test}) == 6 and len(train) + len(test) == 300


def _write_hh(root, lines, subset="harmless-base", name="train.jsonl.gz"):
    d = root / subset
    d.mkdir(parents=True, exist_ok=True)
    with gzip.open(d / name, "wt") as f:
        f.write("".join(line + "\n" for line in lines))
    return d / name


def _good(i):
    return json.dumps({"chosen": f"{H} question {i}?{A} a helpful answer {i}",
                       "rejected": f"{H} question {i}?{A} go away {i}"})


def test_local_source_counts_skips_and_writes_files(tmp_path, monkeypatch):
    lines = [_good(i) for i in range(60)] + ["{broken", _good(0)]
    _write_hh(tmp_path / "hh", lines)
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path / "hh"))
    profile = get_profile("cpu", data__max_skipped_share=0.1, base__vocab_size=300)
    paths = get_paths(tmp_path / "wd")
    stats = run_data(profile, paths, progress=False)
    assert stats["source"] == "local" and stats["rows_read"] == 62
    assert stats["skipped"]["bad_json"] == 1 and stats["skipped"]["duplicate"] == 1
    assert stats["train"] + stats["test"] == stats["kept"] == 60
    assert stats["skipped_examples"]["bad_json"][0]["where"].endswith("train.jsonl.gz:61")
    assert len(read_pairs(paths.data / "train_prefs.jsonl")) == stats["train"]
    sft_rows = [json.loads(x) for x in (paths.data / "sft_train.jsonl").read_text().splitlines()]
    assert set(sft_rows[0]) == {"prompt", "completion"} and sft_rows[0]["completion"].startswith(" ")
    assert read_json(paths.results / "data_stats.json")["sha256"]
    # A rerun with the same config reuses the output; force redoes it.
    assert run_data(profile, paths, progress=False)["reused"] is True
    assert run_data(profile, paths, force=True, progress=False)["reused"] is False


def test_too_many_malformed_records_stop_with_file_and_line(tmp_path, monkeypatch):
    _write_hh(tmp_path / "hh", [_good(i) for i in range(10)] + ["{broken"] * 3)
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path / "hh"))
    with pytest.raises(DataError, match=r"3 of 13 records .*train\.jsonl\.gz:11"):
        run_data(get_profile("cpu"), get_paths(tmp_path / "wd"), progress=False)


def test_corrupt_or_missing_files_are_clear_errors(tmp_path, monkeypatch):
    d = tmp_path / "hh" / "harmless-base"
    d.mkdir(parents=True)
    (d / "train.jsonl.gz").write_bytes(gzip.compress(b"".join(_good(i).encode() + b"\n" for i in range(50)))[:200])
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path / "hh"))
    with pytest.raises(DataError, match=r"train\.jsonl\.gz is corrupt near line"):
        run_data(get_profile("cpu"), get_paths(tmp_path / "wd"), progress=False)
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="is not a folder"):
        run_data(get_profile("cpu"), get_paths(tmp_path / "wd"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds none of the subsets"):
        run_data(get_profile("cpu"), get_paths(tmp_path / "wd"), progress=False)


def test_hub_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    profile = get_profile("cpu", data__source="hub")
    with pytest.raises(DataError, match="TINYRLHF_HH_DIR.*TINYRLHF_PROFILE=cpu"):
        run_data(profile, get_paths(tmp_path / "wd"), progress=False)


def test_synthetic_set_is_reproducible_and_balanced(tmp_path):
    profile = get_profile("cpu")
    a = run_data(profile, get_paths(tmp_path / "a"), progress=False)
    b = run_data(profile, get_paths(tmp_path / "b"), progress=False)
    assert a["sha256"] == b["sha256"] and (a["train"], a["test"]) == (b["train"], b["test"])
    assert (tmp_path / "a/data/train_prefs.jsonl").read_bytes() == (tmp_path / "b/data/train_prefs.jsonl").read_bytes()
    assert a["test"] >= 50 and sum(a["skipped"][r] for r in ("bad_json", "empty_reply", "identical")) == 0
    # Every synthetic pair says what is wrong with its rejected reply, for the reward models' per-category accuracy.
    counts = {}
    for pair in read_pairs(tmp_path / "a/data/test_prefs.jsonl"):
        counts[pair.category] = counts.get(pair.category, 0) + 1
    assert set(counts) == {"rude", "off_topic", "harmful"} and min(counts.values()) >= 5


@requires_hh
def test_real_hh_sample_parses_with_exact_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(HH_DIR))
    stats = run_data(get_profile("cpu"), get_paths(tmp_path), progress=False)
    assert stats["source"] == "local" and stats["rows_read"] == 2312
    assert stats["skipped"]["empty_reply"] == 4 and stats["skipped"]["prompt_mismatch"] == 5
    assert stats["parsed"] == 2303
    assert stats["kept"] == stats["train"] + stats["test"] == 2303 - stats["skipped"]["duplicate"] - stats["skipped"]["too_long"]
    assert stats["token_lengths"]["prompt"]["max"] <= get_profile("cpu").data.max_prompt_tokens
    assert list(stats["sha256"]) == [str(HH_DIR / "harmless-base" / "test.jsonl.gz")]
    assert stats["missing_subsets"] == []
    first = read_pairs(tmp_path / "data" / "train_prefs.jsonl")[0]
    assert first.prompt.startswith(H) and first.prompt.endswith(A)


def test_label_noise_flips_the_stated_share_of_training_pairs_and_leaves_the_rest():
    pairs = [Pair(f"p{i}", f"good {i}", f"bad {i}", "rude") for i in range(200)]
    noisy, flipped = flip_labels(pairs, 0.25, seed=3)
    assert len(flipped) == 50 == sum(n.chosen.startswith("bad") for n in noisy)
    assert all(noisy[i].chosen == pairs[i].rejected and noisy[i].rejected == pairs[i].chosen for i in flipped)
    assert all(noisy[i] == pairs[i] for i in set(range(200)) - set(flipped))
    assert all(p.chosen.startswith("good") for p in pairs)  # the input (e.g. the test pairs) is never changed
    assert flip_labels(pairs, 0.25, seed=3)[1] == flipped != flip_labels(pairs, 0.25, seed=4)[1]


def test_label_noise_on_a_category_flips_its_pairs_before_any_other():
    """rm.label_noise_on: the noisy arm's flips drawn from one category first (the rude pairs on the cpu profile,
    where what PPO changes is rudeness), then from the rest at random; the same share either way."""
    pairs = [Pair(f"p{i}", f"good {i}", f"bad {i}", "rude" if i % 4 == 0 else "off_topic") for i in range(200)]
    rude = {i for i, p in enumerate(pairs) if p.category == "rude"}  # 50
    _, some = flip_labels(pairs, 0.15, seed=3, on="rude")
    assert len(some) == 30 and set(some) < rude  # fewer flips than rude pairs: only rude ones
    noisy, more = flip_labels(pairs, 0.4, seed=3, on="rude")
    assert len(more) == 80 and rude < set(more)  # every rude pair, then 30 others
    assert all(noisy[i].chosen.startswith("bad") for i in more)
    assert not rude <= set(flip_labels(pairs, 0.4, seed=3)[1])  # uniformly drawn, some rude pairs stay right
