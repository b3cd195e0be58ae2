"""Build the sdist and the wheel and check them as an index would (CI runs this: .ci/run).

    python scripts/check_dist.py            # needs: pip install build twine

Builds both into a temporary folder with ``python -m build``, runs ``twine check --strict`` on
them (the metadata, and the README rendered as the long description), then checks what they
hold: the distribution is named ``genentropy`` (what every ``pip install 'genentropy[...]'``
hint says), the wheel holds the package and its ``genentropy`` script, the sdist the README,
and every extra a hint names is declared. Exit 1 with what is wrong.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HINT = re.compile(r"pip install ['\"]genentropy\\?\[(\w+)\\?\]['\"]")


def hinted_extras() -> set[str]:
    """The extras named by ``pip install 'genentropy[EXTRA]'`` in the code and the docs."""
    files = [*ROOT.joinpath("genentropy_cli").rglob("*.py"), *ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md"]
    return {match for path in files for match in HINT.findall(path.read_text(encoding="utf-8"))}


def check(folder: Path) -> list[str]:
    problems = []
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(folder), str(ROOT)], check=True,
                   stdout=subprocess.DEVNULL)
    wheels, sdists = sorted(folder.glob("*.whl")), sorted(folder.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist, built {[path.name for path in folder.iterdir()]}"]
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])], check=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = wheel.read(metadata_name).decode()
        entry_points = wheel.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    if "\nName: genentropy\n" not in metadata:
        problems.append("the wheel's distribution is not named genentropy")
    if "genentropy_cli/__main__.py" not in names or "genentropy = genentropy_cli.__main__:main" not in entry_points:
        problems.append("the wheel lacks the package or its genentropy script")
    declared = set(re.findall(r"^Provides-Extra: (\w+)$", metadata, re.MULTILINE))
    if missing := hinted_extras() - declared:
        problems.append(f"hints name extras the wheel does not declare: {sorted(missing)}")
    with tarfile.open(sdists[0]) as sdist:
        members = {Path(name).relative_to(Path(name).parts[0]).as_posix() for name in sdist.getnames() if "/" in name}
    for needed in ("README.md", "pyproject.toml", "genentropy_cli/__init__.py"):
        if needed not in members:
            problems.append(f"the sdist lacks {needed}")
    return problems


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        problems = check(Path(folder))
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        print("check_dist: the sdist and the wheel build and pass twine check --strict")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
