"""The one definition of the chat format shared by SFT, reward modelling and PPO.

Anthropic's HH-RLHF layout: turns joined as ``"\\n\\nHuman: ..."`` and ``"\\n\\nAssistant: ..."``. A prompt is the
dialogue up to and including the last ``"\\n\\nAssistant:"``; a response is the reply after it, written with a
leading space and closed by the tokenizer's end-of-sequence token.
"""

import re

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def dialogue(turns: list[tuple[str, str]]) -> str:
    """Join (speaker, text) turns, speaker 'Human' or 'Assistant', in Anthropic's layout."""
    return "".join(f"\n\n{who}: {text}" for who, text in turns)


def turns(text: str) -> list[tuple[str, str]]:
    """The (speaker, text) turns of a dialogue in Anthropic's layout, the inverse of `dialogue` (texts stripped).
    Text before the first turn, if any, is the Human's; a prompt's last turn is the open ("Assistant", "")."""
    parts = _TURN.split(text)
    lead = [("Human", parts[0].strip())] if parts[0].strip() else []
    return lead + [(who, said.strip()) for who, said in zip(parts[1::2], parts[2::2])]


def prompt_for(user_message: str) -> str:
    """A one-turn prompt ready for generation."""
    return f"{HUMAN} {user_message}{ASSISTANT}"


def completion(reply: str, eos: str = "") -> str:
    """The text a model is trained to produce after a prompt."""
    return " " + reply.strip() + eos


def full_text(prompt: str, reply: str, eos: str = "") -> str:
    return prompt + completion(reply, eos)
