"""bench/bench.py's command line: it takes minutes and rewrites bench/RESULTS.md,
so anything but a plain run prints its usage and stops before measuring."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


def run(*args, only=None):
    env = {k: v for k, v in os.environ.items() if k != "BENCH_ONLY"}
    if only is not None:
        env["BENCH_ONLY"] = only
    return subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=60)


def test_help_prints_the_usage_and_measures_nothing():
    result = run("--help")
    assert result.returncode == 0
    assert "BENCH_ONLY=full|incremental|startup|scale|reapply" in result.stdout
    assert "rewrites bench/RESULTS.md" in result.stdout


def test_an_unknown_argument_or_section_is_refused():
    for result, quoted in ((run("scale"), "'scale'"), (run(only="scal"), "BENCH_ONLY='scal'")):
        assert result.returncode != 0
        assert quoted in result.stderr and "usage: bench.py" in result.stderr
        assert "natmap benchmarks" not in result.stdout  # it did not start
