"""The documentation against the tree, so that it cannot drift (docs/development.md,
"Documentation"):

- every relative link of README.md, docs/*.md, BENCHMARKS.md and CHANGELOG.md points to a
  file or directory that exists, and to a heading that exists when it has an #anchor
  (GitHub's anchors);
- every repository path named in code (inline or in a code block) of README.md, docs/*.md
  and BENCHMARKS.md exists; a path is a token that starts with a top-level directory of the
  repository and a slash;
- the layout in docs/development.md lists every top-level directory and source file, and
  nothing that does not exist;
- every flag and environment variable of the binaries, and every chart value, is in
  docs/configuration.md;
- README.md stays under 250 lines, and names the test command CI runs.

Standard library and PyYAML only; no root, no network.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
import unicodedata
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
DEVELOPMENT = DOCS / "development.md"
CONFIGURATION = DOCS / "configuration.md"
CHART_VALUES = ROOT / "charts" / "multus-ipmgr" / "values.yaml"

# The pages issue 27 asks for.
PAGES = ("install", "configuration", "how-it-works", "security", "operations", "development")
README_MAX_LINES = 250

# Top-level directories that are built or installed, never tracked: not in the layout, and
# not repository paths.
GENERATED_DIRS = {"target", "dist"}
# Paths that tools write and git ignores (.gitignore), which the docs may name.
GENERATED_PATHS = ("manifests/tls",)
# Chart values whose value is a free-form map (labels, resources...): documented as a whole.
FREEFORM_VALUES = {"resources", "labels", "annotations", "nodeSelector", "extraConfig"}


# ---------------------------------------------------------------------------------------
# Reading Markdown


class Page:
    """A Markdown file split into its prose (code blocks blanked out) and its code blocks."""

    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text(encoding="utf-8")
        prose, blocks = [], []
        fence = None
        for line in self.text.split("\n"):
            marker = re.match(r"\s*(`{3,}|~{3,})", line)
            if fence is None and marker:
                fence = marker.group(1)
                blocks.append([])
                prose.append("")
            elif fence is not None:
                if line.strip().startswith(fence[0] * len(fence)) and line.strip().strip(fence[0]) == "":
                    fence = None
                else:
                    blocks[-1].append(line)
                prose.append("")
            else:
                prose.append(line)
        self.prose = "\n".join(prose)
        self.blocks = ["\n".join(block) for block in blocks]

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    def code_spans(self, prose: str | None = None) -> list[str]:
        """The contents of the inline code spans (they may wrap, never across a paragraph)."""
        prose = self.prose if prose is None else prose
        return [
            match.group(2)
            for match in re.finditer(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", prose, flags=re.S)
        ]

    def prose_without_code(self) -> str:
        return re.sub(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", " CODE ", self.prose, flags=re.S)

    def headings(self) -> list[str]:
        return [
            match.group(1)
            for match in re.finditer(r"^#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", self.prose, flags=re.M)
        ]

    def anchors(self) -> set[str]:
        """GitHub's heading ids: the heading's text, lower case, without punctuation but
        `-` and `_`, spaces as `-`; a repeated one gets -1, -2..."""
        seen: dict[str, int] = {}
        anchors = set()
        for heading in self.headings():
            text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
            text = text.replace("`", "").replace("*", "")
            slug = "".join(
                char
                for char in text.lower()
                if char in " -_" or unicodedata.category(char)[0] in "LNM"
            ).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
        anchors.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", self.text))
        return anchors

    def links(self) -> list[str]:
        prose = self.prose_without_code()
        inline = re.findall(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
        references = re.findall(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", prose, flags=re.M)
        return inline + references


@cache
def page(path: Path) -> Page:
    return Page(path)


def markdown_files() -> list[Path]:
    files = [README, ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
    return [file for file in files if file.exists()]


# ---------------------------------------------------------------------------------------
# The tree


def top_level_dirs() -> list[str]:
    return sorted(
        entry.name
        for entry in ROOT.iterdir()
        if entry.is_dir()
        and (not entry.name.startswith(".") or entry.name == ".ci")
        and entry.name not in GENERATED_DIRS
        and entry.name != "__pycache__"
    )


def workspace_members() -> list[str]:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text(encoding="utf-8"))
    return cargo["workspace"]["members"]


def files_under(directory: str, pattern: str) -> list[str]:
    found = []
    for path in sorted((ROOT / directory).rglob(pattern)):
        parts = path.relative_to(ROOT).parts
        if any(part in GENERATED_DIRS or part == "__pycache__" for part in parts):
            continue
        if path.is_file():
            found.append("/".join(parts))
    return found


def layout_required() -> list[str]:
    """What the layout must list: every top-level directory, every Rust file of the
    workspace's crates, every Python file of testenv/, demo/ and tests/ but __init__.py,
    and every file of scripts/."""
    required = [f"{name}/" for name in top_level_dirs()]
    for member in workspace_members():
        required += files_under(member, "*.rs")
    for directory in ("testenv", "demo", "tests"):
        required += [
            path for path in files_under(directory, "*.py") if not path.endswith("/__init__.py")
        ]
    required += [
        f"scripts/{path.name}" for path in sorted((ROOT / "scripts").iterdir()) if path.is_file()
    ]
    return required


def expand_braces(token: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", token)
    if not match:
        return [token]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in expand_braces(token[: match.start()] + choice + token[match.end() :])
    ]


def split_outside_braces(token: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in token:
        depth += char == "{"
        depth -= char == "}"
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def repository_paths(code: str, tops: list[str]) -> list[str]:
    """The tokens of a piece of code that name a path of the repository: those that start
    with a top-level directory and a slash (`helper/src/place.rs`, `scripts/test`)."""
    found = []
    for word in re.split(r"[\s'\"()=|;\[\]]+", code):
        for token in split_outside_braces(word, ","):
            token = token.rstrip(".:,`")
            if any(token.startswith(f"{top}/") for top in tops):
                found.append(token)
    return found


def path_exists(token: str) -> bool:
    if any(token == path or token.startswith(f"{path}/") for path in GENERATED_PATHS):
        return True
    for path in expand_braces(token):
        if "*" in path or "?" in path:
            if not any(
                fnmatch.fnmatch(str(match.relative_to(ROOT)), path.rstrip("/"))
                for match in ROOT.glob(path.rstrip("/"))
            ):
                return False
        elif not (ROOT / path).exists():
            return False
    return True


# ---------------------------------------------------------------------------------------
# The binaries' flags, and the chart's values


def contract_env() -> dict[str, str]:
    """`ipmgr_contract::env`'s constants: NAME -> variable."""
    source = (ROOT / "crates" / "contract" / "src" / "lib.rs").read_text(encoding="utf-8")
    block = re.search(r"pub mod env \{(.*?)\n\}", source, flags=re.S)
    assert block, "crates/contract/src/lib.rs has no `pub mod env { ... }`"
    return dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', block.group(1)))


