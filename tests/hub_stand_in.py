"""A local stand-in for the Hugging Face hub's HTTP endpoint (HF_ENDPOINT), serving model folders
on 127.0.0.1: the routes huggingface_hub's snapshot_download calls, with the headers it reads.

  GET  /api/models/{repo}/revision/{rev}       repo info: {"id", "sha", "siblings"}
  GET  /api/models/{repo}/tree/{rev}?...        the file list: [{"type", "path", "size", "oid"}]
  HEAD /{repo}/resolve/{rev}/{path}             X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{rev}/{path}             the file's bytes

Unknown repositories answer 404 with X-Error-Code RepoNotFound, unknown revisions RevisionNotFound
(as the hub does); every request's path and Authorization header is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class Repo:
    """One repository: its revisions (branch or tag name -> folder), each given a commit id."""

    revisions: dict[str, Path]
    commits: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, folder in self.revisions.items():
            self.commits[name] = hashlib.sha1(f"{name}:{folder}".encode()).hexdigest()

    def folder(self, revision: str) -> tuple[str, Path] | None:
        """(commit, folder) of a branch, tag or commit id."""
        for name, commit in self.commits.items():
            if revision in (name, commit):
                return commit, self.revisions[name]
        return None


class HubStandIn:
    """Serves repos on a free port of 127.0.0.1 until stop(); endpoint is HF_ENDPOINT's value."""

    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def downloaded(self) -> list[str]:
        """The file paths fetched with GET .../resolve/..."""
        return [
            m["path"]
            for verb, path, _ in self.requests
            if verb == "GET" and (m := _RESOLVE.match(path))
        ]


def _oid(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Authorization")))
        if match := _API.match(path):
            self._api(match["repo"], match["kind"], match["rev"])
        elif match := _RESOLVE.match(path):
            self._file(match["repo"], match["rev"], match["path"])
        else:
            self._error(404, "EntryNotFound")

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, Path] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        found = repo.folder(revision)
        if found is None:
            self._error(404, "RevisionNotFound")
        return found

    def _api(self, repo_id: str, kind: str, revision: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        commit, folder = found
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        names = [str(p.relative_to(folder)) for p in files]
        if kind == "revision":
            body = {
                "id": repo_id,
                "sha": commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in names],
            }
        else:
            body = [
                {"type": "file", "path": name, "size": p.stat().st_size, "oid": _oid(p)}
                for name, p in zip(names, files, strict=True)
            ]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _file(self, repo_id: str, revision: str, name: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        commit, folder = found
        path = folder / name
        if not path.is_file():
            self._error(404, "EntryNotFound")
            return
        data = path.read_bytes()
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{_oid(path)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, data, headers)

    def _error(self, status: int, code: str) -> None:
        self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
