"""A small in-memory Hugging Face Hub on 127.0.0.1, speaking the endpoints huggingface_hub 0.36.2 calls.

Push: POST /api/repos/create, /api/models/{repo}/branch/{branch}, /api/validate-yaml,
/api/models/{repo}/preupload/{rev}, /api/models/{repo}/commit/{rev} (NDJSON, base64 file contents).
Load: GET /api/models/{repo}[/revision/{rev}] (model info), HEAD/GET /{repo}/resolve/{rev}/{path}.

Preupload answers "regular" for every file, so every file travels base64 inside the commit payload and no
LFS or Xet upload is ever attempted. Errors carry the X-Error-Code / X-Error-Message headers huggingface_hub
reads to pick its exception class. Every request is recorded, so tests can check what was (not) committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

INITIAL_FILES = {".gitattributes": b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"}  # as the real Hub starts a repo


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> the tree at that commit
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit sha

    def commit(self, branch: str, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(json.dumps([branch, len(self.commits), sorted(files)]).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[branch] = sha
        return sha

    def tree(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        sha = self.refs.get(revision, revision)
        return (sha, self.commits[sha]) if sha in self.commits else None


@dataclass
class Request:
    method: str
    path: str
    endpoint: str
    authorized: bool


class FakeHub:
    """The server state: repos, the valid token, failures to inject, and the log of requests."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.fail: dict = {}  # endpoint name ("create", "commit", "resolve", ...) -> status or (status, error code)
        self.echo_authorization = False  # a misbehaving server that quotes the Authorization header in its errors
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The committed files at `revision` ({} when the repo or revision does not exist)."""
        repo = self.repos.get(repo_id)
        found = repo.tree(revision) if repo else None
        return dict(found[1]) if found else {}

    def called(self, endpoint: str) -> list[Request]:
        return [r for r in self.requests if r.endpoint == endpoint]


def _split(path: str) -> tuple[str, list[str]]:
    """(endpoint name, its arguments) for a request path; repo ids are "org/name"."""
    parts = [unquote(p) for p in urlsplit(path).path.strip("/").split("/")]
    if parts[:2] == ["api", "repos"] and parts[2:] == ["create"]:
        return "create", []
    if parts[:2] == ["api", "validate-yaml"]:
        return "validate-yaml", []
    if parts[:2] == ["api", "models"] and len(parts) >= 4:
        repo_id, rest = "/".join(parts[2:4]), parts[4:]
        if not rest:
            return "info", [repo_id, "main"]
        if rest[0] in ("revision", "preupload", "commit", "branch") and len(rest) == 2:
            return {"revision": "info"}.get(rest[0], rest[0]), [repo_id, rest[1]]
    if len(parts) >= 5 and parts[2] == "resolve":
        return "resolve", ["/".join(parts[:2]), parts[3], "/".join(parts[4:])]
    return "unknown", []


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        # ------------------------------------------------------------------ plumbing
        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data, headers: dict | None = None):
            self._send(status, json.dumps(data).encode(), headers)

        def _error(self, status: int, code: str | None = None, message: str = "error", headers: dict | None = None):
            headers = dict(headers or {})
            if code:
                headers["X-Error-Code"] = code
            if hub.echo_authorization:
                message += f" (you sent: {self.headers.get('Authorization')})"
            headers["X-Error-Message"] = message
            self._json(status, {"error": message}, headers)

        def _repo(self, repo_id: str, *, write: bool) -> Repo | None:
            """The repo, or None after answering as the Hub does (401 for a bad token, 404 for a missing repo)."""
            if write and not self._authorized():
                self._error(401, None, "Invalid credentials in Authorization header")
                return None
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                self._error(404 if self._authorized() else 401, "RepoNotFound", "Repository not found")
                return None
            return repo

        def _dispatch(self):
            endpoint, args = _split(self.path)
            hub.requests.append(Request(self.command, self.path, endpoint, self._authorized()))
            body = self._body() if self.command == "POST" else b""
            if endpoint in hub.fail:  # a status, or (status, X-Error-Code)
                status, code = hub.fail[endpoint] if isinstance(hub.fail[endpoint], tuple) else (hub.fail[endpoint], None)
                return self._error(status, code, "Internal Error - injected by the test")
            handler = getattr(self, f"_{self.command.lower()}_{endpoint.replace('-', '_')}", None)
            if handler is None:
                return self._error(404, None, f"{self.command} {endpoint} is not implemented by the fake Hub")
            with hub.lock:
                handler(*args, body=body)

        do_GET = do_HEAD = do_POST = _dispatch

        # ------------------------------------------------------------------ push
        def _post_create(self, body):
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else f"user/{data['name']}"
            if repo_id in hub.repos:
                return self._error(409, None, "You already created this model repo")
            repo = Repo(private=bool(data.get("private")))
            repo.commit("main", INITIAL_FILES)
            hub.repos[repo_id] = repo
            self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _post_branch(self, repo_id, branch, body):
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            if branch in repo.refs:
                return self._error(409, None, "Reference already exists")
            repo.refs[branch] = repo.refs["main"]
            self._json(200, {})

        def _post_validate_yaml(self, body):
            content = json.loads(body)["content"]
            try:
                metadata = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []})
            if not isinstance(metadata, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
            self._json(200, {"errors": [], "warnings": []})

        def _post_preupload(self, repo_id, revision, body):
            if self._repo(repo_id, write=True) is None:
                return
            files = json.loads(body)["files"]
            self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

        def _post_commit(self, repo_id, revision, body):
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            if revision not in repo.refs:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = dict(repo.commits[repo.refs[revision]])
            for line in lines:
                if line["key"] == "header":  # commit message and description
                    continue
                if line["key"] != "file":
                    return self._error(400, None, f"the fake Hub only takes regular files, got {line['key']}")
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            sha = repo.commit(revision, files)  # all lines applied at once, as the Hub does
            self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}"})

        # ------------------------------------------------------------------ load
        def _readable_tree(self, repo_id, revision):
            """(repo, commit sha, files) of a revision; None after answering with the error."""
            repo = self._repo(repo_id, write=False)
            if repo is None:
                return None
            found = repo.tree(revision)
            if found is None:
                self._error(404, "RevisionNotFound", "Invalid rev id")
                return None
            return (repo, *found)

        def _get_info(self, repo_id, revision, body):
            tree = self._readable_tree(repo_id, revision)
            if tree is None:
                return
            repo, sha, files = tree
            self._json(200, {"id": repo_id, "sha": sha, "private": repo.private,
                             "siblings": [{"rfilename": name} for name in sorted(files)]})

        def _head_resolve(self, repo_id, revision, path, body):
            tree = self._readable_tree(repo_id, revision)
            if tree is None:
                return
            _, sha, files = tree
            if path not in files:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
            content = files[path]
            etag = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # git's blob id, as the Hub
            self._send(200, content, {"X-Repo-Commit": sha, "ETag": f'"{etag}"'}, "application/octet-stream")

        _get_resolve = _head_resolve

    return Handler
