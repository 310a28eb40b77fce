"""The tiny dev model: a Llama-architecture model anyone can rebuild bit for bit.

Random weights from a fixed seed and a byte-level BPE tokenizer trained on text
generated here, so a CPU-only machine can serve and test the whole stack with
no download. The output is byte-identical across runs and machines for the same
package versions, which is what lets ``models.toml`` pin its hashes.

Determinism notes (why the code looks the way it does):
- weights come from ``torch.rand`` (integer Mersenne-Twister draws turned into
  floats exactly) and plain multiply/subtract; ``torch.randn`` is avoided
  because its vectorised Box-Muller path differs between CPU instruction sets;
- every JSON file is written with sorted keys and a trailing newline;
- the tokenizer JSON is produced by ``tokenizers`` itself; its layout can change
  between ``tokenizers`` releases (pins were made with tokenizers 0.23.3,
  safetensors 0.8.0, torch 2.13.0).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Final

__all__ = [
    "BUILDERS",
    "TINY_EMBED_SEED",
    "TINY_FILES",
    "TINY_RERANK_SEED",
    "TINY_SEED",
    "build_tiny",
    "build_tiny_embed",
    "build_tiny_rerank",
]

TINY_SEED: Final = 20240611
#: the tiny embedding model: the same architecture and tokenizer, its own weights
TINY_EMBED_SEED: Final = 20240612
#: the tiny reranker (a cross-encoder): the same body and tokenizer, its own weights and a one-logit head
TINY_RERANK_SEED: Final = 20240613
#: every file the builder writes (and the engine reads)
TINY_FILES: Final = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

_HIDDEN: Final = 128
_HEADS: Final = 4
_KV_HEADS: Final = 4
_HEAD_DIM: Final = 32  # vLLM's CPU attention needs head_dim >= 32
_LAYERS: Final = 2
_INTERMEDIATE: Final = 256
_VOCAB: Final = 2048
_MAX_POSITIONS: Final = 2048

_BOS: Final = "<|begin_of_text|>"
_EOS: Final = "<|im_end|>"
_IM_START: Final = "<|im_start|>"
_PAD: Final = "<|pad|>"
_SPECIALS: Final = (_PAD, _BOS, _EOS, _IM_START)

#: ChatML with Hermes-style function calling (the format vLLM's ``hermes`` tool parser reads): the
#: tools are listed in a system turn of their own, an assistant's calls are ``<tool_call>`` blocks,
#: a tool's result is a ``tool`` turn. Without tools the rendering is plain ChatML.
_CHAT_TEMPLATE: Final = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|im_start|>system\n# Tools\n\nYou may call one or more functions. Their signatures are "
    "within <tools></tools>:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools>\n\nFor each call, return a JSON object with the function name and arguments "
    'within <tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call><|im_end|>\n\' }}'
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% set arguments = call['function']['arguments'] %}"
    "{{ ('\n' if message['content'] or not loop.first else '') + '<tool_call>\n{\"name\": ' "
    "+ (call['function']['name'] | tojson) + ', \"arguments\": ' "
    "+ (arguments if arguments is string else (arguments | tojson)) + '}\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS: Final = (
    "the a an of to in on for with by from at as is are was were be been model token node tenant "
    "audit log cache prefix engine request response stream delta health probe pin hash weight "
    "residency region local router policy budget limit queue batch latency throughput memory "
    "gpu cpu kernel tensor layer head attention vector matrix value key query sample seed "
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega one two three four five six seven eight nine ten "
    "hello world please thanks yes no maybe why how what when where who which because "
    "system user assistant tool function call result error retry timeout ready alive dead"
).split()


def _corpus(rng: random.Random) -> list[str]:
    """Sentences with words, numbers and punctuation, enough for ~2k merges."""
    lines: list[str] = []
    punct = [".", ",", "!", "?", ";", ":"]
    for _ in range(4000):
        n = rng.randint(4, 16)
        words = []
        for _ in range(n):
            roll = rng.random()
            if roll < 0.08:
                words.append(str(rng.randint(0, 9999)))
            elif roll < 0.12:
                words.append(
                    "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))
                )
            else:
                words.append(rng.choice(_WORDS))
        sentence = " ".join(words)
        lines.append(sentence[:1].upper() + sentence[1:] + rng.choice(punct))
    return lines


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")


def _train_tokenizer(dest: Path, *, pairs: bool = False) -> dict[str, int]:
    """Train the byte-level BPE tokenizer into ``dest``. With ``pairs`` it frames a text pair as
    ``<bos> query <eos> document <eos>`` (a cross-encoder's input: vLLM's score path tokenizes a
    query and a document as one pair), and a single text as ``<bos> text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB - 48,  # leave the model's vocab a little headroom past the tokenizer's
        min_frequency=2,
        special_tokens=list(_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(random.Random(TINY_SEED)), trainer=trainer)
    tokenizer.save(str(dest / "tokenizer.json"), pretty=True)
    ids: dict[str, int] = {}
    for tok in _SPECIALS:
        i = tokenizer.token_to_id(tok)
        if i is None:
            raise RuntimeError(f"tokenizer lost special token {tok!r}")
        ids[tok] = int(i)
    if pairs:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{_BOS} $A",
            pair=f"{_BOS} $A {_EOS} $B {_EOS}",
            special_tokens=[(_BOS, ids[_BOS]), (_EOS, ids[_EOS])],
        )
        tokenizer.save(str(dest / "tokenizer.json"), pretty=True)
    return ids


