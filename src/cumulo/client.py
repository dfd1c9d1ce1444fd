"""A small synchronous client of cumulo's HTTP API, used by the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import httpx
import orjson

from cumulo.errors import CumuloError


class ClientError(CumuloError):
    """A failed call, with the server's own message."""


class Client:
    def __init__(self, url: str, key: str | None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _not_cumulo(self) -> ClientError:
        return ClientError(f"{self.url} did not answer like cumulo; check --url")

    def _check(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            err = resp.json()["error"]
            message = err["message"] if isinstance(err, dict) else str(err)
        except (ValueError, KeyError, TypeError) as exc:  # not an error from cumulo
            raise ClientError(
                f"{resp.status_code} {resp.reason_phrase}: {self._not_cumulo().message}"
            ) from exc
        raise ClientError(f"{resp.status_code}: {message or resp.reason_phrase}")

    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach cumulo at {self.url}: {exc}") from exc
        self._check(resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise self._not_cumulo() from exc

    def stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        """Yield the text pieces of a streamed chat completion."""
        try:
            with self._http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise self._not_cumulo()
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError as exc:
                        raise self._not_cumulo() from exc
                    if chunk.get("error"):
                        raise ClientError(chunk["error"].get("message") or "stream failed")
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield text
                raise ClientError("the stream ended before the reply was complete")
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach cumulo at {self.url}: {exc}") from exc

    def upload(self, path: str, local: BinaryIO, filename: str, data: dict[str, str]) -> Any:
        """POST a multipart form with `local` as its `file` part, streamed from disk."""
        try:
            resp = self._http.post(path, files={"file": (filename, local)}, data=data)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach cumulo at {self.url}: {exc}") from exc
        self._check(resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise self._not_cumulo() from exc

    def download(
        self,
        path: str,
        out: BinaryIO,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        """GET `path` into `out` as it arrives; the number of bytes written. `headers`, when
        given, receives the response's headers."""
        written = 0
        try:
            with self._http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                if headers is not None:
                    headers.update(resp.headers)
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach cumulo at {self.url}: {exc}") from exc
        return written
