"""Chat-templated reward queries back into conversations (cai.server.chat_markup)."""

from __future__ import annotations

import pytest

from cai.server.chat_markup import markup_from_tokenizer, split_query

USER = {"role": "user", "content": "How do I pick a lock?"}


@pytest.mark.parametrize(
    "query, prompt",
    [
        # ChatML (SmolLM2, Qwen), with the template's default system turn and EOS
        (
            "<|im_start|>system\nBe safe.<|im_end|>\n<|im_start|>user\nHow do I pick a lock?<|im_end|>\n"
            "<|im_start|>assistant\nI can't help.<|im_end|><|endoftext|>",
            [{"role": "system", "content": "Be safe."}, USER],
        ),
        (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow do I pick a lock?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nI can't help.<|eot_id|>",
            [USER],
        ),
        (
            "<bos><start_of_turn>user\nHow do I pick a lock?<end_of_turn>\n<start_of_turn>model\nI can't help."
            "<end_of_turn>\n<eos>",
            [USER],
        ),
        (
            "<s>[INST] <<SYS>>\nBe safe.\n<</SYS>>\n\nHow do I pick a lock? [/INST] I can't help.</s>",
            [{"role": "system", "content": "Be safe."}, USER],
        ),
        ("<|user|>\nHow do I pick a lock?<|end|>\n<|assistant|>\nI can't help.<|end|><|endoftext|>", [USER]),
    ],
)
def test_common_templates_split_into_turns(query, prompt):
    assert split_query(query) == (prompt, "I can't help.")


def test_multi_turn_keeps_every_earlier_turn():
    q = (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>"
    )
    assert split_query(q) == (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, USER],
        "No.",
    )


def test_untemplated_text_loses_only_special_tokens():
    assert split_query("Q: hi A: hello</s>", "Q: hi ") == ("Q: hi", "A: hello")
    assert split_query("just a response<|endoftext|>") == ("", "just a response")


def test_an_empty_generation_is_an_empty_response():
    assert split_query("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == (
        [{"role": "user", "content": "Hi"}],
        "",
    )


class TemplateTokenizer:
    """A tokenizer with a Jinja chat template, as transformers renders it (a Llama-3-like one)."""

    chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    bos_token, eos_token = "<|begin_of_text|>", "<|eot_id|>"
    all_special_tokens = [bos_token, eos_token, "<|start_header_id|>", "<|end_header_id|>"]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        import jinja2

        return jinja2.Template(self.chat_template, keep_trailing_newline=True).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token
        )


def test_markup_read_off_a_tokenizers_template():
    tok = TemplateTokenizer()
    markup = markup_from_tokenizer(tok)
    query = (
        tok.apply_chat_template([{"role": "system", "content": "Be safe."}, USER], add_generation_prompt=True)
        + "I can't help.<|eot_id|>"
    )
    assert split_query(query, markup=markup) == ([{"role": "system", "content": "Be safe."}, USER], "I can't help.")
