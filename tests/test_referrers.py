"""referrers.py against a real registry (tests/support), the fallback index
merge, the referrers: key and --[no-]referrers, the plan and the policy hint.

Artifacts are written here with plain HTTP requests (this file's own small
pusher, not authscope's client), shaped as cosign and oras write them: a
signature manifest under `sha256-<hex>.sig`, an OCI artifact with a
`subject` listed in the fallback tag index `sha256-<hex>` (the distribution
registry 2.8 has no referrers API).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authscope import cli, plan, referrers, release, tools
from authscope import fanout as F
from authscope.errors import TargetsFileError
from authscope.registry import Session
from authscope.targets import load
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RegistryFactory, require_tools
from tests.support import Registry, SourceImage, isolated_env, publish_image

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SPDX = "application/spdx+json"

# The real registries of tests/e2e (the fixtures live in its conftest).
registry_factory = e2e.registry_factory
ca = e2e.ca


# -- a small pusher: blobs and manifests over the distribution API -------------------------


def _send(registry: Registry, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    conn = http.client.HTTPConnection(registry.host, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Basic {token}", **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        return resp
    finally:
        conn.close()


def push_blob(registry: Registry, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = _send(registry, "POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started.status
    location = started.getheader("Location")
    location = location.split(registry.host, 1)[-1]
    sep = "&" if "?" in location else "?"
    done = _send(registry, "PUT", f"{location}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"})
    assert done.status == 201, done.status
    return {"mediaType": "application/octet-stream", "digest": digest, "size": len(data)}


def push_manifest(registry: Registry, repo: str, ref: str, doc: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(doc).encode()
    resp = _send(registry, "PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": doc["mediaType"]})
    assert resp.status == 201, resp.status
    return {"mediaType": doc["mediaType"], "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}


def artifact(
    registry: Registry, repo: str, payload: bytes, *, subject: dict[str, Any] | None, artifact_type: str | None
) -> dict[str, Any]:
    """A manifest as cosign (no subject, a tag) or oras attach (a subject) writes one."""
    config = push_blob(registry, repo, b"{}")
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    layer = push_blob(registry, repo, payload)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]}
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject:
        doc["subject"] = subject
    return {**doc, "_descriptor": None}


def put(registry: Registry, repo: str, ref: str, doc: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in doc.items() if k != "_descriptor"}
    descriptor = push_manifest(registry, repo, ref, doc)
    if doc.get("artifactType"):
        descriptor["artifactType"] = doc["artifactType"]
    return descriptor


def fallback(registry: Registry, repo: str, subject: str, entries: list[dict[str, Any]]) -> None:
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}
    push_manifest(registry, repo, referrers.fallback_tag(subject), index)


def tag_of(digest: str, suffix: str) -> str:
    return f"{referrers.fallback_tag(digest)}.{suffix}"


@pytest.fixture
def source(registry_factory: RegistryFactory, tmp_path: Path) -> SourceImage:
    require_tools("skopeo")
    return publish_image(registry_factory("src"), tmp_path / "src", isolated_env(tmp_path / "env"))


def session(registry: Registry) -> Session:
    return Session(registry.host, registry.credentials, insecure=True)


def sign(registry: Registry, repo: str, subject: str, payload: bytes = b"sig") -> str:
    """A cosign-style signature of ``subject``: its digest."""
    doc = artifact(registry, repo, payload, subject=None, artifact_type=None)
    return str(put(registry, repo, tag_of(subject, "sig"), doc)["digest"])


# -- discovery -------------------------------------------------------------------------------


def test_discover_finds_cosign_tags_oci_referrers_and_signatures_of_them(source: SourceImage) -> None:
    reg, repo, root = source.registry, source.repository, source.digest
    sig = sign(reg, repo, root)
    att = put(reg, repo, tag_of(root, "att"), artifact(reg, repo, b"att", subject=None, artifact_type=None))["digest"]
    subject = {"mediaType": MANIFEST, "digest": root, "size": 1}
    sbom = put(reg, repo, "sbom-by-digest", artifact(reg, repo, b"spdx", subject=subject, artifact_type=SPDX))
    fallback(reg, repo, root, [sbom])
    sbom_sig = sign(reg, repo, sbom["digest"], b"sig of the sbom")  # recursive: a signature of the SBOM
    # Control: a signature of some other digest in the same repository is not the source's.
    other = "sha256:" + "ab" * 32
    sign(reg, repo, other, b"unrelated")

    with session(reg) as s:
        found = referrers.discover(s, repo, root)
    by_digest = {a.digest: a for a in found}
    assert set(by_digest) == {sig, att, sbom["digest"], sbom_sig}
    assert by_digest[sig].kind == "cosign signature" and by_digest[sig].tag == tag_of(root, "sig")
    assert by_digest[att].kind == "cosign attestation"
    assert by_digest[sbom["digest"]].kind == SPDX and by_digest[sbom["digest"]].tag is None
    assert by_digest[sbom_sig].subject == sbom["digest"] and by_digest[sbom_sig].tag == tag_of(sbom["digest"], "sig")
    assert json.loads(by_digest[sbom["digest"]].entry)["digest"] == sbom["digest"]


def test_discover_finds_signatures_of_each_platform_manifest(source: SourceImage) -> None:
    reg, repo = source.registry, source.repository
    platform = source.digest
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "digest": platform, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}
        ],
    }
    root = push_manifest(reg, repo, "multi", index)["digest"]
    on_platform = sign(reg, repo, platform)
    with session(reg) as s:
        found = referrers.discover(s, repo, root)
    assert [(a.digest, a.subject) for a in found] == [(on_platform, platform)]


def test_an_unsigned_source_has_nothing_to_carry(source: SourceImage) -> None:
    with session(source.registry) as s:
        assert referrers.discover(s, source.repository, source.digest) == ()


def test_discover_is_bounded(source: SourceImage) -> None:
    from authscope.registry import RegistryAnswerError

    reg, repo, root = source.registry, source.repository, source.digest
    subject = {"mediaType": MANIFEST, "digest": root, "size": 1}
    entries = [
        put(reg, repo, f"a{i}", artifact(reg, repo, b"x%d" % i, subject=subject, artifact_type=SPDX)) for i in range(3)
    ]
    fallback(reg, repo, root, entries)
    with session(reg) as s, pytest.raises(RegistryAnswerError, match="more than 2"):
        referrers.discover(s, repo, root, limit=2)


# -- the fallback tag index at a target --------------------------------------------------------


def entry(digest_byte: str, artifact_type: str = SPDX) -> str:
    return json.dumps(
        {"mediaType": MANIFEST, "digest": "sha256:" + digest_byte * 64, "size": 3, "artifactType": artifact_type}
    )


def test_merge_keeps_every_entry_already_there() -> None:
    theirs = {"mediaType": MANIFEST, "digest": "sha256:" + "c" * 64, "size": 9, "annotations": {"by": "someone else"}}
    existing = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [theirs]}).encode()
    merged = referrers.merge_index(existing, [entry("a"), entry("c")])
    assert merged is not None
    manifests = json.loads(merged)["manifests"]
    assert manifests[0] == theirs  # kept as it was, annotations and all
    assert [m["digest"][-1] for m in manifests] == ["c", "a"]
    assert referrers.merge_index(merged, [entry("a")]) is None  # nothing missing: nothing to write
    fresh = referrers.merge_index(None, [entry("b")])
    assert fresh is not None and json.loads(fresh)["mediaType"] == INDEX


@pytest.mark.parametrize("body", [b"not json", json.dumps({"mediaType": MANIFEST, "layers": []}).encode()])
def test_merge_refuses_a_tag_that_is_not_an_index(body: bytes) -> None:
    with pytest.raises(ValueError):
        referrers.merge_index(body, [entry("a")])


def test_write_fallback_merges_at_a_target_without_the_api_and_missing_reads_back(
    source: SourceImage, registry_factory: RegistryFactory
) -> None:
    reg, repo, root = source.registry, source.repository, source.digest
    subject = {"mediaType": MANIFEST, "digest": root, "size": 1}
    sbom = put(reg, repo, "sbom", artifact(reg, repo, b"spdx", subject=subject, artifact_type=SPDX))
    fallback(reg, repo, root, [sbom])
    sig = sign(reg, repo, root)
    with session(reg) as s:
        found = referrers.discover(s, repo, root)

    dst = registry_factory("dst")
    # The target has the image, the artifacts (copied by digest, as a tool does),
    # and a fallback index that already lists someone else's referrer.
    for d in (root,):
        put_copy(source.registry, dst, repo, d, d)
    put_copy(source.registry, dst, repo, sbom["digest"], sbom["digest"])
    theirs = put(
        dst, repo, "theirs", artifact(dst, repo, b"vex", subject=subject, artifact_type="application/vex+json")
    )
    fallback(dst, repo, root, [theirs])
    with session(dst) as t:
        # The signature was not copied yet: missing names it, and nothing else.
        assert [m.split(" (")[0] for m in referrers.missing(t, repo, found)] == [
            f"cosign signature {tag_of(root, 'sig')}",
            f"{SPDX} {sbom['digest']}",
        ]
        assert referrers.write_fallback(t, repo, found) == [referrers.fallback_tag(root)]
        put_copy(source.registry, dst, repo, sig, tag_of(root, "sig"))
        assert referrers.missing(t, repo, found) == []
        listed = {d["digest"] for d in referrers._fallback_entries(t, repo, root)}
        assert listed == {theirs["digest"], sbom["digest"]}  # theirs kept
        assert referrers.write_fallback(t, repo, found) == []  # nothing missing: not written again


def put_copy(src: Registry, dst: Registry, repo: str, digest: str, ref: str) -> None:
    """Copy one manifest by digest (and its blobs) with crane, as a target's tool would."""
    import subprocess

    from tests.e2e.fanout_helpers import tool_paths

    crane = tool_paths("crane")["crane"]
    env = isolated_env(Path(dst.root) / f"crane-env-{ref[-8:]}")
    auths = {r.host: {"auth": base64.b64encode(f"{r.username}:{r.password}".encode()).decode()} for r in (src, dst)}
    Path(env["DOCKER_CONFIG"], "config.json").write_text(json.dumps({"auths": auths}))
    sep = "@" if ref.startswith("sha256:") else ":"
    subprocess.run(
        [crane, "copy", f"{src.host}/{repo}@{digest}", f"{dst.host}/{repo}{sep}{ref}"],
        env=env,
        check=True,
        capture_output=True,
    )


