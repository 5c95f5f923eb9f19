"""The screening report's reference scales: gap closed (MAP 0, ensemble 1) and the deep-ensemble
equivalent interpolated on the MAP member curve."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from c10_10k_screen_report import summarise  # noqa: E402

from pyro_implicit.uncertainty import (  # noqa: E402
    deep_ensemble_equivalent as ensemble_equivalent,
)
from pyro_implicit.uncertainty import gap_closed  # noqa: E402

CURVE = [0.80, 0.70, 0.66, 0.64]  # NLL of 1..4 averaged MAP members


def test_gap_closed_is_zero_at_map_and_one_at_the_ensemble():
    assert gap_closed(25.4, 25.4, 21.6) == 0
    assert gap_closed(21.6, 25.4, 21.6) == 1
    assert gap_closed(23.5, 25.4, 21.6) == pytest.approx(0.5)
    assert gap_closed(26.0, 25.4, 21.6) < 0


def test_ensemble_equivalent_interpolates_and_clamps():
    assert ensemble_equivalent(0.80, CURVE) == 1
    assert ensemble_equivalent(0.90, CURVE) == 1  # worse than one member
    assert ensemble_equivalent(0.75, CURVE) == pytest.approx(1.5)
    assert ensemble_equivalent(0.66, CURVE) == pytest.approx(3)
    assert ensemble_equivalent(0.65, CURVE) == pytest.approx(3.5)
    assert ensemble_equivalent(0.50, CURVE) == 4  # beyond the curve


def test_selection_keeps_matched_accuracy_and_ranks_by_nll():
    def result(x1, x16, nll):
        return {"samples": {"1": {"error": x1, "nll": nll + 0.1, "ece": 0.02},
                            "16": {"error": x16, "nll": nll, "ece": 0.02}},
                "history": [{"seconds": 20.0}]}

    results = {"map": result(0.30, 0.30, 0.90), "a": result(0.305, 0.28, 0.80),
               "b": result(0.45, 0.40, 0.70), "c": result(0.29, 0.27, 0.85),
               "map-bn-groups4": result(0.29, 0.29, 0.79)}
    curve = {"error": [0.30, 0.28, 0.27, 0.26], "nll": [0.90, 0.82, 0.79, 0.77],
             "single": {"error": 0.30, "nll": 0.90}}
    summary = summarise(results, curve, tolerance=1.0)
    # b is too inaccurate; map is the reference, map-bn-groups4 a MAP control (reported only)
    assert summary["selection"] == ["a", "c"]
    assert "x1_error" in summary["runs"]["map-bn-groups4"]
    assert summary["runs"]["a"]["gap_closed"]["error"] == pytest.approx(0.5)
    assert summary["runs"]["a"]["deep_ensemble_equivalent"] == pytest.approx(2 + 2 / 3)


def test_without_a_matched_candidate_the_pareto_front_is_selected():
    def result(x1, nll):
        return {"samples": {"1": {"error": x1, "nll": nll + 0.1, "ece": 0.02},
                            "16": {"error": x1, "nll": nll, "ece": 0.02}},
                "history": [{"seconds": 20.0}]}

    results = {"map": result(0.30, 0.90), "hypernet-uniform01": result(0.36, 1.00),
               "a": result(0.36, 1.05), "b": result(0.40, 0.95), "c": result(0.41, 0.99),
               "d": result(0.50, 1.20)}
    summary = summarise(results, None, tolerance=1.0)
    assert summary["selection_rule"] == "pareto"
    assert summary["selection"] == ["b", "a"]  # c and d are beaten by b; references excluded
    # a is no better than the paper's U(0,1) on either axis and worse on one; b beats it on NLL
    assert summary["beaten_by_paper"] == {"a": ["hypernet-uniform01"]}


def test_candidates_are_the_hypernet_options_alone():
    from c10_10k_screen_report import is_candidate

    assert is_candidate("hypernet-onehot-draws4") and is_candidate("hypernet-uniform01-draws4")
    for name in ("map", "hypernet-uniform01", "map-s1", "map-bn-groups4", "bayes-hypernet"):
        assert not is_candidate(name)


def _queue_function(name: str) -> str:
    import re

    queue = (Path(__file__).resolve().parent.parent / "benchmarks" / "queue.sh").read_text()
    return re.search(rf"^{name}\(\) \{{\n.*?^\}}$", queue, re.S | re.M).group(0)


def test_the_queue_runs_every_screening_run_without_a_result(tmp_path):
    import subprocess

    import c10_10k_screen

    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "c10_10k_screen.py").symlink_to(benchmarks / "c10_10k_screen.py")
    names = list(c10_10k_screen.RUNS)
    done, interrupted = names[:2], names[4]
    for name in done:
        (results / f"{name}.json").write_text("{}")
    (tmp_path / "runs" / "c10-10k-screen" / interrupted).mkdir(parents=True)

    def pending(*args: str) -> list[str]:
        script = f"{_queue_function('pending_screen')}\npending_screen {' '.join(args)}"
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, check=True, env={**os.environ, "PY": sys.executable,
                                                          "SCREEN_RESULTS": str(results)}
                              ).stdout.split()

    candidates = [n for n in names if n not in done and not n.startswith("map-s")]
    assert pending("started") == [interrupted]
    assert pending("fresh") == [n for n in candidates if n != interrupted]
    assert pending("extra") == [n for n in names if n.startswith("map-s")] == \
        ["map-s1", "map-s2", "map-s3"]


def test_the_queue_pool_runs_each_job_once_over_its_workers(tmp_path):
    import subprocess

    driver = tmp_path / "fake_driver.py"
    done = str(tmp_path / "done")
    driver.write_text(f"import sys\nopen({done!r}, 'a').write(' '.join(sys.argv[2:]) + '\\n')\n")
    jobs = " ".join(f"'{driver} {name} --flag'" for name in "abcde")
    subprocess.run(["bash", "-c", f"set -euo pipefail\n{_queue_function('pool')}\npool {jobs}"],
                   env={**os.environ, "PY": sys.executable, "WORKERS": "2", "THREADS": "1",
                        "DRIVERS": "no-such-driver-runs"}, check=True, cwd=tmp_path)
    assert sorted((tmp_path / "done").read_text().splitlines()) == [
        f"{name} --flag" for name in "abcde"]


def test_the_queue_pool_never_runs_more_drivers_than_workers(tmp_path):
    """Two drivers left from an earlier queue hold both cores; when one ends, exactly one
    waiting worker may start (two that both saw the free core would make three)."""
    import subprocess
    import time

    live, log = tmp_path / "live", tmp_path / "log"
    live.mkdir()
    driver = tmp_path / "fake_c10_driver.py"
    driver.write_text(
        "import pathlib, sys, time\n"
        f"live, log = pathlib.Path({str(live)!r}), pathlib.Path({str(log)!r})\n"
        "me = live / sys.argv[2]\n"
        "me.write_text(str(time.monotonic_ns()))\n"
        "most = 0\n"
        "while me.read_text() != 'release':\n"  # the most drivers seen alive at once
        "    most = max(most, len(list(live.iterdir())))\n"
        "    time.sleep(0.02)\n"
        "with log.open('a') as f:\n"
        "    f.write(f'{sys.argv[2]} {most}\\n')\n"
        "me.unlink()\n")

    def wait_for(condition) -> None:  # an event, however long it takes
        while not condition():
            time.sleep(0.02)

    started = {}

    def running() -> list[str]:  # live drivers, oldest first
        for path in live.iterdir():
            text = path.read_text() if path.exists() else ""
            if text.isdigit():
                started.setdefault(path.name, int(text))
        return sorted((n for n in started if (live / n).exists()), key=started.get)

    left = [subprocess.Popen([sys.executable, str(driver), "--only", n]) for n in ("x1", "x2")]
    wait_for(lambda: len(running()) == 2)
    jobs = " ".join(f"'{driver} {name}'" for name in "cde")
    script = tmp_path / "queue.sh"  # not bash -c: its command line would name the driver
    script.write_text(f"set -euo pipefail\n{_queue_function('pool')}\npool {jobs}\n")
    pool = subprocess.Popen(
        ["bash", str(script)],
        env={**os.environ, "PY": sys.executable, "WORKERS": "2", "THREADS": "1",
             "DRIVERS": "fake_c10_driver[.]py", "POLL": "1"}, cwd=tmp_path)
    while pool.poll() is None or running():
        # both cores taken (or the pool done), and time for a second worker to look too: a
        # third driver would be seen by the live ones (a slow machine can only hide one)
        wait_for(lambda: len(running()) >= 2 or set("cde") <= set(started)
                 or pool.poll() is not None)
        time.sleep(3)
        names = running()
        if names:
            oldest = live / names[0]
            oldest.write_text("release")  # it ends; wait until it has
            wait_for(lambda oldest=oldest: not oldest.exists())
    for p in left:
        p.wait()
    ended = dict(line.split() for line in log.read_text().splitlines())
    assert sorted(ended) == ["c", "d", "e", "x1", "x2"] and pool.returncode == 0
    assert max(int(n) for n in ended.values()) == 2, ended
