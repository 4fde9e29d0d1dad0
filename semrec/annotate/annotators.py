"""Annotators: what turns annotation prompts into texts, chosen by name in the config.

- ``hf_local``: a local Hugging Face instruct model (default: the embedded SmolLM2-135M);
- ``openai_compatible``: any ``/chat/completions`` HTTP endpoint (OpenAI, vLLM, llama.cpp);
- ``jsonl``: finished annotations from a user-supplied file (no prompts are answered).

An :class:`Annotator` answers prompts with ``complete``; ``cache_key`` describes everything
that changes its answers, so cached outputs are reused only for the same settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from semrec.annotate.errors import AnnotationError
from semrec.registry import Registry

log = logging.getLogger(__name__)

ANNOTATORS: Registry[Any] = Registry("annotator")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
UNKNOWN_KEYS_SHOWN = 5


@runtime_checkable
class Annotator(Protocol):
    """Answers prompts; ``cache_key`` identifies the settings that shape the answers."""

    def complete(self, prompts: list[str]) -> list[str]: ...

    def cache_key(self) -> dict: ...


@runtime_checkable
class FileAnnotator(Protocol):
    """Provides finished annotations instead of answering prompts."""

    def lookup(self, kind: str, keys: Collection[str]) -> dict[str, str]: ...


@ANNOTATORS.register("hf_local")
class LocalModelAnnotator:
    """Greedy generation with a local causal LM, batched with left padding.

    ``model`` is a :func:`~semrec.models.backbone.load_backbone` source (``"embedded"``, a
    hub id, a directory or a ``.gguf`` file); it is loaded on the first ``complete`` call, so
    a fully cached run never loads it. ``backbone=(model, tokenizer)`` uses an already loaded
    pair (``model`` then only names it in the cache key). Prompts are wrapped in the
    tokenizer's chat template when it has one.
    """

    def __init__(
        self,
        model: str = "embedded",
        *,
        max_new_tokens: int = 96,
        system_prompt: str | None = None,
        backbone: tuple[Any, Any] | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise AnnotationError(f"hf_local: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self._backbone = backbone

    def cache_key(self) -> dict:
        return {
            "annotator": "hf_local",
            "model": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "system_prompt": self.system_prompt,
            "decoding": "greedy",
        }

    def _loaded(self) -> tuple[Any, Any]:
        if self._backbone is None:
            from semrec.models.backbone import load_backbone

            log.info("annotator hf_local: loading %s", self.model_name)
            self._backbone = load_backbone(self.model_name)
        return self._backbone

    def _chat_text(self, tokenizer: Any, prompt: str) -> str:
        if not getattr(tokenizer, "chat_template", None):
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def complete(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        import torch
        from transformers import GenerationConfig

        model, tokenizer = self._loaded()
        uses_chat = bool(getattr(tokenizer, "chat_template", None))
        texts = [self._chat_text(tokenizer, prompt) for prompt in prompts]
        padding_side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # generated tokens then start at the same column
        try:
            batch = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not uses_chat
            )
        finally:
            tokenizer.padding_side = padding_side
        batch.pop("token_type_ids", None)
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                output = model.generate(**batch.to(device), generation_config=config)
        finally:
            model.train(was_training)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [
            text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]


@ANNOTATORS.register("openai_compatible")
class OpenAICompatibleAnnotator:
    """One ``POST {base_url}/chat/completions`` per prompt, through the standard library.

    The API key is read from the environment variable ``api_key_env`` when the first prompt
    is sent (``api_key_env=None`` sends no key, for local servers). Connection errors and
    HTTP 408/409/429/5xx are retried ``max_retries`` times with exponential backoff starting
    at ``retry_wait`` seconds; other HTTP errors fail at once.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_tokens: int = 256,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        retry_wait: float = 1.0,
    ) -> None:
        if max_retries < 0:
            raise AnnotationError(f"openai_compatible: max_retries must be >= 0, got {max_retries}")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system_prompt = system_prompt
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_wait = retry_wait

    def cache_key(self) -> dict:
        return {
            "annotator": "openai_compatible",
            "url": self.url,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "system_prompt": self.system_prompt,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is None:
            return headers
        key = os.environ.get(self.api_key_env)
        if not key:
            raise AnnotationError(
                f"openai_compatible: the environment variable {self.api_key_env} holding the API "
                f"key for {self.url} is not set (or set `api_key_env: null` for a server "
                "without authentication)"
            )
        headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompts: list[str]) -> list[str]:
        headers = self._headers() if prompts else {}
        return [self._complete_one(prompt, headers) for prompt in prompts]

    def _complete_one(self, prompt: str, headers: dict[str, str]) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        response = self._post(json.dumps(body).encode(), headers)
        try:
            content = response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise AnnotationError(
                f"POST {self.url}: response has no choices[0].message.content string: "
                f"{json.dumps(response)[:300]}"
            )
        return content.strip()

    def _post(self, data: bytes, headers: dict[str, str]) -> Any:
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:300]
                if err.code not in RETRYABLE_STATUS or attempt == self.max_retries:
                    raise AnnotationError(
                        f"POST {self.url} failed with HTTP {err.code} {err.reason}: {detail}"
                    ) from None
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.max_retries:
                    raise AnnotationError(
                        f"POST {self.url} failed after {attempt + 1} attempt(s): {err}"
                    ) from None
                reason = str(err)
            wait = self.retry_wait * 2**attempt
            log.warning("POST %s: %s; retrying in %.1f s", self.url, reason, wait)
            time.sleep(wait)
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise AnnotationError(
                f"POST {self.url}: response is not JSON: {payload[:300]!r}"
            ) from None


