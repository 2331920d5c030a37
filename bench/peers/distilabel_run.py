"""distilabel on run_all's workload: a pipeline of TextGeneration steps (the answer, then a
critique and a revision per principle: 5 calls a sample) over an OpenAI-compatible LLM."""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import args, question, report, workload  # noqa: E402
from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps import LoadDataFromDicts  # noqa: E402
from distilabel.steps.tasks import TextGeneration  # noqa: E402

try:
    from distilabel.models import OpenAILLM
except ImportError:  # distilabel < 1.5
    from distilabel.llms import OpenAILLM  # type: ignore[no-redef]


def main() -> None:
    a = args()
    w = workload(a.workload)
    data = [{"instruction": question(conv)} for conv in w["prompts"]]

    def llm() -> OpenAILLM:
        kwargs = {"max_new_tokens": w["max_tokens"], "temperature": 0.0}
        return OpenAILLM(model="stub", base_url=a.base_url, api_key="x", max_retries=0, generation_kwargs=kwargs)

    def step(name: str, template: str, columns: list[str], output: str) -> TextGeneration:
        return TextGeneration(
            name=name,
            llm=llm(),
            template=template,
            columns=columns,
            input_batch_size=a.batch_size,
            output_mappings={"generation": output},
        )

    with tempfile.TemporaryDirectory(prefix="distilabel-peer-") as cache:
        with Pipeline(name="cai-peer", cache_dir=cache) as pipeline:
            last = LoadDataFromDicts(data=data, batch_size=a.batch_size)
            node = step("answer", "{{ instruction }}", ["instruction"], "answer_0")
            last = last >> node
            for i, p in enumerate(w["principles"], 1):
                prev = f"answer_{i - 1}"
                talk = f"{{{{ instruction }}}}\n\nAssistant: {{{{ {prev} }}}}\n\n"
                critique = step(f"critique_{i}", talk + p["critique"], ["instruction", prev], f"critique_{i}")
                revise_text = talk + f"Critique: {{{{ critique_{i} }}}}\n\n" + p["revision"]
                revision = step(f"revision_{i}", revise_text, ["instruction", prev, f"critique_{i}"], f"answer_{i}")
                last = last >> critique >> revision

        def run() -> int:
            distiset = pipeline.run(use_cache=False)
            return sum(len(split) for ds in distiset.values() for split in ds.values())

        report(f"distilabel 1.5 pipeline (input_batch_size {a.batch_size})", run)


if __name__ == "__main__":
    main()
