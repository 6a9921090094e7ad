"""Chat templates of the recorded recipes, as Python renderers and as Jinja strings.

`render()` is the reference: the masking code tokenizes its output, so the token
spans come from exactly the strings the upstream code tokenized. The Jinja strings
exist so a tokenizer saved by the runner renders the same text through
`apply_chat_template` (tests check both agree on many conversations).

tulu (open-instruct `CHAT_TEMPLATES["tulu"]`, dataset_processor.py at 3dd7a07da;
docs/semantics.md "Template"):
  system/user -> `<|role|>\n{content}\n`; assistant -> `<|assistant|>\n{content}{eos}`
  plus `\n` unless it is the last message; any other role renders nothing; with
  add_generation_prompt, `<|assistant|>\n` follows the last message whatever its
  role. No BOS.

chatml (the chat template of HuggingFaceTB/SmolLM2-{135M,360M,1.7B}-Instruct,
tokenizer_config.json; the same string is the `chat_template` of alignment-handbook
recipes/smollm2/sft/config_smol.yaml after PR #221):
  every message -> `<|im_start|>{role}\n{content}<|im_end|>\n`; when the first message
  is not a system message, the default system turn
  `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n`
  is injected first; generation prompt `<|im_start|>assistant\n`. No BOS. An empty
  conversation renders nothing (the injection sits inside the message loop), except
  the generation prompt.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping

# Kept verbatim as released (one line, no whitespace control needed) so another
# check can compare it byte for byte against the real SmolLM2-Instruct tokenizer.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_SMOLLM2_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Written to be equivalent to open-instruct's tulu template (same output for every
# conversation, including unknown roles and the generation prompt after any role).
TULU_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)

# Template name (the canonical `chat_template` hyperparameter value) -> Jinja source.
TEMPLATES: dict[str, str] = {"tulu": TULU_JINJA, "chatml": CHATML_SMOLLM2_JINJA}


def check_template(name: str) -> str:
    """Return `name` if it is a known template, else raise ValueError naming the nearest one."""
    if name in TEMPLATES:
        return name
    choices = sorted(TEMPLATES)
    near = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown chat template {name!r}{hint} (valid: {', '.join(choices)})")


def jinja_template(name: str) -> str:
    """The Jinja chat template for `name` (to set as `tokenizer.chat_template`)."""
    return TEMPLATES[check_template(name)]


def _render_tulu(messages: list[Mapping[str, str]], eos_token: str, add_generation_prompt: bool) -> str:
    parts: list[str] = []
    last = len(messages) - 1
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role in ("system", "user"):
            parts.append(f"<|{role}|>\n{content}\n")
        elif role == "assistant":
            parts.append(f"<|assistant|>\n{content}{eos_token}" + ("" if i == last else "\n"))
        # other roles: nothing (upstream template has no branch for them)
        if i == last and add_generation_prompt:
            parts.append("<|assistant|>\n")
    return "".join(parts)


def _render_chatml(messages: list[Mapping[str, str]], add_generation_prompt: bool) -> str:
    parts: list[str] = []
    if messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n")
    for m in messages:
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render(messages: Iterable[Mapping[str, str]], template: str, eos_token: str,
           add_generation_prompt: bool = False) -> str:
    """Render `messages` exactly as the recipe's chat template does (text, no tokens).

    `eos_token` is only used by tulu (chatml hard-codes `<|im_end|>`).
    """
    msgs = list(messages)
    if check_template(template) == "tulu":
        return _render_tulu(msgs, eos_token, add_generation_prompt)
    return _render_chatml(msgs, add_generation_prompt)


__all__ = ["render", "check_template", "jinja_template", "TEMPLATES", "TULU_JINJA",
           "CHATML_SMOLLM2_JINJA", "SMOLLM2_DEFAULT_SYSTEM"]
