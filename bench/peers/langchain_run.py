"""LangChain's ConstitutionalChain on run_all's workload: the initial answer, then critique and
revision per principle (5 calls a sample), ``batch`` with ``max_concurrency``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import args, question, report, workload  # noqa: E402
from langchain.chains import LLMChain  # noqa: E402
from langchain.chains.constitutional_ai.base import ConstitutionalChain  # noqa: E402
from langchain.chains.constitutional_ai.models import ConstitutionalPrinciple  # noqa: E402
from langchain_core.prompts import PromptTemplate  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402


def main() -> None:
    a = args()
    w = workload(a.workload)
    llm = ChatOpenAI(
        model="stub", base_url=a.base_url, api_key="x", max_tokens=w["max_tokens"], temperature=0, max_retries=0
    )
    principles = [
        ConstitutionalPrinciple(name=f"p{i}", critique_request=p["critique"], revision_request=p["revision"])
        for i, p in enumerate(w["principles"])
    ]
    answer = LLMChain(llm=llm, prompt=PromptTemplate.from_template("{question}"))
    chain = ConstitutionalChain.from_llm(llm=llm, chain=answer, constitutional_principles=principles)
    inputs = [{"question": question(conv)} for conv in w["prompts"]]

    def run() -> int:
        return len(chain.batch(inputs, config={"max_concurrency": w["concurrency"]}))

    report("LangChain ConstitutionalChain batch", run)


if __name__ == "__main__":
    main()
