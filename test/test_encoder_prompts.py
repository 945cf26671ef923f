"""Prompt strings (spec sections 4 and 6), checked literally, and their tokenisation."""
from __future__ import annotations

from pathlib import Path

from objembed_ros.encoder import prompts

LOCATE = ("Locate the specific object being described by analyzing its unique instance-level "
          "attributes, its spatial position, and its relationship with surrounding objects. ")


def test_object_strings_all_layouts() -> None:
    objs = "Object 0: <object><object>. Object 1: <object><object>. "
    assert prompts.objects_string(2, 2) == (  # two spaces after the last object's period
        "The coarse global image is <global>. " + objs
        + " The detailed global image is <global>. ")
    assert prompts.objects_string(2, 1) == (
        "The global image is <global>. " + objs + "The global image is <global>")
    assert prompts.objects_string(2, 0) == objs + "The global image is <global>"
    assert prompts.objects_string(0, 2) == (
        "The coarse global image is <global>.  The detailed global image is <global>. ")
    assert prompts.image_user_text(1, 0) == (
        LOCATE + "Object 0: <object><object>. The global image is <global>")
    assert prompts.IMAGE_QUERY_TEXT == (
        "The coarse global image is <global>. The detailed global image is <global>. ")


def test_query_strings() -> None:
    assert prompts.query_text("a red cup", "object") == (
        "Find an object that matches the given caption. a red cup <local_text>")
    assert prompts.query_text("a red cup", "image") == (
        "Find an image that matches the given caption. a red cup <global_text>")


def test_rendered_image_prompt_and_ids(tiny_objembed_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_objembed_dir), local_files_only=True)
    text = prompts.render_chat(tok, prompts.image_user_text(1, 2), with_image=True)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + LOCATE
        + "The coarse global image is <global>. Object 0: <object><object>.  The detailed "
        "global image is <global>. <|im_end|>")
    ids = prompts.tokenize(tok, text)
    tid = prompts.special_token_ids(tok)
    assert ids.count(tid.object) == 2 and ids.count(tid.global_) == 2
    expanded = prompts.expand_image_pad(ids, tid.image_pad, 12)
    assert expanded.count(tid.image_pad) == 12 and len(expanded) == len(ids) + 11
    # the processor's way (expand the string) gives the same ids
    by_string = tok(text.replace("<|image_pad|>", "<|image_pad|>" * 12),
                    add_special_tokens=False)["input_ids"]
    assert expanded == by_string
    query = prompts.render_chat(tok, prompts.query_text("a cat", "object"), with_image=False)
    assert query == ("<|im_start|>user\nFind an object that matches the given caption. "
                     "a cat <local_text><|im_end|>")
