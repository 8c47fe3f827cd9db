"""Install wheels into this Python without pip: run inside the image build.

The image's Debian python3 has no pip (and should not carry one). A wheel is a
zip laid out for site-packages, so installing one is: unpack it into purelib
(platlib for the compiled ones, the same directory on Debian), write its
console scripts with this interpreter in the shebang, byte-compile, and leave
no cache behind.

    python3 image-install-wheels.py DIR   # every *.whl in DIR
"""

from __future__ import annotations

import compileall
import configparser
import os
import sys
import sysconfig
import zipfile

SCRIPT = """#!{python}
import sys
from {module} import {function}
sys.exit({function}())
"""


def install(wheel: str, site: str, bindir: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            target = os.path.realpath(os.path.join(site, name))
            if not target.startswith(site + os.sep):
                raise SystemExit(f"{wheel}: {name} would land outside {site}")
        archive.extractall(site)
        points = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        if not points:
            return
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(points[0]).decode())
    # Only authscope's own command: the libraries' (python-gitlab's `gitlab`)
    # are not what the image is for.
    if not os.path.basename(wheel).startswith("authscope-"):
        return
    for command, spec in parser.items("console_scripts") if parser.has_section("console_scripts") else []:
        module, function = spec.split(":")
        path = os.path.join(bindir, command)
        with open(path, "w") as f:
            f.write(SCRIPT.format(python=sys.executable, module=module.strip(), function=function.strip()))
        os.chmod(path, 0o755)


def main() -> None:
    directory = sys.argv[1]
    site = sysconfig.get_path("purelib")
    bindir = sysconfig.get_path("scripts")
    os.makedirs(site, exist_ok=True)
    os.makedirs(bindir, exist_ok=True)
    wheels = sorted(f for f in os.listdir(directory) if f.endswith(".whl"))
    if not wheels:
        raise SystemExit(f"no wheel in {directory}")
    for wheel in wheels:
        install(os.path.join(directory, wheel), os.path.realpath(site), bindir)
        print(f"installed {wheel} into {site}")
    # Compiled once here: the image's user cannot write __pycache__ at run time.
    if not compileall.compile_dir(site, quiet=1):
        raise SystemExit("byte-compiling failed")


if __name__ == "__main__":
    main()