def cli_arguments() -> list[tuple[str, str | None, str | None]]:
    """(source file, --flag, ENV) of every `#[arg(...)]` of the binaries' sources."""
    constants = contract_env()
    found = []
    sources = ["webhook/src", "helper/src", "pod/src", "crates/contract/src"]
    for directory in sources:
        for path in sorted((ROOT / directory).rglob("*.rs")):
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"#\[arg\((.*?)\)\]\s*(?:pub\s+)?(\w+)\s*:", text, flags=re.S):
                attribute, field = match.group(1), match.group(2)
                flag = None
                named = re.search(r'\blong\s*=\s*"([^"]+)"', attribute)
                if named:
                    flag = f"--{named.group(1)}"
                elif re.search(r"\blong\b", attribute):
                    flag = "--" + field.replace("_", "-")
                env = None
                literal = re.search(r'\benv\s*=\s*"([^"]+)"', attribute)
                constant = re.search(r"\benv\s*=\s*(?:ipmgr_contract::)?env::(\w+)", attribute)
                if literal:
                    env = literal.group(1)
                elif constant:
                    env = constants.get(constant.group(1), f"<unknown env::{constant.group(1)}>")
                found.append((str(path.relative_to(ROOT)), flag, env))
    return found


def chart_value_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREEFORM_VALUES:
            paths += chart_value_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------
# The tests


