"""A small registry client: check credentials (``login --verify``) and read
manifest digests (fan-out verification), over the distribution API.

Follows the spec's challenges: ``Basic`` is answered directly; ``Bearer
realm=...,service=...`` fetches a token from the realm with Basic auth and
retries with it. Only the standard library is used, so nothing heavy is
imported unless these paths run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

from .dockerconfig import api_host, is_loopback
from .errors import RegistryError

TIMEOUT = 30.0
_PARAM = re.compile(r'(\w+)="([^"]*)"')
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    )
)


class RegistryHTTPError(RegistryError):
    """Raised when a registry answers with an unexpected status; keeps it."""

    def __init__(self, registry: str, status: int, where: str, detail: str = "") -> None:
        self.status = status
        self.where = where
        super().__init__(registry, f"HTTP {status} from {where}" + (f": {detail}" if detail else ""))

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500


class RegistryUnreachable(RegistryError):
    """Raised when no scheme reached the registry (connection, TLS, DNS)."""

    transient = True


def parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ...}) from a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def _header(headers: Dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


class Session:
    """One registry, one identity: follows challenges and caches the token."""

    def __init__(
        self,
        registry: str,
        auth: Optional[Tuple[str, str]] = None,
        *,
        ca_file: Optional[str] = None,
        insecure: bool = False,
        timeout: float = TIMEOUT,
    ) -> None:
        self.registry = registry
        self.host = api_host(registry)  # Docker Hub's API is not at docker.io
        self.timeout = timeout
        self.auth = auth
        self.ctx = ssl.create_default_context(cafile=ca_file)
        if insecure:
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        # HTTPS first; plain HTTP only for --insecure or a loopback registry,
        # as the docker CLI does for registries it treats as insecure.
        self.schemes: List[str] = ["https", "http"] if insecure or is_loopback(self.host) else ["https"]
        self.authorization: Optional[str] = None

    def _basic(self) -> Optional[str]:
        if self.auth is None:
            return None
        user, password = self.auth
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _send(self, method: str, url: str, headers: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
        request = urllib.request.Request(url, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.ctx) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def request(
        self, method: str, path: str, headers: Optional[Dict[str, str]] = None, scope: str = ""
    ) -> Tuple[int, Dict[str, str], bytes]:
        """``method`` on ``path``, answering an auth challenge once."""
        last = ""
        for scheme in list(self.schemes):
            url = f"{scheme}://{self.host}{path}"
            try:
                result = self._request(method, url, dict(headers or {}), scope)
            except urllib.error.URLError as exc:
                last = f"{scheme}: {exc.reason}"
                continue
            except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
                last = f"{scheme}: {exc}"
                continue
            self.schemes = [scheme]  # stick to what worked
            return result
        raise RegistryUnreachable(self.registry, f"cannot reach {path} ({last})")

    def _request(self, method: str, url: str, headers: Dict[str, str], scope: str) -> Tuple[int, Dict[str, str], bytes]:
        if self.authorization:
            headers["Authorization"] = self.authorization
        status, answer, body = self._send(method, url, headers)
        if status != 401:
            return status, answer, body
        challenge, params = parse_challenge(_header(answer, "WWW-Authenticate"))
        if challenge == "basic" and self.auth is not None:
            self.authorization = self._basic()
        elif challenge == "bearer" and params.get("realm"):
            self.authorization = "Bearer " + self._token(params, scope)
        else:
            return status, answer, body
        headers["Authorization"] = self.authorization or ""
        return self._send(method, url, headers)

    def _token(self, params: Dict[str, str], scope: str) -> str:
        query = {"service": params["service"]} if params.get("service") else {}
        if scope or params.get("scope"):
            query["scope"] = scope or params["scope"]
        url = params["realm"] + ("?" + urllib.parse.urlencode(query) if query else "")
        basic = self._basic()
        status, _, body = self._send("GET", url, {"Authorization": basic} if basic else {})
        if status != 200:
            raise RegistryHTTPError(self.registry, status, params["realm"], "the token service refused")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise RegistryError(self.registry, f"the token service {params['realm']} gave no token")
        return str(token)

    def manifest_digest(self, repository: str, reference: str) -> str:
        """The digest of ``repository:reference`` (a tag or a digest)."""
        path = f"/v2/{repository}/manifests/{reference}"
        scope = f"repository:{repository}:pull"
        accept = {"Accept": MANIFEST_TYPES}
        status, headers, _ = self.request("HEAD", path, accept, scope)
        digest = _header(headers, "Docker-Content-Digest")
        if status == 200 and digest:
            return digest
        if status == 200 or status == 405:  # no digest header / no HEAD: hash the body
            status, headers, body = self.request("GET", path, accept, scope)
            if status == 200:
                return "sha256:" + hashlib.sha256(body).hexdigest()
        raise RegistryHTTPError(self.registry, status, f"{self.registry}/{repository}:{reference}", _explain(status))


def _explain(status: int) -> str:
    return {
        401: "the credentials were rejected",
        403: "the credentials have no pull permission on this repository",
        404: "no such manifest",
    }.get(status, "")


def verify(
    registry: str, username: str, password: str, *, ca_file: Optional[str] = None, insecure: bool = False
) -> None:
    """Raise RegistryError unless ``registry`` accepts the credentials at /v2/."""
    session = Session(registry, (username, password), ca_file=ca_file, insecure=insecure)
    try:
        status, _, _ = session.request("GET", "/v2/")
    except RegistryHTTPError as exc:  # the token service refused
        status = exc.status
    if status == 200:
        return
    if status in (401, 403):
        raise RegistryError(
            registry,
            f"the registry rejected the credentials of user {username!r} (HTTP {status}); "
            "check the username and the password variable or file",
        )
    raise RegistryHTTPError(registry, status, f"{registry}/v2/")