def test_write_fallback_leaves_a_tag_that_is_not_an_index_alone(source: SourceImage) -> None:
    reg, repo, root = source.registry, source.repository, source.digest
    subject = {"mediaType": MANIFEST, "digest": root, "size": 1}
    sbom = put(reg, repo, "sbom", artifact(reg, repo, b"spdx", subject=subject, artifact_type=SPDX))
    found = (referrers.Artifact(sbom["digest"], root, SPDX, None, json.dumps(sbom)),)
    squatter = put(
        reg, repo, referrers.fallback_tag(root), artifact(reg, repo, b"img", subject=None, artifact_type=None)
    )
    with session(reg) as s:
        with pytest.raises(ValueError, match="left as it is"):
            referrers.write_fallback(s, repo, found)
        assert s.find_digest(repo, referrers.fallback_tag(root)) == squatter["digest"]


# -- the referrers: key, --[no-]referrers, the plan -------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "authscope.yml"
    path.write_text(textwrap.dedent(text))
    return path


FILE = """\
source: gitlab.local:4567/group/app:1.0
{top}targets:
  - name: one
    registry: harbor.one
    repository: release/app
    username: robot
    password_env: ONE
  - name: two
    registry: harbor.two
    repository: release/app
    username: robot
    password_env: TWO
{two}"""


