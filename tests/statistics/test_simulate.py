"""The simulation command's input (pipeline.statistics.simulate): bad input refused in one line, before any work."""

from __future__ import annotations

import pytest

from pipeline.statistics.simulate import main


@pytest.mark.parametrize("sizes", ["2,x", "-1", "3,0"])
def test_bad_collapse_sizes_are_refused_in_one_line(sizes, capsys):
    with pytest.raises(SystemExit):
        main(["--collapse", f"--sizes={sizes}"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--sizes: '{sizes}': need comma-separated positive numbers of margins" in error


def test_the_false_splits_table_has_a_row_per_spread_pair(capsys):
    assert main(["--false-splits", "--reps", "50"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 6 and all(len(row.split("|")) == 7 for row in rows)
