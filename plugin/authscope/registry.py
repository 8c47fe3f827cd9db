"""Check credentials against a registry's /v2/ endpoint (``login --verify``).

Follows the distribution spec's challenges: ``Basic`` is answered directly;
``Bearer realm=...,service=...`` fetches a token from the realm with Basic
auth and retries with it. Only the standard library is used, so nothing heavy
is imported unless --verify is given.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, Optional, Tuple

from .errors import RegistryError

TIMEOUT = 30.0
_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ...}) from a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "[::1]") or name.startswith("127.")


def _context(ca_file: Optional[str], insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _get(url: str, headers: Dict[str, str], ctx: ssl.SSLContext) -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=ctx) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def verify(
    registry: str, username: str, password: str, *, ca_file: Optional[str] = None, insecure: bool = False
) -> None:
    """Raise RegistryError unless ``registry`` accepts the credentials.

    HTTPS first; plain HTTP only for --insecure or a loopback registry, as
    the docker CLI does for registries it treats as insecure.
    """
    ctx = _context(ca_file, insecure)
    schemes = ["https", "http"] if insecure or _is_loopback(registry) else ["https"]
    last_error = ""
    for scheme in schemes:
        try:
            return _verify_at(f"{scheme}://{registry}/v2/", registry, username, password, ctx)
        except urllib.error.URLError as exc:
            last_error = f"{scheme}: {exc.reason}"
        except (ConnectionError, TimeoutError) as exc:
            last_error = f"{scheme}: {exc}"
    raise RegistryError(registry, f"cannot reach /v2/ ({last_error})")


def _verify_at(url: str, registry: str, username: str, password: str, ctx: ssl.SSLContext) -> None:
    basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    status, headers, _ = _get(url, {}, ctx)
    if status == 200:
        return  # anonymous access: nothing to check the credentials against
    if status != 401:
        raise RegistryError(registry, f"/v2/ answered HTTP {status}, expected 401 or 200")
    scheme, params = parse_challenge(_header(headers, "WWW-Authenticate"))
    if scheme == "basic":
        status, _, _ = _get(url, {"Authorization": basic}, ctx)
        _judge(registry, username, status, url)
        return
    if scheme == "bearer" and params.get("realm"):
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        token_url = params["realm"] + ("?" + urllib.parse.urlencode(query) if query else "")
        status, _, body = _get(token_url, {"Authorization": basic}, ctx)
        _judge(registry, username, status, params["realm"])
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise RegistryError(registry, f"the token service {params['realm']} gave no token")
        status, _, _ = _get(url, {"Authorization": f"Bearer {token}"}, ctx)
        _judge(registry, username, status, url)
        return
    raise RegistryError(registry, f"unsupported authentication challenge {scheme!r}")


def _header(headers: Dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _judge(registry: str, username: str, status: int, where: str) -> None:
    if status == 200:
        return
    if status in (401, 403):
        raise RegistryError(
            registry,
            f"the registry rejected the credentials of user {username!r} (HTTP {status} from {where}); "
            "check the username and the password variable or file",
        )
    raise RegistryError(registry, f"HTTP {status} from {where}")
