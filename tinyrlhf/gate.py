"""The go/no-go before PPO: are the reward models good enough to measure a tax with?

PPO is most of a GPU profile's night (15 of 19 predicted hours on rtx4060). It measures nothing when bf16's own
best-of-n gain is not resolved from 0 (every tax is a share of that gain, so all are undefined) or when bf16's reward
models are at chance on held-out pairs. Both are known at the end of 03, before any PPO run: the verdict says which
check failed with its numbers, what to raise, and the hours PPO would have taken. `ppo.gate` (on for the GPU
profiles) makes a no-go stop 04 before its first run; 03 prints the verdict on every profile.
"""

from __future__ import annotations

from .budget import desktop, expected, predict
from .config import Profile


def _fmt_interval(value: float, ci, spec: str) -> str:
    return f"{value:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]".replace("-", "−")


def bon_check(bon: dict | None) -> dict:
    """bf16's best-of-n gain over the SFT policy at the headline n: resolved from 0 (its interval's low end > 0)?"""
    if bon is None:
        return {"ok": False, "what": "no current best-of-n result: run 03's best-of-n (`tinyrlhf run bon`) first"}
    star = (bon["arms"].get("bf16") or {}).get("at_n_star") or {}
    gain, ci = star.get("gold_gain_vs_sft"), star.get("gold_gain_vs_sft_ci95")
    if gain is None or not ci:
        return {"ok": False, "what": "bf16 has no best-of-n gain with an interval (its reward models failed?)"}
    ok = ci[0] > 0
    return {"ok": ok, "gain": gain, "ci95": ci, "n": bon.get("n_star"),
            "what": f"bf16's best-of-n gain over the SFT policy at n = {bon.get('n_star')} is "
                    f"{_fmt_interval(gain, ci, '+.3f')}" + ("" if ok else ": its interval holds 0, so every tax "
                                                                      "would be undefined")}


def accuracy_check(rm: dict) -> dict:
    """Every finished bf16 reward model's held-out accuracy above chance (its Wilson interval's low end > 0.5)?"""
    models = [m for m in rm.get("models", {}).values() if m.get("arm") == "bf16" and m.get("status") == "ok"]
    if not models:
        return {"ok": False, "what": "no bf16 reward model finished"}
    at_chance = [m for m in models if m["accuracy_ci95"][0] <= 0.5]
    worst = min(models, key=lambda m: m["accuracy_ci95"][0])
    shown = _fmt_interval(worst["accuracy"], worst["accuracy_ci95"], ".3f")
    what = (f"every bf16 reward model is above chance on held-out pairs (the weakest, seed {worst['seed']}: {shown})"
            if not at_chance else
            f"{len(at_chance)} of {len(models)} bf16 reward models are not above chance on held-out pairs (seed "
            + ", ".join(f"{m['seed']}: {_fmt_interval(m['accuracy'], m['accuracy_ci95'], '.3f')}" for m in at_chance)
            + ")")
    return {"ok": not at_chance, "at_chance": len(at_chance), "models": len(models), "what": what}


def ppo_hours(profile: Profile) -> float:
    """The hours PPO and its evaluation would take (predicted, an RTX 4060 beside an 8-core CPU)."""
    rows = predict(profile, desktop(), lengths=expected(profile))
    return sum(r["hours"] for r in rows if r["key"] in ("ppo", "eval"))


def verdict(profile: Profile, rm: dict, bon: dict | None) -> dict:
    """{"go", "checks", "sentence"}: go when both checks pass. The sentence gives the numbers, what to raise and the
    hours PPO would take, and says whether this profile stops on a no-go (`ppo.gate`)."""
    checks = {"bon": bon_check(bon), "accuracy": accuracy_check(rm)}
    go = all(c["ok"] for c in checks.values())
    hours = ppo_hours(profile) if profile.device != "cpu" else None
    cost = f"PPO would take {hours:.1f} h more (predicted for an RTX 4060)" if hours is not None else \
        "PPO would run"
    if go:
        text = (f"Go/no-go before PPO: GO. {checks['bon']['what']}; {checks['accuracy']['what']}. {cost} against "
                f"reward models good enough to measure with.")
    else:
        failed = "; ".join(c["what"] for c in checks.values() if not c["ok"])
        r = profile.rm
        text = (f"Go/no-go before PPO: NO-GO. {failed}. {cost} and measure nothing. Raise rm.max_steps (now "
                f"{r.max_steps}) for stronger reward models, or rm.seeds (now {len(r.seeds)}) and eval.prompts (now "
                f"{profile.eval.prompts}) for a narrower best-of-n interval, then rerun 03; or set ppo.gate=false to "
                f"run PPO anyway.")
    text += (" (ppo.gate is on: 04 stops before its first run on a no-go.)" if profile.ppo.gate else
             " (ppo.gate is off on this profile: 04 runs either way.)")
    return {"go": go, "checks": checks, "sentence": text}
