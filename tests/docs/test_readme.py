"""The documents say what the code does: the README's library example prints what its comments
claim, its experiments table holds the values the configs compose to, and every "docs/design.md §N"
citation in the repository names a section that exists (docs/design.md §7)."""

import contextlib
import io
import re

import pytest
import torch

from gmcnn.training.engine import build_model, count_parameters
from tests.helpers import ROOT, compose_config

README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README, flags=re.DOTALL | re.MULTILINE)


def claimed_outputs(code: str) -> list[str]:
    """For every top-level ``print(...)  # VALUE[: explanation]`` line, the VALUE it claims."""
    claims = []
    for line in code.splitlines():
        if line.startswith("print("):
            assert "#" in line, f"README example: print without the value it prints in a comment: {line}"
            claims.append(line.split("#", 1)[1].split(": ", 1)[0].strip())
    return claims


@pytest.fixture
def one_thread():
    """The example runs hundreds of tiny forward passes; threads only add contention there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_library_example_prints_what_its_comments_claim(one_thread):
    blocks = python_blocks()
    assert len(blocks) == 1
    claims = claimed_outputs(blocks[0])
    assert claims[:2] == ["(4, 8, 784)", "0.0"]  # the output shape, and exact equivariance
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue().splitlines() == claims


def experiments_table() -> list[list[str]]:
    section = README[README.index("## Experiments"):README.index("Image symmetries")]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


def test_experiments_table_matches_the_configs():
    rows = experiments_table()
    assert len(rows) == 9
    for exp_cell, _, group, t, params, batch, epochs, dropout in rows:
        exp = re.match(r"`([\w-]+)`", exp_cell).group(1)
        cfg = compose_config(f"exp={exp}")
        assert " x ".join(cfg.model.group) == group, exp
        assert (str(cfg.model.t), str(cfg.trainer.batch_size), str(cfg.trainer.epochs)) == (t, batch, epochs), exp
        assert str(cfg.model.dropout) == dropout, exp
        assert f"{count_parameters(build_model(cfg)):,}" == params, exp
    assert "`quickstart` (default)" in [row[0] for row in rows]


def test_commands_it_shows_exist():
    assert 'python -m pytest -q -m "not slow"' in README
    assert "python -m tools.plume_generate --variant rotation" in README
    assert (ROOT / "tools" / "plume_generate.py").is_file() and (ROOT / "docs" / "benchmarks.md").is_file()
    for script in re.findall(r"python (benchmarks/\w+\.py)", README):
        assert (ROOT / script).is_file(), script


def cited_sections() -> dict[str, set[str]]:
    """Section number -> the files citing it as "docs/design.md §N" (a "§N and M" cites both)."""
    cited: dict[str, set[str]] = {}
    for path in ROOT.rglob("*"):
        if path.suffix not in {".py", ".yaml", ".md", ".toml"} or {".git", ".venv", "outputs"} & set(path.parts):
            continue
        for match in re.finditer(r"docs/design\.md §(\d+(?:\.\d+)?)(?: and (\d+(?:\.\d+)?))?", path.read_text()):
            for number in filter(None, match.groups()):
                cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_design_citations_name_existing_sections():
    design = (ROOT / "docs" / "design.md").read_text()
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", design, flags=re.MULTILINE))
    assert {"1", "2", "2.1", "2.2", "2.3", "2.4", "2.5", "3", "3.1", "3.2", "4", "4.1", "4.2", "4.3", "5", "6",
            "7"} <= headings
    cited = cited_sections()
    assert {"2.1", "3.1", "4.2"} <= set(cited)  # the search finds the citations
    missing = {number: sorted(files) for number, files in cited.items() if number not in headings}
    assert not missing, f"citations of sections docs/design.md does not have: {missing}"