def test_referrers_default_true_file_and_target_level(tmp_path: Path) -> None:
    spec = load(str(write(tmp_path, FILE.format(top="", two=""))), {})
    assert spec.referrers and all(t.referrers for t in spec.targets)
    spec = load(str(write(tmp_path, FILE.format(top="referrers: false\n", two="    referrers: true\n"))), {})
    assert [t.referrers for t in spec.targets] == [False, True]


@pytest.mark.parametrize(
    ("top", "two", "line", "where"),
    [("referrers: yes please\n", "", 2, "referrers"), ("", "    referrers: 1\n", 13, "targets[1].referrers")],
)
def test_referrers_must_be_a_boolean(tmp_path: Path, top: str, two: str, line: int, where: str) -> None:
    path = write(tmp_path, FILE.format(top=top, two=two))
    with pytest.raises(TargetsFileError) as caught:
        load(str(path), {})
    text = str(caught.value)
    assert f"{path}:{line}" in text and where in text and "must be true or false" in text


SIG = referrers.Artifact("sha256:" + "1" * 64, "sha256:" + "0" * 64, "cosign signature", "sha256-" + "0" * 64 + ".sig")
SBOM = referrers.Artifact("sha256:" + "2" * 64, "sha256:" + "0" * 64, SPDX, None, entry("2"))


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_plan_copies_referrers_after_the_image_before_the_other_tags(tmp_path: Path, tool: str) -> None:
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\ntags: ['1.0', latest]\n", two=""))), {})
    p = release.make_plan(spec, release.Options(), source_digest="sha256:" + "0" * 64, artifacts=(SIG, SBOM))
    steps = p.targets[0].steps
    assert [s.what.split()[0] for s in steps] == ["copy", "referrer", "referrer", "tag"]
    argv = " ".join(steps[1].argv + steps[2].argv)
    assert f"harbor.one/release/app:{SIG.tag}" in argv and f"app@{SIG.digest}" in argv  # by digest, as its tag
    assert f"harbor.one/release/app@{SBOM.digest}" in argv
    assert steps[1].argv[0] == tool
    # Control: --no-referrers leaves the image's steps alone.
    off = release.make_plan(
        spec, release.Options(referrers=False), source_digest="sha256:" + "0" * 64, artifacts=(SIG,)
    )
    assert [s.what.split()[0] for s in off.targets[0].steps] == ["copy", "tag"]
    assert "referrers: not copied" in plan.render(off, {})


