"""The optional LLM provider (off by default): an OpenAI-compatible chat-completions endpoint
that may propose SQL for a question outside the semantic layer. Its SQL passes the same guard
as compiled SQL and its answers are marked uncertified (docs/ask.md)."""

from __future__ import annotations

import re

import httpx

from control_room.semantic.model import Layer

__all__ = ["LlmError", "LlmProvider"]


class LlmError(RuntimeError):
    """The provider did not answer with SQL (the message never holds the API key)."""


_SQL_BLOCK = re.compile(r"```(?:sql)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class LlmProvider:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 timeout: float = 20.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def prompt(self, layer: Layer) -> str:
        tables = "\n".join(f"- {layer.schema}.{name}({', '.join(t.columns)}): {t.description}"
                           for name, t in layer.tables.items())
        return ("You write one PostgreSQL SELECT over these tables only, nothing else "
                f"(no DDL, no DML, no other schema):\n{tables}\nAnswer with the SQL in a "
                "```sql block.")

    def propose_sql(self, question: str, layer: Layer) -> str:
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "system", "content": self.prompt(layer)},
                             {"role": "user", "content": question}]}
        try:
            response = self._http.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise LlmError(f"the LLM provider is unreachable ({type(exc).__name__})") from None
        if not response.is_success:
            raise LlmError(f"the LLM provider answered HTTP {response.status_code}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LlmError("the LLM provider's answer is not a chat completion") from None
        if not isinstance(content, str) or not content.strip():
            raise LlmError("the LLM provider answered no SQL")
        match = _SQL_BLOCK.search(content)
        return (match.group(1) if match else content).strip().rstrip(";")
