"""ftsurvey's extension probe: what importing a package does to the GIL.

Run with the venv's python, PYTHON_GIL unset, from an empty directory:

    python probe_extensions.py IMPORT_NAME

with a nonce on the first line of standard input and, on the rest, the path of a file to
create for the report. Both are read to the end of input before anything of the package is
imported, and the report goes to that file, the nonce on its first line: whatever the package
prints, on either stream, is only output, never taken for the report.

Imports the package, then each extension module under it one at a time, and writes one JSON
object: the extension modules found, the ones whose import re-enabled the GIL (named by the
interpreter's RuntimeWarning), the GIL state at the end, and the modules that failed to import.
Once the GIL is on it stays on, so modules imported after that are checked again, each in a
fresh interpreter, which reports the same way: its nonce on its standard input, and its answer
on the line of its output that follows that nonce. A module that fails to import is recorded,
never fatal.
"""

import importlib
import importlib.machinery
import json
import os
import re
import secrets
import subprocess
import sys
import warnings

WARNING = re.compile(r"enabled to load module '([^']+)'")
MAX_SEPARATE = 64


def gil_enabled():
    check = getattr(sys, "_is_gil_enabled", None)
    return bool(check()) if check else True


def extension_modules(package):
    """Dotted names of the extension modules in the package's directories."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = set()
    origin = getattr(package, "__file__", None) or ""
    if origin.endswith(suffixes):
        found.add(package.__name__)
    for root in getattr(package, "__path__", None) or []:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d.isidentifier()]
            relative = os.path.relpath(directory, root)
            parts = [] if relative == "." else relative.split(os.sep)
            for name in files:
                for suffix in suffixes:
                    if name.endswith(suffix):
                        stem = name[: -len(suffix)]
                        if stem.isidentifier():
                            found.add(".".join([package.__name__, *parts, stem]))
                        break
    return sorted(found)


def culprits(caught):
    names = []
    for warning in caught:
        match = WARNING.search(str(warning.message))
        if match:
            names.append(match.group(1))
    return names


def probe_alone(module):
    """Imports one module in a fresh interpreter; the modules that enabled the GIL there."""
    code = (
        "import importlib, json, sys, warnings\n"
        "def main():\n"
        "    nonce = sys.stdin.readline().strip()\n"
        "    warnings.simplefilter('always')\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        try:\n"
        f"            importlib.import_module({module!r})\n"
        "            result = {'warnings': [str(w.message) for w in caught]}\n"
        "        except BaseException as error:\n"
        "            result = {'error': f'{type(error).__name__}: {error}'}\n"
        "    sys.stdout.write('\\n' + nonce + ' ' + json.dumps(result) + '\\n')\n"
        "    sys.stdout.flush()\n"
        "main()\n"
    )
    nonce = secrets.token_hex(16)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=nonce + "\n",
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=120,
        )
        at = done.stdout.rfind(nonce + " ")
        if at < 0:
            return [], f"probe failed: no answer (exit status {done.returncode})"
        result = json.loads(done.stdout[at + len(nonce) + 1 :].splitlines()[0])
    except Exception as error:  # a crash or garbage: recorded, never fatal
        return [], f"probe failed: {type(error).__name__}: {error}"
    if "error" in result:
        return [], result["error"]
    names = []
    for message in result.get("warnings", []):
        match = WARNING.search(message)
        if match:
            names.append(match.group(1))
    return names, None


def main():
    name = sys.argv[1]
    # Read to the end before the package is imported: it finds nothing left to read.
    nonce, _, report_path = sys.stdin.read().partition("\n")
    report_path = report_path.rstrip("\n")
    report = {"modules": [], "gil_enabled_by": [], "import_errors": [], "gil_enabled_after_import": None}
    enabled_by = []
    after_enable = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        package = importlib.import_module(name)
        enabled_by += culprits(caught)
        caught.clear()
        modules = extension_modules(package)
        report["modules"] = modules
        for module in modules:
            was_enabled = gil_enabled()
            try:
                importlib.import_module(module)
            except BaseException as error:
                report["import_errors"].append([module, f"{type(error).__name__}: {error}"])
                continue
            enabled_by += culprits(caught)
            caught.clear()
            if was_enabled:
                after_enable.append(module)
    report["gil_enabled_after_import"] = gil_enabled()
    # Modules imported while the GIL was already on could not say whether they need it.
    for module in after_enable[:MAX_SEPARATE]:
        if module in enabled_by:
            continue
        names, error = probe_alone(module)
        if error:
            report["import_errors"].append([module, error])
        enabled_by += names
    report["gil_enabled_by"] = sorted(set(enabled_by))
    # "x": a file already there was not made by this probe, and is not written through.
    with open(report_path, "x", encoding="utf-8") as out:
        out.write(nonce + "\n" + json.dumps(report))


if __name__ == "__main__":
    main()
