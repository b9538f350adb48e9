"""Tiny stand-ins for a real backbone: a byte-level BPE tokenizer trained on the demo world, random-init Llama models.

Run through `python -m r1lab.build` (writes artifacts/models/<size>), or call `build_tokenizer` and `build_model`.
The tokenizer speaks ChatML (`<|im_start|>role\\n...<|im_end|>\\n`), splits digits one by one, and keeps the R1 tags
(`<think>`, `</answer>`, ...) as single, non-special tokens so they survive `skip_special_tokens=True` decoding.
Simplified: a 2k vocabulary and ~1M / ~10M parameters, so every stage runs on a laptop CPU.
"""

from collections.abc import Iterable

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from r1lab.maths import formats

BOS, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (BOS, PAD, IM_START, IM_END)
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# LlamaConfig keyword arguments of the named sizes; parameter counts with the 2,048-token vocabulary, embeddings tied.
SIZES: dict[str, dict] = {
    # 1,053,824 parameters (embeddings 262,144)
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=344, max_position_embeddings=1024),
    # 2,173,632 parameters (embeddings 393,216): the distillation student (`model=student`), the demo model's depth at
    # 3/4 of its width; with 3 layers it never learned to add (docs/LOG.md)
    "student": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=3,
                    intermediate_size=516, max_position_embeddings=1024),
    # ~3.7M parameters: the demo's size, small enough to train every stage on a 2-core CPU
    "demo": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=688, max_position_embeddings=1024),
    # 10,573,120 parameters (embeddings 655,360): `model=medium`, for faster machines
    "medium": dict(hidden_size=320, num_hidden_layers=8, num_attention_heads=5, num_key_value_heads=5,
                   intermediate_size=864, max_position_embeddings=1024),
}


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`: at most `vocab_size` tokens, specials and R1 tags included
    (exactly that many unless the text runs out of merges)."""
    if vocab_size < 512:
        raise ValueError(f"build_tokenizer: vocab_size={vocab_size} is too small for 256 byte tokens plus merges")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(formats.TAGS), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in formats.TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
        additional_special_tokens=[IM_START], padding_side="left", chat_template=CHATML,
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once).

    >>> count_parameters(torch.nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def build_model(tokenizer: PreTrainedTokenizerFast, size: str | dict, seed: int = 0) -> LlamaForCausalLM:
    """A random-init Llama causal LM over `tokenizer`'s vocabulary; `size` is a key of SIZES or LlamaConfig kwargs."""
    if isinstance(size, str) and size not in SIZES:
        raise ValueError(f"build_model: unknown size {size!r}; named sizes are {sorted(SIZES)} (or pass a dict)")
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS, PAD, IM_END)}
    config = LlamaConfig(
        vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=ids[BOS], eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD], **(SIZES[size] if isinstance(size, str) else dict(size)),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[IM_END], ids[BOS]], pad_token_id=ids[PAD]
    )
    return model
