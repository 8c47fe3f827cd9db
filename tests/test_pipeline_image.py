"""`authscope pipeline`'s child jobs run in an image that can copy (#15, #17 item 6).

The default is the authscope image of this version with no install line; an
official python image whose install line does not bring the file's tool is
refused when the pipeline is generated (exit 2, naming the image and the
tool), not in every child job. The control switches the check off and shows
the child pipeline that would have been generated: jobs without the tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import authscope
from authscope import pipeline

TARGETS = """\
source: {{image: gitlab.local:4567/app:1.0}}
tags: ["1.0"]
tool: {tool}
targets:
  - name: one
    registry: one.example.com
    repository: release/app
    username: ci
    password_env: ONE_PASSWORD
"""


def generate(main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, tool: str = "crane") -> Any:
    path = tmp_path / "authscope.yml"
    path.write_text(TARGETS.format(tool=tool))
    code = main("pipeline", "-f", str(path), *args)
    out, err = capsys.readouterr()
    return code, (yaml.safe_load(out) if code == 0 else None), err


def test_default_child_jobs_use_the_authscope_image_and_install_nothing(
    main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc, err = generate(main, tmp_path, capsys)
    assert code == 0, err
    job = doc["authscope:one"]
    assert job["image"] == f"registry.gitlab.com/authscope/authscope:{authscope.__version__}"
    assert job["before_script"] == [
        'authscope login "$CI_REGISTRY" -u "$CI_REGISTRY_USER" --password-env CI_REGISTRY_PASSWORD'
    ]


@pytest.mark.parametrize("tool", ["crane", "regctl", "skopeo"])
def test_python_image_without_the_tool_is_refused_at_generation(
    tool: str, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = generate(
        main, tmp_path, capsys, "--image", "python:3.12-slim", "--install", "pip install authscope==0.1.0", tool=tool
    )
    assert code == 2
    assert "--image python:3.12-slim: the child jobs could not copy" in err
    assert f"the image has no {tool} and --install" in err
    assert pipeline.DEFAULT_IMAGE in err  # the fix


def test_python_image_with_no_install_line_lacks_authscope_too(
    main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = generate(main, tmp_path, capsys, "--image", "docker.io/library/python:3.13")
    assert code == 2
    assert "the image has no authscope, crane" in err


def test_python_image_whose_install_brings_the_tool_is_accepted(
    main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install = "apt-get update && apt-get install -y skopeo && pip install authscope==0.1.0"
    code, doc, err = generate(
        main, tmp_path, capsys, "--image", "python:3.12-slim", "--install", install, tool="skopeo"
    )
    assert code == 0, err
    assert doc["authscope:one"]["before_script"][0] == install
    # Any other image is the user's call: authscope cannot look inside it.
    code, doc, err = generate(main, tmp_path, capsys, "--image", "registry.example.com/tools/release:3")
    assert code == 0, err


def test_control_without_the_check_the_jobs_would_start_without_crane(
    main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What #15 reported: python:3.12-slim and a pip line, crane the tool."""
    monkeypatch.setattr(pipeline, "check_image", lambda fanout, settings: None)
    code, doc, err = generate(
        main, tmp_path, capsys, "--image", "python:3.12-slim", "--install", "pip install authscope==0.1.0"
    )
    assert code == 0, err
    job = doc["authscope:one"]
    assert job["image"] == "python:3.12-slim"
    assert not any("crane" in line for line in job["before_script"])  # nothing brings crane
    assert "authscope fanout" in job["script"][0]  # whose default tool is crane
