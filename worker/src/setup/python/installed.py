"""Run by ftsurvey once per setup, as `python -I -S installed.py SITE NAME IMPORT_NAME`: prints
what the venv whose site-packages is SITE has installed, as one line of JSON: the version of
the distribution NAME (or of the one that provides the module IMPORT_NAME), and the SHA-256 of
the venv's freeze (every distribution's `name==version`, names normalised, sorted, one a line).

`-S` keeps `site` out: no `.pth` file of the venv is read, so nothing of the packages runs and
nothing but this script prints.
"""

import hashlib
import json
import re
import sys
from importlib import metadata


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def main():
    site, name, import_name = sys.argv[1:4]
    found = []
    for dist in metadata.distributions(path=[site]):
        dist_name = dist.metadata["Name"]
        if dist_name:
            found.append((canonical(dist_name), dist.version, dist))
    freeze = sorted({f"{dist_name}=={version}" for dist_name, version, _ in found})
    version = next((v for n, v, _ in found if n == canonical(name)), None)
    if version is None:
        top = import_name.split(".")[0]
        for _, v, dist in found:
            if top in (dist.read_text("top_level.txt") or "").split():
                version = v
                break
    print(json.dumps({
        "package_version": version,
        "freeze_sha256": hashlib.sha256("\n".join(freeze).encode()).hexdigest(),
        "distributions": len(freeze),
    }))


main()