def test_custom_targets_copy_referrers_with_crane(tmp_path: Path) -> None:
    text = FILE.format(top="tool: custom\ncommand: [my-copy, '{source}', '{destination}']\n", two="")
    spec = load(str(write(tmp_path, text)), {})
    p = release.make_plan(spec, release.Options(), source_digest="sha256:" + "0" * 64, artifacts=(SIG,))
    steps = p.targets[0].steps
    assert [s.argv[0] for s in steps] == ["my-copy", "crane"]
    assert tools.referrer_tool(p.targets[0].target) == "crane"


def test_pull_once_pulls_each_referrer_once(tmp_path: Path) -> None:
    spec = load(str(write(tmp_path, FILE.format(top="pull_once: true\ntool: regctl\n", two=""))), {})
    p = release.make_plan(
        spec, release.Options(), source_digest="sha256:" + "0" * 64, layout="/l/layout", artifacts=(SIG, SBOM)
    )
    assert [s.argv[-1] for s in p.pull_referrers] == [
        "ocidir:///l/layout.referrer-0:source",
        "ocidir:///l/layout.referrer-1:source",
    ]
    pushes = [s.argv[-2] for tp in p.targets for s in tp.steps if s.what.startswith("referrer")]
    assert pushes == ["ocidir:///l/layout.referrer-0:source", "ocidir:///l/layout.referrer-1:source"] * 2


def test_dry_run_says_whether_referrers_go_along(tmp_path: Path) -> None:
    spec = load(str(write(tmp_path, FILE.format(top="", two="    referrers: false\n"))), {})
    text = plan.render(release.make_plan(spec, release.Options()), {})
    one, two = text.split("\ntwo ")
    assert "referrers: copied along, with crane" in one and ".sig, .att, .sbom" in one
    assert "referrers: not copied (referrers: false)" in two


def test_cli_option_and_environment_variable(tmp_path: Path) -> None:
    parser = cli.build_parser("fanout")
    for argv, environ, expected in (
        (["fanout"], {}, None),
        (["fanout", "--no-referrers"], {}, False),
        (["fanout"], {"AUTHSCOPE_REFERRERS": "false"}, False),
        (["fanout", "--referrers"], {"AUTHSCOPE_REFERRERS": "false"}, True),
    ):
        args = parser.parse_args(argv)
        cli.options_from_env(parser, args, environ)
        assert args.referrers is expected, (argv, environ)


# -- a project that enforces signatures --------------------------------------------------------


def test_412_policy_violation_says_the_project_enforces_signatures() -> None:
    spec_target = load_target()
    output = [
        "Error: GET https://harbor.one/v2/release/app/manifests/1.0: unexpected status code 412 Precondition Failed: "
        '{"errors":[{"code":"PROJECTPOLICYVIOLATION","message":"The image is not signed in Cosign."}]}'
    ]
    transient, hint = F.diagnose(output, spec_target, "gitlab.local:4567")
    assert not transient and "project policy" in hint and "cosign sign" in hint and "referrers: true" in hint
    # Control: a plain 404 is not a policy.
    assert "project policy" not in F.diagnose(["MANIFEST_UNKNOWN 404"], spec_target, "gitlab.local:4567")[1]


def load_target() -> Any:
    from tests.test_fanout_unit import target

    return target()


@pytest.mark.parametrize("tool", ["podman", "buildah"])
def test_podman_and_buildah_targets_copy_referrers_with_skopeo(tmp_path: Path, tool: str) -> None:
    """podman and buildah unpack into a store and compress again on push, which
    would give every artifact another digest: skopeo copies them, by digest,
    with the same auth file and cert dirs."""
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\n", two=""))), {})
    p = release.make_plan(spec, release.Options(), source_digest="sha256:" + "0" * 64, artifacts=(SIG, SBOM))
    referrer_steps = [s for s in p.targets[0].steps if s.what.startswith("referrer")]
    assert [s.argv[:2] for s in referrer_steps] == [("skopeo", "copy")] * 2
    assert all("--preserve-digests" in s.argv for s in referrer_steps)
    # Control: the image itself still goes through the target's own tool.
    assert {s.argv[0] for s in p.targets[0].steps if not s.what.startswith("referrer")} == {tool}
