"""A small typed wrapper over the Docker SDK's low-level client, and the mapping of its errors to
the one-line messages the docker CLI prints."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import requests.exceptions
import typer

from shoal import API_VERSION
from shoal.api.tls import TLSOptions

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"


class CLIError(Exception):
    """An error to print as one line on stderr and exit with ``code``, never a traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class TLSSettings(TLSOptions):
    """The docker CLI's client TLS flags (the daemon's names, api/tls.py) and their environment
    ($DOCKER_TLS_VERIFY, $DOCKER_CERT_PATH)."""

    @classmethod
    def resolve(cls, tls: bool, verify: bool, cacert: str | None, cert: str | None, key: str | None) -> TLSSettings:
        verify = verify or bool(os.environ.get("DOCKER_TLS_VERIFY"))
        cert_path = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
        if tls or verify:  # the docker CLI's defaults: ~/.docker/{ca,cert,key}.pem
            cacert = cacert or _existing(cert_path / "ca.pem")
            cert = cert or _existing(cert_path / "cert.pem")
            key = key or _existing(cert_path / "key.pem")
        return cls(tls=tls, verify=verify, cacert=cacert, cert=cert, key=key)

    def config(self) -> docker.tls.TLSConfig:
        for flag, path in (("--tlscacert", self.cacert), ("--tlscert", self.cert), ("--tlskey", self.key)):
            if path and not Path(path).is_file():
                raise CLIError(f"{flag} {path}: no such file", 2)
        client_cert = (self.cert, self.key) if self.cert and self.key else None
        try:
            return docker.tls.TLSConfig(client_cert=client_cert, ca_cert=self.cacert if self.verify else None,
                                        verify=self.verify and (self.cacert or True))
        except docker.errors.TLSParameterError as e:
            raise CLIError(f"invalid TLS settings: {e}", 2) from None


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def resolve_host(flag: str | None) -> str:
    """-H/--host, then $SHOAL_HOST, then $DOCKER_HOST, then Shoal's own socket."""
    return flag or os.environ.get("SHOAL_HOST") or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def describe_error(exc: BaseException, host: str) -> CLIError | None:
    """The one-line error for a failure talking to the daemon, or None if ``exc`` is not one."""
    if isinstance(exc, docker.errors.APIError):
        msg = exc.explanation or (exc.response.reason if exc.response is not None else str(exc))
        if isinstance(msg, bytes):
            msg = msg.decode(errors="replace")
        return CLIError(f"Error response from daemon: {str(msg).strip()}")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionRefusedError | FileNotFoundError):
        return CLIError(f"Cannot connect to the Shoal daemon at {host}. Is the daemon running?")
    if isinstance(exc, requests.exceptions.Timeout):
        return CLIError(f"Timed out waiting for the Shoal daemon at {host}.")
    if isinstance(exc, docker.errors.DockerException):
        return CLIError(f"Error: {exc}")
    return None


class Client:
    """The Shoal (Docker-compatible) API over the SDK's session: JSON in, JSON out.

    The SDK's typed helpers (create_service ...) rebuild specs through their own classes and drop what
    they don't know; posting the spec as JSON keeps it exactly as the CLI built it."""

    def __init__(self, host: str, timeout: int = 60, tls: TLSSettings | None = None, token: str = "") -> None:
        self.host = host
        self._api: docker.APIClient | None = None
        self._timeout = timeout
        self._tls = tls
        self._token = token

    @property
    def tls(self) -> TLSSettings | None:
        return self._tls

    @property
    def token(self) -> str:
        return self._token

    @property
    def api(self) -> docker.APIClient:
        # Built on first use: `shoal daemon` and `--help` never need a client.
        if self._api is None:
            try:
                tls = self._tls.config() if self._tls is not None and self._tls.enabled else False
                self._api = docker.APIClient(base_url=self.host, version=API_VERSION, timeout=self._timeout, tls=tls)
            except docker.errors.DockerException as e:
                raise CLIError(f"invalid host {self.host!r}: {e}", 2) from None
            if self._tls is not None and self._tls.verify and self._tls.cacert:
                # requests lets $REQUESTS_CA_BUNDLE (set system-wide on Debian images) override the
                # session's CA, and the daemon's CA is never in that bundle: the CA given here wins.
                self._api.trust_env = False
            if self._token:
                self._api.headers["Authorization"] = f"Bearer {self._token}"
        return self._api

    def url(self, path: str, *args: str) -> str:
        return str(self.api._url(path, *args))

    @staticmethod
    def _params(params: dict[str, Any] | None) -> dict[str, Any] | None:
        if not params:
            return params
        out: dict[str, Any] = {}
        for k, v in params.items():
            if v is None:
                continue
            if isinstance(v, bool):
                out[k] = "true" if v else "false"
            elif isinstance(v, dict):
                out[k] = json.dumps(v)
            else:
                out[k] = v
        return out

    def get(self, path: str, *args: str, params: dict[str, Any] | None = None) -> Any:
        resp = self.api._get(self.url(path, *args), params=self._params(params))
        return self.api._result(resp, json=True)

    def post(
        self, path: str, *args: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        url = self.url(path, *args)
        if body is None:
            resp = self.api._post(url, params=self._params(params))
        else:
            resp = self.api._post(
                url,
                params=self._params(params),
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
        self.api._raise_for_status(resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def delete(self, path: str, *args: str, params: dict[str, Any] | None = None) -> Any:
        """DELETE; the JSON body if the daemon sent one (Shoal's stack removal reports warnings)."""
        resp = self.api._delete(self.url(path, *args), params=self._params(params))
        self.api._raise_for_status(resp)
        return resp.json() if resp.content else None

    def stream_frames(self, path: str, *args: str, params: dict[str, Any] | None = None) -> Iterator[bytes]:
        """A log stream's stdcopy frames (one log line each), demultiplexed by the SDK."""
        resp = self.api._get(self.url(path, *args), params=self._params(params), stream=True, timeout=None)
        self.api._raise_for_status(resp)
        return self.api._multiplexed_response_stream_helper(resp)  # type: ignore[no-any-return]

    # --- shortcuts used by several commands

    def info(self) -> dict[str, Any]:
        return self.get("/info")  # type: ignore[no-any-return]

    def self_node_id(self) -> str:
        node_id = self.info().get("Swarm", {}).get("NodeID", "")
        if not node_id:
            raise CLIError(
                "Error response from daemon: This node is not a swarm manager. Use \"shoal swarm init\" "
                "to connect this node to swarm and try again."
            )
        return str(node_id)

    def node_names(self) -> dict[str, str]:
        """Node ID -> hostname, to show nodes as people name them."""
        return {n["ID"]: n.get("Description", {}).get("Hostname", "") or n["ID"] for n in self.get("/nodes")}


def client_of(ctx: typer.Context) -> Client:
    """The Client the root command made for this invocation (``-H`` / SHOAL_HOST / DOCKER_HOST)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Client)
    return obj


def delete_each(
    c: Client,
    path: str,
    refs: list[str],
    params: dict[str, Any] | None = None,
    done: Callable[[str, Any], None] | None = None,
) -> None:
    """``rm`` for several objects, as the docker CLI does it: print each one removed (or hand it and
    the daemon's answer to ``done``), report each failure on its own line, and exit 1 at the end if
    any failed."""
    failed = False
    for ref in refs:
        try:
            body = c.delete(path, ref, params=params)
            if done is not None:
                done(ref, body)
            else:
                print(ref)
        except Exception as e:
            err = describe_error(e, c.host)
            if err is None:
                raise
            print(err.message, file=sys.stderr)
            failed = True
    if failed:
        raise typer.Exit(1)
