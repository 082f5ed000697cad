"""The one definition of the chat format shared by SFT, reward modelling and PPO.

Anthropic's HH-RLHF layout: turns joined as ``"\\n\\nHuman: ..."`` and ``"\\n\\nAssistant: ..."``. A prompt is the
dialogue up to and including the last ``"\\n\\nAssistant:"``; a response is the reply after it, written with a
leading space and closed by the tokenizer's end-of-sequence token.
"""

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def dialogue(turns: list[tuple[str, str]]) -> str:
    """Join (speaker, text) turns, speaker 'Human' or 'Assistant', in Anthropic's layout."""
    return "".join(f"\n\n{who}: {text}" for who, text in turns)


def prompt_for(user_message: str) -> str:
    """A one-turn prompt ready for generation."""
    return f"{HUMAN} {user_message}{ASSISTANT}"


def completion(reply: str, eos: str = "") -> str:
    """The text a model is trained to produce after a prompt."""
    return " " + reply.strip() + eos


def full_text(prompt: str, reply: str, eos: str = "") -> str:
    return prompt + completion(reply, eos)
