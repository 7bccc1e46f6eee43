"""A tiny, randomly initialised Llama-style causal LM with a locally trained tokenizer.

Tests of the transformers backend and of the training code need a *real* ``transformers`` model and
tokenizer (chat template, padding, ``generate``, ``save_pretrained``/``from_pretrained`` round trips) but
cannot download anything and must run in seconds on a CPU. This module builds one from scratch: a byte-level
BPE tokenizer trained with the ``tokenizers`` library on a small built-in English/clinical word list, and a
2-layer Llama with hidden size 64. Its outputs are gibberish; what matters is that every code path is the
same one a real model takes.

torch/transformers/tokenizers are imported inside :func:`build_tiny_causal_lm` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CHATML_TEMPLATE", "TINY_WORDS", "build_tiny_causal_lm"]

#: ChatML, the format SmolLM2 and Qwen use. Kept identical to SmolLM2's template minus its default system
#: prompt, so code tested against the tiny model sees the same prompt layout as with the offline default.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

#: A small vocabulary of everyday English and clinical-interview words, so that the BPE merges produce
#: word-like tokens for the kind of text the environment exchanges (questions, symptoms, answers).
_WORDS_TEXT = """
the a an and or but if then of to in on at for with without from by about as is are was were be been
being have has had do does did not no yes can could would should will may might must this that these those
it its he she they we you i me my your his her their our them us who what when where why how which
patient doctor nurse question answer ask asks asked tell told said say says know known unknown
pain ache fever cough headache nausea vomiting diarrhea rash fatigue dizziness weakness swelling bleeding
chest abdomen back head neck throat stomach heart lung lungs kidney liver skin eye eyes ear arm leg foot
hand joint joints muscle bone blood urine breath breathing shortness sleep appetite weight loss gain
history family medical surgical social medication medications allergy allergies dose daily weekly
year years old age male female man woman child infant adult pregnant pregnancy
day days week weeks month months hour hours ago since started start began onset sudden gradual
severe mild moderate sharp dull constant intermittent worse better worsening improving
temperature pressure pulse rate oxygen saturation exam examination test tests result results
diagnosis diagnose treatment treat therapy infection virus bacteria cancer diabetes hypertension asthma
pneumonia migraine stroke anemia arthritis appendicitis fracture ulcer
choice choices option options correct incorrect most likely next best step management
smoke smokes smoking alcohol drink drinks drug drugs travel recent recently contact exposure
any other symptom symptoms describe location duration frequency character radiation
please thank thanks sorry okay sure one two three four five six seven eight nine ten
"""
TINY_WORDS: list[str] = _WORDS_TEXT.split()


def _training_corpus(words: Iterable[str]) -> list[str]:
    """Lines for the BPE trainer: each word alone and in short runs, so merges cross the leading space."""
    unique = list(dict.fromkeys(w for w in words if w))
    lines = [" ".join(unique[i : i + 8]) for i in range(0, len(unique), 8)]
    lines += [f" {w}" for w in unique]
    lines += [w.capitalize() for w in unique]
    lines += ["What is your main symptom?", "How long have you had it?", "A. B. C. D.", "0 1 2 3 4 5 6 7 8 9"]
    return lines


def build_tiny_causal_lm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Build and save a tiny Llama causal LM plus tokenizer under ``out_dir``; return ``out_dir``.

    ``vocab_corpus`` replaces the built-in word list (iterable of words or lines). ``seed`` fixes the
    weights, so two builds with the same arguments load to identical models. The result loads offline with
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``; the
    tokenizer has ``<|im_end|>`` as EOS (the end of a ChatML turn), a distinct ``<|pad|>`` pad token and a
    ChatML chat template.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    corpus = _training_corpus(TINY_WORDS if vocab_corpus is None else vocab_corpus)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
        model_max_length=512,
        padding_side="left",
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # A larger init than the default 0.02 makes greedy continuations depend on the prompt instead of
        # collapsing onto one token, which the batching tests rely on to tell rows apart.
        initializer_range=0.5,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng keeps the caller's global RNG untouched while making the weights a function of ``seed``.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mediq_tiny.json").write_text(
        json.dumps({"seed": seed, "vocab_size": len(tokenizer), "hidden_size": hidden_size}) + "\n",
        encoding="utf-8",
    )
    return out
