"""A tiny Llama with a byte-level tokenizer, built from scratch for fast tests.

`build_tiny_model(dir)` writes an ordinary Hugging Face folder (config, safetensors, tokenizer with a
chat template, EOS and pad tokens, generation config) that loads back through the same
`from_pretrained` path users take. Random weights: good for mechanics, not for behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

# ChatML-style template: every message is "<|im_start|>role\ncontent<|im_end|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def build_tiny_tokenizer(path: str | Path) -> None:
    """Save a byte-level BPE tokenizer (256 byte tokens, no merges, 4 special tokens) to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(alphabet))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token=None,
        pad_token="<|pad|>",
        unk_token=None,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))


def build_tiny_model(
    path: str | Path,
    kind: Literal["causal", "seqcls"] = "causal",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """Write a tiny Llama (causal LM or 1-label sequence classifier) plus tokenizer to `path`; return it.

    `vocab_size` larger than the tokenizer's gives the model embedding and head rows no token uses (a
    large-vocabulary model's memory at a tiny model's cost)."""
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    config = LlamaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    if kind == "causal":
        model: torch.nn.Module = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
    elif kind == "seqcls":
        config.num_labels = 1
        model = LlamaForSequenceClassification(config)
    else:
        raise ValueError(f"unknown kind {kind!r}: use 'causal' or 'seqcls'")
    model.save_pretrained(str(path))  # type: ignore[operator]
    return path
