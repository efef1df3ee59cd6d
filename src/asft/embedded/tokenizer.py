"""A real Qwen2 tokenizer for the embedded default model, built entirely in code.

Why build it by hand (see ``shared/notes/embedded-default.md``, pitfall 1): with transformers 5.x,
``AutoTokenizer`` on a directory whose ``config.json`` says ``qwen2`` instantiates
``Qwen2Tokenizer``, which rebuilds its own pre-tokenizer and ignores a custom one from
``tokenizer.json``. Qwen2's BPE has no unknown token, so any character missing from the vocabulary
vanishes silently on encode. We therefore build a genuine ``Qwen2Tokenizer`` whose vocabulary
holds all 256 byte-level symbols (so no text can ever be lost), no merges (one token per byte),
the three Qwen special tokens and one extra non-special token, ``\\boxed{``, so the answer marker
is a single token.

Vocabulary (260 entries):

- ids 0-255: the GPT-2 byte-level symbols, in byte order (id == byte value);
- 256 ``<|endoftext|>`` (eos and pad), 257 ``<|im_start|>``, 258 ``<|im_end|>``;
- 259 ``\\boxed{`` (an added, non-special, non-normalized token).
"""

from __future__ import annotations

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase, Qwen2Tokenizer

__all__ = [
    "BOXED_TOKEN",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "VOCAB_SIZE",
    "build_tokenizer",
    "byte_level_symbols",
]

EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
BOXED_TOKEN = "\\boxed{"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN)
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1

# Minimal Qwen-style ChatML template: every message as
# "<|im_start|>{role}\n{content}<|im_end|>\n", then "<|im_start|>assistant\n" when a generation
# prompt is asked for. No default system prompt (unlike the real Qwen2 template).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def byte_level_symbols() -> list[str]:
    """The 256 GPT-2 byte-level symbols, indexed by byte value.

    Printable bytes map to themselves; the others (control characters, space, a few Latin-1
    bytes) are shifted to code points 256 and up, in byte order. This is the standard mapping
    the byte-level pre-tokenizer and decoder of ``tokenizers`` use.
    """
    printable = (
        set(range(ord("!"), ord("~") + 1))
        | set(range(ord("¡"), ord("¬") + 1))
        | set(range(ord("®"), ord("ÿ") + 1))
    )
    symbols: list[str] = []
    shift = 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def build_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Build the embedded default tokenizer (a ``Qwen2Tokenizer``, 260 entries).

    ``padding_side`` is ``"right"`` (training) or ``"left"`` (batched generation); it is saved
    with the tokenizer and can be changed later through ``tokenizer.padding_side``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    vocab = {symbol: i for i, symbol in enumerate(byte_level_symbols())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        padding_side=padding_side,
        chat_template=CHAT_TEMPLATE,
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(BOXED_TOKEN, special=False, normalized=False)])
    if len(tokenizer) != VOCAB_SIZE:  # pragma: no cover - guards against library changes
        raise RuntimeError(f"expected {VOCAB_SIZE} tokens, got {len(tokenizer)}")
    return tokenizer