@ANNOTATORS.register("jsonl")
class JsonlAnnotator:
    """Finished annotations from a file of lines ``{"kind": ..., "key": ..., "text": ...}``.

    Keys follow ``TaskContext.annotations``: ``"<user id>:<item id>"`` for intentions,
    ``"<user id>"`` for preferences, the SID token (``"<a_12>"``) for ``token_semantics``.
    Blank lines are ignored.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise AnnotationError(f"annotation file {self.path} does not exist")

    def cache_key(self) -> dict:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        return {"annotator": "jsonl", "path": str(self.path), "sha256": digest}

    def complete(self, prompts: list[str]) -> list[str]:
        raise AnnotationError(
            f"the jsonl annotator reads finished annotations from {self.path}; it cannot answer "
            "prompts (use lookup)"
        )

    def lookup(self, kind: str, keys: Collection[str]) -> dict[str, str]:
        """Every ``kind`` annotation in the file; all its keys must be among ``keys``."""
        table: dict[str, str] = {}
        lines: dict[str, int] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise AnnotationError(f"{self.path}: not UTF-8 text ({err})") from None
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            record = self._parse(line, number)
            if record["kind"] != kind:
                continue
            key = record["key"]
            if key in table:
                raise AnnotationError(
                    f"{self.path}:{number}: duplicate {kind} key {key!r} "
                    f"(first on line {lines[key]})"
                )
            table[key] = record["text"]
            lines[key] = number
        known = keys if isinstance(keys, set | frozenset | dict) else set(keys)
        unknown = [key for key in table if key not in known]
        if unknown:
            shown = ", ".join(repr(key) for key in unknown[:UNKNOWN_KEYS_SHOWN])
            more = (
                f" and {len(unknown) - UNKNOWN_KEYS_SHOWN} more"
                if len(unknown) > UNKNOWN_KEYS_SHOWN
                else ""
            )
            raise AnnotationError(
                f"{self.path}: {len(unknown)} {kind} key(s) are not in the dataset: {shown}{more} "
                f"(first on line {lines[unknown[0]]}); was the file made for another dataset?"
            )
        return table

    def _parse(self, line: str, number: int) -> dict[str, str]:
        where = f"{self.path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for field in ("kind", "key", "text"):
            if not isinstance(record.get(field), str):
                raise AnnotationError(f"{where}: field {field!r} must be a string")
        return record
