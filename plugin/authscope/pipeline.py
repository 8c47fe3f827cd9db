"""A child pipeline for fan-outs that outgrow one job: one job per target
(each with ``environment: registry/<target>``, so environment-scoped
credentials apply), or one per slice of targets. Pure: builds a dict.

Which variables each job needs: the generator (``authscope pipeline``) only
those of the file's own fields (``source``, ``tags``...) and of the targets'
names; each child job those and its own targets' (``fanout --target``
expands no other target). So a target's password, username and CA file
variables can be scoped to its environment ``registry/<target>``.

Deployments: a job with ``environment:`` (``action: start``) is a deployment
GitLab records itself, once per run, with the job's status. Such a job is
not given ``--gitlab-deployments``, which would record a second one through
the API; only the jobs without an environment (slices of several targets)
are, and record one per target.

Image: the child jobs default to the authscope image of this version
(``IMAGE``: authscope, crane, skopeo, regctl, cosign, oras; no install line).
An image known to lack the copy tools (the official ``python`` images) with an
install line that does not bring the file's tool is refused when the
pipeline is generated (``check_image``), not in every child job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .errors import UsageError
from .targets import ENVIRONMENT_PREFIX, JOB_PREFIX, Fanout

# The image the project's pipeline publishes (Containerfile, scripts/build-image),
# tagged with the package's version; the components default to it too.
IMAGE_REPOSITORY = "registry.gitlab.com/authscope/authscope"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
DEFAULT_INSTALL = ""  # the image has authscope and every tool: nothing to install
COPY_TOOLS = ("crane", "skopeo", "regctl")


@dataclass(frozen=True)
class JobSettings:
    targets_file: str
    image: str = DEFAULT_IMAGE
    install: str = DEFAULT_INSTALL
    stage: str = "fanout"
    registry_login: bool = True
    jobs: int = 0  # --jobs for each job; 0: the file's
    fail_fast: bool = False
    pull_once: bool = False
    gitlab_release: bool = False
    gitlab_deployments: bool = False
    gitlab_token_env: str = ""


def slices(names: Sequence[str], count: int) -> list[list[str]]:
    """``names`` in ``count`` contiguous, near-equal groups (none empty)."""
    count = max(1, min(count, len(names)))
    size, extra = divmod(len(names), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(list(names[start:end]))
        start = end
    return out


def _job(names: Sequence[str], settings: JobSettings, slug: str) -> dict[str, Any]:
    # Environment-scoped CI/CD variables (the target's password) reach only a
    # job whose environment matches: one job per target. GitLab records that
    # job's deployment itself (see the module's docstring).
    environment = len(names) == 1
    command = ["authscope", "fanout", "-f", _quote(settings.targets_file)]
    for name in names:
        command += ["--target", name]
    if settings.jobs:
        command += ["--jobs", str(settings.jobs)]
    for wanted, flag in (
        (settings.fail_fast, "--fail-fast"),
        (settings.pull_once, "--pull-once"),
        (settings.gitlab_release, "--gitlab-release"),
        (settings.gitlab_deployments and not environment, "--gitlab-deployments"),
    ):
        if wanted:
            command.append(flag)
    if settings.gitlab_token_env:
        command += ["--gitlab-token-env", settings.gitlab_token_env]
    command += [
        "--junit",
        f"authscope-{slug}.xml",
        "--dotenv",
        f"authscope-{slug}.env",
        "--json",
        f"authscope-{slug}.json",
    ]
    before = [settings.install] if settings.install else []
    if settings.registry_login:
        before.append('authscope login "$CI_REGISTRY" -u "$CI_REGISTRY_USER" --password-env CI_REGISTRY_PASSWORD')
    job: dict[str, Any] = {
        "stage": settings.stage,
        "image": settings.image,
        "before_script": before,
        "script": [" ".join(command)],
        "after_script": ["authscope sweep"],
        "artifacts": {
            "when": "always",
            "paths": [f"authscope-{slug}.json"],
            "reports": {"junit": f"authscope-{slug}.xml", "dotenv": f"authscope-{slug}.env"},
        },
    }
    if environment:
        job["environment"] = {"name": ENVIRONMENT_PREFIX + names[0], "action": "start"}
    return job


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _bare_python(image: str) -> bool:
    """The official Python images (python:3.12-slim, docker.io/library/python...):
    Python and pip, none of the copy tools."""
    import re

    return re.fullmatch(r"(?:(?:docker\.io|index\.docker\.io)/)?(?:library/)?python(?:[:@].*)?", image) is not None


def check_image(fanout: Fanout, settings: JobSettings) -> None:
    """Refuse child jobs that cannot copy: an image without the file's tool
    (or without authscope) and an install line that does not bring it."""
    if not _bare_python(settings.image):
        return
    tools = {fanout.tool, *(t.tool for t in fanout.targets)}
    missing = sorted(t for t in tools if t in COPY_TOOLS and t not in settings.install)
    if not settings.install:
        missing.insert(0, "authscope")
    if missing:
        raise UsageError(
            f"--image {settings.image}: the child jobs could not copy: the image has no "
            f"{', '.join(missing)} and --install {settings.install!r} does not install "
            f"{'it' if len(missing) == 1 else 'them'}; use the authscope image ({DEFAULT_IMAGE}, "
            f"the default: every tool, no install line) or an image with {', '.join(missing)}"
        )


def child_pipeline(fanout: Fanout, settings: JobSettings, slice_count: int = 0) -> dict[str, Any]:
    """The child pipeline: one job per target, or ``slice_count`` jobs."""
    check_image(fanout, settings)
    names = list(fanout.names or [t.name for t in fanout.targets])  # load(names_only=True) expands none
    doc: dict[str, Any] = {"stages": [settings.stage]}
    if slice_count:
        for i, group in enumerate(slices(names, slice_count), 1):
            doc[f"{JOB_PREFIX}slice-{i}"] = _job(group, settings, f"slice-{i}")
    else:
        for name in names:
            doc[JOB_PREFIX + name] = _job([name], settings, name)
    return doc


def render(doc: dict[str, Any]) -> str:
    import yaml

    header = "# Generated by `authscope pipeline`: one job per fan-out target (or slice).\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=1000)