def test_the_pages_exist():
    missing = [f"docs/{name}.md" for name in PAGES if not (DOCS / f"{name}.md").exists()]
    missing += [name for name in ("LICENSE", "CHANGELOG.md", "BENCHMARKS.md") if not (ROOT / name).exists()]
    assert not missing, f"missing: {', '.join(missing)}"
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text, "LICENSE: not the full Apache-2.0 text"
    changelog = page(ROOT / "CHANGELOG.md")
    assert "[Unreleased]" in changelog.headings(), "CHANGELOG.md: no `## [Unreleased]` section"


def test_readme_is_short_and_names_the_test_command():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES - 1}: move the detail to docs/"
    assert "scripts/test" in README.read_text(encoding="utf-8"), (
        "README.md must name scripts/test, the test command CI runs (.ci/run)"
    )


def test_every_relative_link_and_anchor_exists():
    broken = []
    for file in markdown_files():
        source = page(file)
        for target in source.links():
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:...
                continue
            path_part, _, anchor = target.partition("#")
            destination = (file.parent / unquote(path_part)).resolve() if path_part else file
            if not destination.exists():
                broken.append(f"{source.name}: link to {target}: {path_part} does not exist")
                continue
            if anchor and destination.suffix == ".md":
                if unquote(anchor) not in page(destination).anchors():
                    broken.append(
                        f"{source.name}: link to {target}: {destination.relative_to(ROOT)} has no heading #{anchor}"
                    )
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_repository_path_named_in_code_exists():
    tops = top_level_dirs()
    files = [README, ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]
    missing = []
    for file in files:
        source = page(file)
        for code in source.code_spans() + source.blocks:
            for token in repository_paths(code, tops):
                if re.search(r"[<>$]", token):  # a placeholder
                    continue
                if not path_exists(token):
                    missing.append(f"{source.name}: `{token}` does not exist")
    assert not missing, "paths named in the docs that are not in the tree:\n" + "\n".join(sorted(set(missing)))


def layout_section() -> str:
    development = page(DEVELOPMENT)
    match = re.search(r"^## Layout[ \t]*$(.*?)(?=^## |\Z)", development.prose, flags=re.S | re.M)
    assert match, "docs/development.md has no `## Layout` section"
    return match.group(1)


def test_the_layout_lists_every_directory_and_source_file():
    section = layout_section()
    listed = set()
    for span in page(DEVELOPMENT).code_spans(section):
        for token in span.split():
            listed.update(expand_braces(token.rstrip(".:,")))
    missing = [path for path in layout_required() if path not in listed]
    assert not missing, (
        "docs/development.md, ## Layout, has no line for:\n"
        + "\n".join(f"  {path}" for path in missing)
        + "\nadd one per file under its directory's heading, e.g. "
        + f"- `{missing[0]}`: what it holds."
    )


def test_the_layout_lists_nothing_that_does_not_exist():
    tops = top_level_dirs()
    section = layout_section()
    stale = []
    for span in page(DEVELOPMENT).code_spans(section):
        for token in span.split():
            token = token.rstrip(".:,")
            top_file = "/" not in token and (ROOT / token).is_file()
            if top_file or any(token.startswith(f"{top}/") for top in tops):
                if not path_exists(token):
                    stale.append(token)
    assert not stale, "docs/development.md, ## Layout, lists what is not in the tree:\n" + "\n".join(
        f"  {path}" for path in stale
    )


def test_every_flag_and_environment_variable_is_in_the_configuration_reference():
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = []
    for source, flag, env in cli_arguments():
        if flag and f"`{flag}`" not in text and not re.search(rf"{re.escape(flag)}(?![\w-])", text):
            missing.append(f"{flag} ({source})")
        if env and env not in text:
            missing.append(f"{env} ({source})")
    assert not missing, "docs/configuration.md does not name:\n" + "\n".join(f"  {item}" for item in missing)


def test_every_chart_value_is_in_the_configuration_reference():
    values = yaml.safe_load(CHART_VALUES.read_text(encoding="utf-8"))
    documented = set(page(CONFIGURATION).code_spans())
    missing = [path for path in chart_value_paths(values) if path not in documented]
    assert not missing, (
        "docs/configuration.md, Helm chart values, has no `value` for:\n"
        + "\n".join(f"  {path}" for path in missing)
    )
