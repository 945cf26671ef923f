"""Build a tiny, randomly initialised ObjEmbed checkpoint directory in the official format.

Why: tests, the demo and the CPU benchmark need a checkpoint with the exact file layout,
key names, tokenizer behaviour and chat template of the released ObjEmbed-2B/4B, without
multi-GB downloads. The directory loads with our loader *and* with transformers
(``AutoTokenizer``, ``Qwen3VLForConditionalGeneration``), which is what keeps it honest.

Contents: ``config.json`` (Qwen3-VL config + ObjEmbed attrs), ``model.safetensors`` (or two
shards + ``model.safetensors.index.json``; bf16 by default like the release, no ``lm_head``
when tied), a byte-level BPE tokenizer trained on the fly (``tokenizer.json``, ``vocab.json``,
``merges.txt``, ``tokenizer_config.json`` with Qwen's special tokens plus the four ObjEmbed
tokens), a chat template with Qwen3-VL-Instruct semantics (also as ``chat_template.json``)
and ``preprocessor_config.json``. Deterministic for a given seed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
OBJEMBED_SPECIAL_TOKENS = ("<object>", "<local_text>", "<global>", "<global_text>")

# Our own minimal template with the Qwen3-VL-Instruct output format: no default system
# message; an image item renders as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for item in messages[0].content %}{%- if 'text' in item %}"
    "{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message.role == 'system') %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for item in message.content %}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' or 'video' in item %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "Locate the specific object being described by analyzing its unique instance-level "
    "attributes, its spatial position, and its relationship with surrounding objects.",
    "The coarse global image is. The detailed global image is. The global image is",
    "Object 0: Object 1: Object 2: Object 3: Object 4: Object 5: Object 6: Object 7: "
    "Object 8: Object 9: Object 10: Object 11: Object 99: Object 100:",
    "Find an object that matches the given caption. Find an image that matches the given "
    "caption.",
    "a person in a white space suit, the red cup on the left, a cat sleeping on the sofa, "
    "the coffee mug, a black dog, the man wearing a hat, the chair next to the table, "
    "a rocket flag helmet astronaut plate spoon saucer green bottle window door car tree",
]

# The split pattern of Qwen2/Qwen3 tokenizer.json files (pre_tokenizer.pretokenizers[0]).
QWEN2_PRETOKENIZE_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train_tokenizer(vocab_size: int):
    """A Qwen2-style byte-level BPE tokenizer (tokenizers library), special tokens last.

    The pre-tokenizer is the one in Qwen's own tokenizer.json (the Qwen2 split pattern, then
    byte-level without its GPT-2 regex): digits split one by one, so "Object 10" is
    "Object", " ", "1", "0". transformers 5.x's Qwen2Tokenizer rebuilds exactly this
    pre-tokenizer whatever the file says, so any other choice here would tokenize
    differently under 4.57 and 5.x.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(list(QWEN_SPECIAL_TOKENS) + list(OBJEMBED_SPECIAL_TOKENS))
    return tok


def _tiny_config(token_ids: dict[str, int], vocab: int, hidden_size: int, use_two_tokens: int,
                 tie: bool, use_global_caption: bool, dtype: str) -> dict:
    heads = 4
    head_dim = 16
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "model_type": "qwen3_vl_text", "vocab_size": vocab, "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size, "num_hidden_layers": 2,
        "num_attention_heads": heads, "num_key_value_heads": 2, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "rope_theta": 5000000, "attention_bias": False, "attention_dropout": 0.0,
        "rope_scaling": {"rope_type": "default", "mrope_section": mrope,
                         "mrope_interleaved": True},
        "tie_word_embeddings": tie, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": token_ids["<|endoftext|>"], "eos_token_id": token_ids["<|im_end|>"],
        "dtype": dtype,
    }
    vision = {
        "model_type": "qwen3_vl", "depth": 3, "hidden_size": 32, "intermediate_size": 64,
        "num_heads": 2, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "out_hidden_size": hidden_size,
        "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1, 2],
        "hidden_act": "gelu_pytorch_tanh", "initializer_range": 0.02,
    }
    return {
        "architectures": ["ObjectEmbed"], "model_type": "qwen3_vl",
        "text_config": text, "vision_config": vision,
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "tie_word_embeddings": tie, "dtype": dtype, "transformers_version": "4.57.1",
        "num_classes": 1203, "use_global_caption": use_global_caption,
        "use_two_tokens": use_two_tokens, "use_two_captions": False,
    }


def _weight_shapes(config: dict, tie: bool) -> dict[str, tuple[int, ...]]:
    """Stored key -> shape, from transformers' Qwen3VLModel (meta) and our projector."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from objembed_ros.encoder.projector import ObjectProjector

    cfg = Qwen3VLConfig(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device("meta"):
        model = Qwen3VLModel(cfg)
        proj = ObjectProjector(config["text_config"]["hidden_size"])
    shapes = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    shapes.update({k: tuple(v.shape) for k, v in proj.state_dict().items()})
    if not tie:
        shapes["lm_head.weight"] = tuple(model.language_model.embed_tokens.weight.shape)
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Unit-scale random values so every path (position adds, deepstack...) matters."""
    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    leaf = name.rsplit(".", 1)[-1]
    if name in ("logit_log_scale", "logit_image_log_scale"):
        return torch.full(shape, math.log(1 / 0.05))
    if name in ("logit_bias", "logit_image_bias"):
        return torch.full(shape, -math.log((1 - 0.01) / 0.01)) + 0.5 * randn()
    if "norm" in name and leaf == "weight":
        return 1.0 + 0.1 * randn()
    if leaf == "bias":
        return 0.1 * randn()
    if "embed_tokens" in name or "logit_pos_embedding" in name or name.endswith("lm_head.weight"):
        return randn()
    if "pos_embed" in name:
        return 0.5 * randn()
    if name.endswith("scale_conv.weight") or "first_scale_conv" in name:
        return randn() / math.sqrt(shape[0])  # ConvTranspose2d: (in, out, k, k)
    fan_in = int(math.prod(shape[1:])) if len(shape) > 1 else 1
    return randn() / math.sqrt(fan_in)


def make_tiny_objembed_checkpoint(path: str | Path, *, use_two_tokens: int = 2,
                                  hidden_size: int = 64, seed: int = 0, sharded: bool = False,
                                  tie_word_embeddings: bool = True,
                                  use_global_caption: bool = True,
                                  dtype: str = "bfloat16",
                                  text_config: dict | None = None,
                                  vision_config: dict | None = None) -> Path:
    """Write the checkpoint into ``path`` (created if needed) and return it.

    hidden_size: the text hidden size D (a multiple of 8; D > 4000 exercises the wide
    vision-projector branch but is slow). dtype: "bfloat16" (like the release) or "float32".
    text_config / vision_config: entries that override the tiny sub-configs (e.g. the real
    2B/4B layer sizes for latency checks with random weights; set ``hidden_size`` through
    the argument, it also sizes the vision output and the projector).
    """
    from safetensors.torch import save_file

    if dtype not in ("bfloat16", "float32"):
        raise ValueError("dtype must be 'bfloat16' or 'float32'")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tok = _train_tokenizer(vocab_size=420)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt (for the slow tokenizer)
    specials = list(QWEN_SPECIAL_TOKENS) + list(OBJEMBED_SPECIAL_TOKENS)
    ids = {t: tok.token_to_id(t) for t in specials}
    vocab = 64 * math.ceil(tok.get_vocab_size() / 64)
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 262144,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "unk_token": None, "errors": "replace", "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                          "single_word": False, "special": True} for t in specials},
        "additional_special_tokens": list(OBJEMBED_SPECIAL_TOKENS),
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen3VLProcessor",
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "do_convert_rgb": True, "resample": 3,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    }, indent=2))

    config = _tiny_config(ids, vocab, hidden_size, use_two_tokens, tie_word_embeddings,
                          use_global_caption, dtype)
    config["text_config"].update(text_config or {})
    config["vision_config"].update(vision_config or {})
    (out / "config.json").write_text(json.dumps(config, indent=2))

    gen = torch.Generator().manual_seed(seed)
    store = getattr(torch, dtype)
    tensors = {name: _random_tensor(name, shape, gen).to(store).contiguous()
               for name, shape in sorted(_weight_shapes(config, tie_word_embeddings).items())}
    meta = {"format": "pt"}
    if not sharded:
        save_file(tensors, str(out / "model.safetensors"), metadata=meta)
    else:
        names = sorted(tensors)
        halves = [names[: len(names) // 2], names[len(names) // 2:]]
        weight_map = {}
        for i, part in enumerate(halves, start=1):
            fname = f"model-{i:05d}-of-{len(halves):05d}.safetensors"
            save_file({n: tensors[n] for n in part}, str(out / fname), metadata=meta)
            weight_map.update({n: fname for n in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out
