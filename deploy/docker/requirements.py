"""Print the pinned requirements of one extra of pyproject.toml (the shared dependencies, the extra's own, and those
of the extras it names, e.g. `chatplane[db,events]`), one a line, for `pip install -r`.

The images install these in a layer of their own, before the source is copied in, so that an edit of the code
reuses the (large) dependency layer:  python requirements.py gateway > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(project: dict, extra: str) -> list[str]:
    extras = project["optional-dependencies"]
    if extra not in extras:
        raise SystemExit(f"no extra {extra!r} in pyproject.toml (have: {', '.join(sorted(extras))})")
    found: list[str] = list(project["dependencies"])
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in extras[name]:
            own = re.fullmatch(rf"{re.escape(project['name'])}\[([\w,-]+)\]", requirement.replace(" ", ""))
            if own:
                todo.extend(own[1].split(","))
            else:
                found.append(requirement)
    return list(dict.fromkeys(found))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python requirements.py EXTRA", file=sys.stderr)
        return 2
    path = Path(__file__).with_name("pyproject.toml")
    if not path.exists():  # run from the repository rather than the image's build folder
        path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    print("\n".join(requirements(tomllib.loads(path.read_text())["project"], argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