def _weights(dest: Path, seed: int, *, head: str = "lm_head", labels: int = _VOCAB) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator(device="cpu").manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        bound = 1.0 / (shape[-1] ** 0.5)
        u: torch.Tensor = torch.rand(shape, generator=gen, dtype=torch.float32)
        out: torch.Tensor = ((u * 2.0) - 1.0) * bound
        return out

    q_dim = _HEADS * _HEAD_DIM
    kv_dim = _KV_HEADS * _HEAD_DIM
    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": uniform(_VOCAB, _HIDDEN)}
    for i in range(_LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = uniform(q_dim, _HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = uniform(kv_dim, _HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = uniform(kv_dim, _HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = uniform(_HIDDEN, q_dim)
        tensors[p + "mlp.gate_proj.weight"] = uniform(_INTERMEDIATE, _HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = uniform(_INTERMEDIATE, _HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = uniform(_HIDDEN, _INTERMEDIATE)
        tensors[p + "input_layernorm.weight"] = torch.ones(_HIDDEN, dtype=torch.float32)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(_HIDDEN, dtype=torch.float32)
    tensors["model.norm.weight"] = torch.ones(_HIDDEN, dtype=torch.float32)
    tensors[f"{head}.weight"] = uniform(labels, _HIDDEN)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})


def _configs(
    dest: Path, ids: dict[str, int], extra: dict[str, object], tokenizer_extra: dict[str, object]
) -> None:
    _write_json(
        dest / "config.json",
        {"architectures": ["LlamaForCausalLM"]}
        | extra
        | {
            "attention_bias": False,
            "bos_token_id": ids[_BOS],
            "eos_token_id": ids[_EOS],
            "head_dim": _HEAD_DIM,
            "hidden_act": "silu",
            "hidden_size": _HIDDEN,
            "intermediate_size": _INTERMEDIATE,
            "max_position_embeddings": _MAX_POSITIONS,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": _HEADS,
            "num_hidden_layers": _LAYERS,
            "num_key_value_heads": _KV_HEADS,
            "pad_token_id": ids[_PAD],
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "vocab_size": _VOCAB,
        },
    )
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": ids[_BOS], "eos_token_id": ids[_EOS], "pad_token_id": ids[_PAD]},
    )
    _write_json(
        dest / "tokenizer_config.json",
        tokenizer_extra
        | {
            "add_bos_token": False,
            "add_eos_token": False,
            "added_tokens_decoder": {
                str(i): {
                    "content": tok,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for tok, i in sorted(ids.items(), key=lambda kv: kv[1])
            },
            "bos_token": _BOS,
            "chat_template": _CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": _EOS,
            "model_max_length": _MAX_POSITIONS,
            "pad_token": _PAD,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )


def build_tiny(dest: Path) -> Path:
    """Build the tiny chat model into ``dest`` (replaced atomically if it exists) and return it."""
    return _build(dest, seed=TINY_SEED, extra={})


def build_tiny_embed(dest: Path) -> Path:
    """Build the tiny embedding model: served by vLLM's pooling runner (last token, normalised),
    and Matryoshka-capable, so ``dimensions`` truncates and renormalises."""
    return _build(dest, seed=TINY_EMBED_SEED, extra={"is_matryoshka": True})


def build_tiny_rerank(dest: Path) -> Path:
    """Build the tiny reranker: a cross-encoder (``LlamaForSequenceClassification``, one label)
    that vLLM's pooling runner serves with its ``classify`` task, the last token's hidden state
    through a one-logit ``score`` head. Its weights are random: it ranks, but not by relevance."""
    return _build(
        dest,
        seed=TINY_RERANK_SEED,
        extra={
            "architectures": ["LlamaForSequenceClassification"],
            "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0},
        },
        head="score",
        labels=1,
        pairs=True,
    )


#: ``builder`` in ``models.toml`` -> the function that builds it
BUILDERS: Final = {"tiny": build_tiny, "tiny-embed": build_tiny_embed, "tiny-rerank": build_tiny_rerank}


def _build(
    dest: Path,
    *,
    seed: int,
    extra: dict[str, object],
    head: str = "lm_head",
    labels: int = _VOCAB,
    pairs: bool = False,
) -> Path:
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination, then swap, so a crash never leaves half a model.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        ids = _train_tokenizer(work, pairs=pairs)
        _weights(work, seed, head=head, labels=labels)
        # a pair's input is its token ids alone (no token type ids: a Llama body reads none)
        _configs(work, ids, extra, {"model_input_names": ["input_ids", "attention_mask"]} if pairs else {})
        for name in TINY_FILES:
            os.chmod(work / name, 0o644)
        # mkdtemp makes the folder private; a model folder is read by the serving user
        os.chmod(work, 0o755)  # noqa: S103
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest
