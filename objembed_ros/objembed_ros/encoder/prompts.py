"""ObjEmbed prompt strings and token layouts (spec sections 4 and 6).

The user text is wrapped with the checkpoint tokenizer's own chat template (no generation
prompt, surrounding whitespace stripped, as the official inference does); the single
``<|image_pad|>`` is then expanded to H'*W' pad tokens at the id level (the processor's
string expansion tokenises to the same ids because the pad is a special token).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

OBJECT_TOKEN = "<object>"
LOCAL_TEXT_TOKEN = "<local_text>"
GLOBAL_TOKEN = "<global>"
GLOBAL_TEXT_TOKEN = "<global_text>"
OBJEMBED_TOKENS = (OBJECT_TOKEN, LOCAL_TEXT_TOKEN, GLOBAL_TOKEN, GLOBAL_TEXT_TOKEN)
IMAGE_PAD_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"

LOCATE_PREFIX = (
    "Locate the specific object being described by analyzing its unique instance-level "
    "attributes, its spatial position, and its relationship with surrounding objects. "
)
IMAGE_QUERY_TEXT = "The coarse global image is <global>. The detailed global image is <global>. "
OBJECT_QUERY_TEMPLATE = "Find an object that matches the given caption. {} <local_text>"
IMAGE_TEXT_QUERY_TEMPLATE = "Find an image that matches the given caption. {} <global_text>"


def objects_string(num_boxes: int, use_two_tokens: int) -> str:
    """The object part of the image prompt for one of the three token layouts."""
    objs = "".join(f"Object {j}: <object><object>. " for j in range(num_boxes))
    if use_two_tokens == 2:
        return ("The coarse global image is <global>. " + objs
                + " The detailed global image is <global>. ")
    if use_two_tokens == 1:
        return "The global image is <global>. " + objs + "The global image is <global>"
    if use_two_tokens == 0:
        return objs + "The global image is <global>"
    raise ValueError(f"use_two_tokens must be 0, 1 or 2, got {use_two_tokens}")


def image_user_text(num_boxes: int, use_two_tokens: int) -> str:
    """The full user text that follows the image in the image pass."""
    return LOCATE_PREFIX + objects_string(num_boxes, use_two_tokens)


def query_text(text: str, target: str) -> str:
    """User text of a text pass: ``target`` is "object" (<local_text>) or "image"."""
    if target == "object":
        return OBJECT_QUERY_TEMPLATE.format(text)
    if target == "image":
        return IMAGE_TEXT_QUERY_TEMPLATE.format(text)
    raise ValueError(f"target must be 'object' or 'image', got {target!r}")


def render_chat(tokenizer: Any, user_text: str, with_image: bool) -> str:
    """One user message (optionally image first) through the tokenizer's chat template."""
    content: list[dict[str, str]] = []
    if with_image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": user_text})
    messages = [{"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=False)
    return rendered.strip()


@dataclass(frozen=True)
class TokenIds:
    """Ids of the tokens the encoder reads or fills, looked up by string."""

    object: int
    local_text: int
    global_: int
    global_text: int
    image_pad: int
    vision_start: int


def special_token_ids(tokenizer: Any) -> TokenIds:
    """Look the ids up by string; a missing token raises KeyError naming it."""
    ids = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for tok in (*OBJEMBED_TOKENS, IMAGE_PAD_TOKEN, VISION_START_TOKEN):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or (unk is not None and tid == unk):
            raise KeyError(tok)
        ids[tok] = int(tid)
    return TokenIds(object=ids[OBJECT_TOKEN], local_text=ids[LOCAL_TEXT_TOKEN],
                    global_=ids[GLOBAL_TOKEN], global_text=ids[GLOBAL_TEXT_TOKEN],
                    image_pad=ids[IMAGE_PAD_TOKEN], vision_start=ids[VISION_START_TOKEN])


# Every tokenizer call goes through tokenize(), one at a time: a fast (Rust) tokenizer
# raises "Already borrowed" when one thread sets its truncation/padding while another
# encodes, and service threads, the frame worker and (on CUDA) text passes all tokenize.
_TOKENIZER_LOCK = threading.Lock()


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Ids of a string (no extra special tokens added); thread-safe."""
    with _TOKENIZER_LOCK:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def expand_image_pad(ids: list[int], image_pad_id: int, count: int) -> list[int]:
    """Replace the single image pad by ``count`` pads (one per merged visual token)."""
    where = [i for i, t in enumerate(ids) if t == image_pad_id]
    if len(where) != 1:
        raise ValueError(f"expected exactly one image pad token in the prompt, found {len(where)}")
    i = where[0]
    return ids[:i] + [image_pad_id] * count + ids[i + 1:]
