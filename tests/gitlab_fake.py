"""A fake GitLab: the few REST v4 endpoints authscope's release links and
deployments use, served on 127.0.0.1 from a thread, with GitLab's status codes
and error bodies.

Shapes follow GitLab's lib/api/releases.rb, lib/api/release/links.rb and
lib/api/deployments.rb:

- no or wrong token: 401 ``{"message":"401 Unauthorized"}``;
- an unknown project: 404 ``{"message":"404 Project Not Found"}``;
- GET a release that doesn't exist: 404 ``{"message":"404 Not Found"}``
  (``not_found!``); the links endpoints of a missing release: 404
  ``{"message":"404 Not found"}`` (``find_by_tag!``, rescued RecordNotFound);
- POST a release that exists: 409 ``{"message":"Release already exists"}``;
  for a tag that doesn't exist and no ``ref``: 422 ``{"message":"Ref is not specified"}``;
- a link whose name or URL is taken in the release: 400 with
  ``{"message":["Name has already been taken"]}`` (current GitLab, full
  messages) or ``{"message":{"name":["has already been taken"]}}`` (older
  GitLab, ``error_style="legacy"``);
- PUT a link without ``link_type``: it is reset to ``other`` (Grape's default);
- a missing required parameter: 400 ``{"error":"name is missing"}``;
- a deployment for a ref that doesn't exist: 400
  ``{"message":{"ref":["The branch or tag does not exist"]}}``;
- ``forbid``: these operations answer 403 ``{"message":"403 Forbidden"}``;
  with ``echo_token``, the message quotes the token the request carried (as
  a careless proxy or a debug build might), raw and URL-encoded, after a
  preamble long enough that it straddles a 300-character cut.

Lists are paginated like GitLab (page, per_page default 20, X-* headers and a
Link header), so a client that forgets to follow pages sees only 20 links.
Every request is recorded (method, path with query, headers, JSON body).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

JOB_TOKEN = "glcbt-fake-job-token-0003"  # obviously fake test secrets
PRIVATE_TOKEN = "glpat-fake-private-token-0004"
TIME = "2026-01-02T03:04:05.000Z"
# Operations that ``forbid`` can name; "*" means every write.
WRITES = ("create_release", "create_link", "update_link", "delete_link", "create_deployment")


@dataclass
class Request:
    method: str
    path: str  # as sent, with the query
    headers: dict[str, str]
    body: Any

    @property
    def route(self) -> str:
        return urlsplit(self.path).path


class Reply(Exception):
    """Ends a request with a status and a JSON body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class FakeGitLab:
    token: str = JOB_TOKEN
    token_kind: str = "job"  # "job": JOB-TOKEN header; "private": PRIVATE-TOKEN header
    project_id: int = 42
    project_path: str = "group/app"
    tags: set[str] = field(default_factory=lambda: {"1.0"})
    branches: set[str] = field(default_factory=lambda: {"main"})
    forbid: set[str] = field(default_factory=set)
    error_style: str = "modern"  # "modern" | "legacy" validation errors
    before: Callable[[str, FakeGitLab], None] | None = None  # called with the operation, under the lock
    echo_token: bool = False  # a 403 quotes the token it was sent

    releases: dict[str, dict[str, Any]] = field(default_factory=dict)  # tag -> release (links inside)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    environments: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _ids: int = 0
    _presented: str = ""  # the token the request being handled carried
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> FakeGitLab:
        fake = self

        class Handler(_Handler):
            gitlab = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gitlab", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FakeGitLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    @property
    def web_url(self) -> str:
        return f"{self.url}/{self.project_path}"

    # -- state helpers for tests -------------------------------------------------------

    def add_release(self, tag: str, name: str | None = None, links: tuple[tuple[str, str, str], ...] = ()) -> None:
        """A release made before the run (by hand, or by an earlier job)."""
        self.tags.add(tag)
        release = self._new_release(tag, name or tag, "")
        for link_name, url, link_type in links:
            release["links"].append(self._new_link(tag, link_name, url, link_type))
        self.releases[tag] = release

    def links(self, tag: str) -> list[dict[str, Any]]:
        return list(self.releases[tag]["links"]) if tag in self.releases else []

    def calls(self, method: str | None = None, contains: str = "") -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method) and contains in r.route]

    # -- routing -------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(Request(method, raw_path, headers, body))
            self._presented = headers.get("job-token") or headers.get("private-token") or ""
            try:
                return 200, *self._route(method, raw_path, headers, body)
            except Reply as reply:
                return reply.status, reply.body, reply.headers

    def _route(self, method: str, raw_path: str, headers: dict[str, str], body: Any) -> tuple[Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._authenticate(headers)
        m = re.fullmatch(r"/api/v4/projects/([^/]+)(/.*)?", parts.path)
        if not m:
            raise Reply(404, {"error": "404 Not Found"})
        if unquote(m.group(1)) not in (str(self.project_id), self.project_path):
            raise Reply(404, {"message": "404 Project Not Found"})
        rest = m.group(2) or ""
        # A tag is one path segment: GitLab wants a "/" in it URL-encoded (%2F).
        routes: list[tuple[str, str, Callable[..., tuple[Any, dict[str, str]]]]] = [
            ("GET", r"", self._get_project),
            ("GET", r"/releases/([^/]+)", self._get_release),
            ("POST", r"/releases", self._create_release),
            ("GET", r"/releases/([^/]+)/assets/links", self._list_links),
            ("POST", r"/releases/([^/]+)/assets/links", self._create_link),
            ("GET", r"/releases/([^/]+)/assets/links/(\d+)", self._get_link),
            ("PUT", r"/releases/([^/]+)/assets/links/(\d+)", self._update_link),
            ("DELETE", r"/releases/([^/]+)/assets/links/(\d+)", self._delete_link),
            ("POST", r"/deployments", self._create_deployment),
        ]
        for verb, pattern, handler in routes:
            found = re.fullmatch(pattern, rest)
            if found and verb == method:
                args = [unquote(g) for g in found.groups()]
                return handler(*args, query=query, body=body if isinstance(body, dict) else {})
        raise Reply(404, {"error": "404 Not Found"})

    def _authenticate(self, headers: dict[str, str]) -> None:
        header = "JOB-TOKEN" if self.token_kind == "job" else "PRIVATE-TOKEN"
        if headers.get(header.lower()) != self.token:
            raise Reply(401, {"message": "401 Unauthorized"})

    def _check(self, operation: str) -> None:
        if self.before is not None:
            self.before(operation, self)
        if operation in self.forbid or ("*" in self.forbid and operation in WRITES):
            if self.echo_token:
                token = self._presented
                # After a long preamble, as an error page would: a client that
                # shortens the message before masking it keeps a piece of the token.
                preamble = "request rejected by policy; " * 9 + "see the proxy log."
                raise Reply(403, {"message": f"403 Forbidden: {preamble}token {token} (url {quote(token, safe='')})"})
            raise Reply(403, {"message": "403 Forbidden"})

    def _release(self, tag: str) -> dict[str, Any]:
        if tag not in self.releases:
            raise Reply(404, {"message": "404 Not found"})  # find_by_tag! -> RecordNotFound
        return self.releases[tag]

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _invalid(self, field_name: str, message: str) -> Reply:
        if self.error_style == "legacy":
            return Reply(400, {"message": {field_name: [message]}})
        return Reply(400, {"message": [f"{field_name.capitalize()} {message}"]})

    # -- projects and releases -----------------------------------------------------------

    def _get_project(self, **_: Any) -> tuple[Any, dict[str, str]]:
        return {"id": self.project_id, "path_with_namespace": self.project_path, "web_url": self.web_url}, {}

    def _new_release(self, tag: str, name: str, description: str) -> dict[str, Any]:
        return {
            "tag_name": tag,
            "name": name,
            "description": description,
            "created_at": TIME,
            "released_at": TIME,
            "upcoming_release": False,
            "author": {"id": 1, "username": "release-bot"},
            "commit": {"id": "0" * 40},
            "links": [],
        }

    def _present_release(self, release: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in release.items() if k != "links"}
        out["assets"] = {"count": len(release["links"]), "sources": [], "links": self._sorted(release["links"])}
        out["_links"] = {"self": f"{self.web_url}/-/releases/{release['tag_name']}"}
        return out

    def _get_release(self, tag: str, **_: Any) -> tuple[Any, dict[str, str]]:
        self._check("read_release")
        if tag not in self.releases:
            raise Reply(404, {"message": "404 Not Found"})  # not_found!
        return self._present_release(self.releases[tag]), {}

    def _create_release(self, body: dict[str, Any], **_: Any) -> tuple[Any, dict[str, str]]:
        self._check("create_release")
        tag = body.get("tag_name")
        if not tag:
            raise Reply(400, {"error": "tag_name is missing"})
        if tag in self.releases:
            raise Reply(409, {"message": "Release already exists"})
        if tag not in self.tags:
            if not body.get("ref"):
                raise Reply(422, {"message": "Ref is not specified"})
            self.tags.add(tag)
        release = self._new_release(tag, body.get("name") or tag, body.get("description") or "")
        self.releases[tag] = release
        raise Reply(201, self._present_release(release))

    # -- release links -------------------------------------------------------------------

    def _new_link(self, tag: str, name: str, url: str, link_type: str) -> dict[str, Any]:
        link_id = self._next_id()
        return {
            "id": link_id,
            "name": name,
            "url": url,
            "direct_asset_url": url,
            "link_type": link_type,
        }

    @staticmethod
    def _sorted(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(links, key=lambda link: -link["id"])  # release.links.sorted: newest first

    def _list_links(self, tag: str, query: dict[str, str], **_: Any) -> tuple[Any, dict[str, str]]:
        self._check("read_release")
        links = self._sorted(self._release(tag)["links"])
        return self._paginate(links, query, f"/api/v4/projects/{self.project_id}/releases/{tag}/assets/links")

    def _paginate(self, items: list[Any], query: dict[str, str], path: str) -> tuple[Any, dict[str, str]]:
        per_page = max(1, min(100, int(query.get("per_page", 20))))
        page = max(1, int(query.get("page", 1)))
        pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(len(items)),
            "X-Total-Pages": str(pages),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        }
        rels = [("first", 1), ("last", pages)]
        if page < pages:
            rels.insert(0, ("next", page + 1))
        if page > 1:
            rels.insert(0, ("prev", page - 1))
        headers["Link"] = ", ".join(
            f'<{self.url}{path}?{urlencode({**query, "page": n, "per_page": per_page})}>; rel="{rel}"'
            for rel, n in rels
        )
        return chunk, headers

    def _validate_link(self, release: dict[str, Any], body: dict[str, Any], link_id: int | None) -> None:
        link_type = body.get("link_type", "other")
        if link_type not in ("other", "runbook", "image", "package"):
            raise Reply(400, {"error": "link_type does not have a valid value"})
        if "url" in body and not re.match(r"(https?|ftp)://[^/\s]+", str(body["url"])):
            raise self._invalid("url", "is blocked: Only allowed schemes are http, https, ftp")
        for key in ("name", "url"):
            if key in body and any(other[key] == body[key] and other["id"] != link_id for other in release["links"]):
                raise self._invalid(key, "has already been taken")

    def _create_link(self, tag: str, body: dict[str, Any], **_: Any) -> tuple[Any, dict[str, str]]:
        release = self._release(tag)
        for key in ("name", "url"):
            if not body.get(key):
                raise Reply(400, {"error": f"{key} is missing"})
        self._check("create_link")
        self._validate_link(release, body, None)
        link = self._new_link(tag, body["name"], body["url"], body.get("link_type", "other"))
        release["links"].append(link)
        raise Reply(201, link)

    def _find_link(self, tag: str, link_id: str) -> dict[str, Any]:
        links: list[dict[str, Any]] = self._release(tag)["links"]
        for link in links:
            if link["id"] == int(link_id):
                return link  # the stored one: an update changes it in place
        raise Reply(404, {"message": "404 Not found"})

    def _get_link(self, tag: str, link_id: str, **_: Any) -> tuple[Any, dict[str, str]]:
        self._check("read_release")
        return self._find_link(tag, link_id), {}

    def _update_link(self, tag: str, link_id: str, body: dict[str, Any], **_: Any) -> tuple[Any, dict[str, str]]:
        link = self._find_link(tag, link_id)
        if not (body.get("name") or body.get("url")):
            raise Reply(400, {"error": "name, url are missing, at least one parameter must be provided"})
        self._check("update_link")
        self._validate_link(self._release(tag), body, link["id"])
        for key in ("name", "url"):
            if key in body:
                link[key] = body[key]
        link["direct_asset_url"] = link["url"]
        link["link_type"] = body.get("link_type", "other")  # Grape: default 'other', even on update
        return link, {}

    def _delete_link(self, tag: str, link_id: str, **_: Any) -> tuple[Any, dict[str, str]]:
        link = self._find_link(tag, link_id)
        self._check("delete_link")
        self._release(tag)["links"].remove(link)
        return link, {}

    # -- deployments ---------------------------------------------------------------------

    def _create_deployment(self, body: dict[str, Any], **_: Any) -> tuple[Any, dict[str, str]]:
        for key in ("environment", "sha", "ref", "tag", "status"):
            if body.get(key) is None or body.get(key) == "":
                raise Reply(400, {"error": f"{key} is missing"})
        if not isinstance(body["tag"], bool):
            raise Reply(400, {"error": "tag is invalid"})
        if body["status"] not in ("running", "success", "failed", "canceled"):
            raise Reply(400, {"error": "status does not have a valid value"})
        self._check("create_deployment")
        if body["ref"] not in self.tags | self.branches:
            raise Reply(400, {"message": {"ref": ["The branch or tag does not exist"]}})
        env_id = self.environments.setdefault(body["environment"], len(self.environments) + 1)
        deployment = {
            "id": self._next_id(),
            "iid": len(self.deployments) + 1,
            "ref": body["ref"],
            "sha": body["sha"],
            "tag": body["tag"],
            "status": body["status"],
            "created_at": TIME,
            "updated_at": TIME,
            "user": {"id": 1, "username": "release-bot"},
            "environment": {"id": env_id, "name": body["environment"], "external_url": None},
            "deployable": None,
        }
        self.deployments.append(deployment)
        raise Reply(201, deployment)


class _Handler(BaseHTTPRequestHandler):
    gitlab: FakeGitLab
    protocol_version = "HTTP/1.1"  # keep-alive, as GitLab's front end does
    disable_nagle_algorithm = True  # headers and body go out apart: no 40 ms delayed-ACK stall

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.gitlab.handle(self.command, self.path, headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve
