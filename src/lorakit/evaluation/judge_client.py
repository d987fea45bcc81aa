"""The judge model behind `lorakit eval --judge SOURCE`: an OpenAI-compatible server or a model loaded by lorakit.

SOURCE starting with http:// or https:// is the base URL of an OpenAI-compatible server (lorakit serve, Ollama,
llama.cpp's server, vLLM): each grading conversation is one POST {base}/chat/completions at temperature 0. Any
other SOURCE is a model lorakit loads itself (a local folder, a Hub id, a .gguf file or the embedded model,
model/load.py) and answers greedily in batches with its own chat template.

Both are opened before the evaluation generates anything, so an unreachable server or a missing model stops it
at once. An API key comes only from the environment variable the user names; it is sent in the Authorization
header and appears in no log, error or file.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lorakit.data.records import Message
from lorakit.errors import JudgeError

__all__ = ["JudgeSpec", "Judge", "OpenAIJudge", "LocalJudge", "open_judge", "TIMED_OUT"]

TIMED_OUT = None
"""What `Judge.replies` gives for a request that got no reply within the timeout."""
_START_SERVER = ("Start the judge's server first (lorakit serve RUN, ollama serve, llama-server or vllm serve) and "
                 "check the URL: it is the base before /chat/completions, e.g. http://127.0.0.1:11434/v1 for Ollama.")


@dataclass(frozen=True)
class JudgeSpec:
    """What the user asked for: SOURCE, the model name a server should use (None: the one it lists), the name of
    the environment variable holding an API key, the seconds one request may take, and the tokens a reply may
    have (a verdict with a one-sentence reason needs well under 200)."""

    source: str
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_reply_tokens: int = 200

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


class Judge(Protocol):
    name: str  # how errors and eval.json name the judge
    attempts: int  # how many times one answer is put to the judge before its missing verdict stops the eval
    batch_size: int  # conversations per `replies` call

    def replies(self, conversations: Sequence[tuple[Message, ...]]) -> list[str | None]:
        """One reply per conversation, or TIMED_OUT; raises JudgeError when the judge cannot be asked at all."""


class OpenAIJudge:
    """POST {base}/chat/completions, a few answers at a time (Ollama, vLLM and lorakit serve queue concurrent
    requests, so a 600-answer eval need not wait for each in turn); asked twice, since a server may time out once."""

    attempts = 2
    batch_size = 4

    def __init__(self, spec: JudgeSpec):
        if urllib.parse.urlsplit(spec.source).password is not None:  # the URL is saved in eval.json
            raise JudgeError("--judge: the URL carries a password, which would be saved in eval.json.",
                             hint="Put the key in an environment variable and name it with --judge-api-key-env.")
        self.base_url = spec.source.rstrip("/")
        self.timeout_s, self.max_reply_tokens = spec.timeout_s, spec.max_reply_tokens
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.api_key_env is not None:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise JudgeError(f"--judge-api-key-env names {spec.api_key_env}, which is not set or empty.",
                                 hint=f"export {spec.api_key_env}=<the server's API key>, or leave the option out.")
            self._headers["Authorization"] = f"Bearer {key}"
        self.model = spec.model or self._only_model()
        self.name = f"{self.base_url} (model {self.model})"

    def _request(self, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self._headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace")
            hint = ("Set --judge-api-key-env to the variable holding the server's key." if exc.code in (401, 403)
                    else "Check --judge and --judge-model against the server's /models list.")
            raise JudgeError(f"judge {self.base_url}: {url} answered HTTP {exc.code}: {detail}", hint=hint) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise TimeoutError from None
            raise JudgeError(f"judge {self.base_url}: cannot connect to {url} ({exc.reason}).",
                             hint=_START_SERVER) from None
        except (ConnectionError, http.client.HTTPException) as exc:  # the server closed the connection mid-request
            raise JudgeError(f"judge {self.base_url}: {url} dropped the connection ({exc!r}).",
                             hint="Check the judge server's log; it may have crashed or run out of memory.") from None
        except json.JSONDecodeError:
            raise JudgeError(f"judge {self.base_url}: {url} did not answer with JSON; is it an OpenAI-compatible "
                             "server?", hint=_START_SERVER) from None

    def _only_model(self) -> str:
        try:
            listed = self._request("/models")
        except TimeoutError:
            raise JudgeError(f"judge {self.base_url}: no answer from {self.base_url}/models within "
                             f"{self.timeout_s:g} s.", hint=_START_SERVER) from None
        ids = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if len(ids) != 1:
            raise JudgeError(f"judge {self.base_url} lists {len(ids)} models ({', '.join(map(str, ids)) or 'none'}); "
                             "which one should judge?", hint="Name it with --judge-model.")
        return str(ids[0])

    def _reply(self, messages: tuple[Message, ...]) -> str | None:
        body = {"model": self.model, "messages": [{"role": m.role, "content": m.content} for m in messages],
                "temperature": 0, "max_tokens": self.max_reply_tokens, "stream": False}
        try:
            completion = self._request("/chat/completions", body)
        except TimeoutError:
            return TIMED_OUT
        try:
            content = completion["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return json.dumps(completion)[:300]  # not a completion: shown as the judge's (unreadable) reply
        return content if isinstance(content, str) else ""

    def replies(self, conversations: Sequence[tuple[Message, ...]]) -> list[str | None]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            return list(pool.map(self._reply, conversations))


class LocalJudge:
    """A model loaded through lorakit's own loading (safetensors only, no remote code unless allowed), answering
    greedily; asked once, since a greedy model asked again repeats its reply word for word."""

    attempts = 1
    batch_size = 8

    def __init__(self, spec: JudgeSpec, trust_remote_code: bool = False, allow_pickle: bool = False):
        from lorakit.config import ModelConfig
        from lorakit.model.load import load_base_model, load_tokenizer, resolve_model_source
        from lorakit.runtime.device import compute_dtype, pick_device

        config = ModelConfig(name=spec.source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        source = resolve_model_source(config)
        self.device = pick_device()
        self.tokenizer = load_tokenizer(source, config)
        self.model = load_base_model(source, config, self.device, compute_dtype("auto", self.device)).eval()
        self.name = source.model_id
        self.max_reply_tokens = spec.max_reply_tokens

    def replies(self, conversations: Sequence[tuple[Message, ...]]) -> list[str | None]:
        import torch

        from lorakit.data.render import render_prompt_ids
        from lorakit.inference.decode import GenerationSettings, decode_batch
        from lorakit.inference.generate import end_of_turn_ids

        settings = GenerationSettings(max_new_tokens=self.max_reply_tokens, temperature=0.0, repetition_penalty=1.0)
        # The system turn is part of each conversation, so no run system prompt is added.
        prompts = [render_prompt_ids(tuple(c), self.tokenizer, "") for c in conversations]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        texts: list[str] = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                decoded = decode_batch(self.model, prompts[start:start + self.batch_size], settings,
                                       stop_ids=end_of_turn_ids(self.model, self.tokenizer), pad_id=pad,
                                       device=self.device)
                texts += [self.tokenizer.decode(list(d.token_ids), skip_special_tokens=True).strip() for d in decoded]
        return texts


def open_judge(spec: JudgeSpec, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Judge:
    """Connect to (or load) the judge now; JudgeError or ModelLoadError says why it cannot judge."""
    if spec.is_url:
        return OpenAIJudge(spec)
    return LocalJudge(spec, trust_remote_code, allow_pickle)
