"""Every generated block of the READMEs has a script that writes it, and the shared writer replaces only its block."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from benchmarks.all import JOBS
from benchmarks.common import printed_block, write_block

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
MARKER = re.compile(r"(?<!`)<!-- ([A-Z0-9_-]+):(BEGIN|END) -->")  # not the ones quoted in the text


def writes(name: str) -> list[str]:
    """The scripts under benchmarks/ and scripts/ that write the block `name`."""
    def writer(text: str) -> bool:
        calls = ("write_block(", "printed_block(", "main_writing_block(")
        return f'"<!-- {name}:BEGIN -->"' in text or (f'"{name}"' in text and any(c in text for c in calls))

    return [str(p.relative_to(ROOT)) for folder in ("benchmarks", "scripts") for p in sorted((ROOT / folder).glob("*.py"))
            if p.name not in ("all.py", "common.py") and writer(p.read_text())]


def test_every_marked_block_is_closed_and_has_a_script_that_writes_it() -> None:
    names = []
    for readme in READMES:
        markers = MARKER.findall(readme.read_text())
        assert markers, readme
        for (begin, kind), (end, end_kind) in zip(markers[::2], markers[1::2], strict=True):
            assert (kind, end_kind, begin) == ("BEGIN", "END", end), (readme, begin, end)
            names.append(begin)
    assert len(names) == len(set(names)) and {"DETECTION", "CONTINUOUS_HARD", "BAD-INPUTS"} <= set(names)
    orphans = [name for name in names if not writes(name)]
    assert not orphans, f"blocks no script writes: {orphans}"


def test_make_benchmarks_has_one_job_per_block_of_the_benchmarks_readme_and_the_job_runs_its_writer() -> None:
    """`make benchmarks` (benchmarks/all.py) regenerates every block of benchmarks/README.md, each by the script that
    writes it, and names no block the README lacks."""
    marked = MARKER.findall((ROOT / "benchmarks" / "README.md").read_text())
    blocks = [name for name, kind in marked if kind == "BEGIN"]
    jobs = {job.block: job for job in JOBS}
    assert sorted(jobs) == sorted(blocks) and len(jobs) == len(JOBS)
    for block, job in jobs.items():
        assert writes(block) == [f"benchmarks/{job.script()}.py"], block
        quick = job.quick_args()
        assert quick is None or quick[:len(job.args)] == job.args
    assert sum(job.minutes for job in JOBS if job.quick == "rerun") <= 30  # the --quick budget


def test_printed_block_writes_what_was_emitted_with_its_provenance_and_nothing_after_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- A:BEGIN -->\nold\n<!-- A:END -->\n")
    with printed_block("A", fence=True, readme=readme) as emit:
        print("[round 1/20] progress of a run, not a result")
        emit("ratio 1.71x")
    assert "ratio 1.71x" in capsys.readouterr().out
    text = readme.read_text()
    assert text.startswith("<!-- A:BEGIN -->\n```\nratio 1.71x\n```\n\nMade by commit ") and "old" not in text
    assert "progress" not in text
    with pytest.raises(RuntimeError), printed_block("A", fence=False, readme=readme) as emit:
        emit("half a table")
        raise RuntimeError("the benchmark failed")
    assert readme.read_text() == text


def test_write_block_replaces_its_own_block_and_appends_a_new_one(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\n<!-- A:BEGIN -->\nold a\n<!-- A:END -->\ntext\n<!-- C:BEGIN -->\nold c\n<!-- C:END -->\n")
    write_block("A", "new a\n", readme)
    write_block("D", "d", readme)
    assert readme.read_text() == ("# B\n\n<!-- A:BEGIN -->\nnew a\n<!-- A:END -->\ntext\n<!-- C:BEGIN -->\nold c\n"
                                  "<!-- C:END -->\n\n<!-- D:BEGIN -->\nd\n<!-- D:END -->\n")


@pytest.mark.parametrize("path, kept", [
    ("benchmarks/runs/continuous/always/no-defense-s0/results.json", True),
    ("benchmarks/runs/defense-table/badnets-s0/purify-mcl/purify.json", True),
    ("benchmarks/runs/defense-table/badnets-s0/checkpoints/final.pt", False),
    ("benchmarks/runs/defense-table/badnets-s0/tensorboard/events.out.tfevents.1", False),
    ("benchmarks/runs/defense-table/badnets-s0/plot.png", False),
    ("runs/sweep-grid/results.json", False),
])
def test_git_keeps_the_benchmark_runs_records_and_nothing_bulky(path: str, kept: bool) -> None:
    """A fresh clone (a new session's checkout) must report and resume benchmark runs: their results.json and
    purify.json are committed; checkpoints, event files and plots are not."""
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0
    assert ignored is not kept


def test_a_central_model_depends_on_its_seed_not_on_what_the_process_drew_before(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import torch

    from benchmarks import common

    monkeypatch.setattr(common, "CACHE", tmp_path)
    first = common.central_model("badnets", 3, 0, n_train=64, epochs=1).model.state_dict()
    torch.rand(1000)  # what another model's training would have drawn
    (next(tmp_path.glob("*.pt"))).unlink()  # retrain rather than load
    again = common.central_model("badnets", 3, 0, n_train=64, epochs=1).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = common.central_model("badnets", 4, 0, n_train=64, epochs=1).model.state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)
