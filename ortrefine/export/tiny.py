"""Tiny random models built from a config: demos and tests without any download.

Deterministic for a given (arch, seed): the tokenizer is trained on a built-in corpus and the
weights drawn from a seeded generator, so the same preset always exports the same bundle.
"""

from __future__ import annotations

from typing import Any

CORPUS = [
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    "The most important thing to remember when learning to cook is to taste as you go.",
    "Yesterday the city council voted to build a new park near the river.",
    "Why is the sky blue? Sunlight is scattered by the air, and blue light scatters most.",
    "Write one sentence that uses all of these words: dog, frisbee, park.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Numbers like 1, 2, 3 and 42 appear in text; so do symbols such as %, $ and #.",
    "Unicode text: café, naïve, résumé, 東京, and emoji like 🙂 must survive a round trip.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(add_bos: bool, chat: bool) -> Any:
    """A byte-level BPE (vocab 384) so any text encodes; ids 0-2 are the specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"], bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    if chat:
        fast.chat_template = CHATML
    return fast


def build_tiny(arch: str, seed: int = 0) -> tuple[Any, Any]:
    """(torch model in eval mode, tokenizer) for arch 'llama' or 'gpt2'."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from ortrefine.errors import UnknownNameError

    tokenizer = build_tokenizer(add_bos=arch == "llama", chat=arch == "llama")
    vocab = len(tokenizer)
    common: dict[str, Any] = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
            tie_word_embeddings=True, **common,
        )
    elif arch == "gpt2":
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2, **common)
    else:
        raise UnknownNameError(f"unknown tiny architecture {arch!r}; known: gpt2, llama")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = 0
    return model.eval(), tokenizer
