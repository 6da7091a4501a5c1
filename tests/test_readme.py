"""The README says what the code does: its library example prints what its comments claim, and its
experiments table holds the values the configs compose to (docs/design.md §7)."""

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
    section = README[README.index("## Experiments"):README.index("Dynamics (regression")]
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
