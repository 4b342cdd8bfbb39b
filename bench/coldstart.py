"""Cold starts in a fresh interpreter each time.

A function's init is importing its handler module as Lambda does (its directory on sys.path,
then ``app``), with the environment template.yaml gives the function: everything its module
level does (imports, powertools objects, boto3 clients). ``compare`` times pieces of code
(bench/run.py: init plus the first request) against a baseline in shuffled, interleaved rounds;
``breakdowns`` says where each function's import time goes. Interpreter start-up is the same
for every piece and is excluded (measured in-process with perf_counter).
"""
import os
import random
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HANDLER = """import sys
sys.path.insert(0, {code_dir!r})
import {module}
"""
TIMED = """import time
_t0 = time.perf_counter()
{code}
print(time.perf_counter() - _t0)
"""


def _env(function_env: dict) -> dict:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**base, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", **function_env}


def _run(code: str, env: dict, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parents[1])


def _time(code: str, env: dict) -> float:
    return float(_run(TIMED.format(code=code), env).stdout.strip().splitlines()[-1])


def handler_code(fn) -> str:
    return HANDLER.format(code_dir=str(fn.module_path.parent), module=fn.module_path.stem)


def import_breakdown(code: str, env: dict, top: int = 3) -> list[tuple[str, float]]:
    """Self import time grouped by top-level package (``-X importtime``), largest first, as shares."""
    err = _run(code, env, "-X", "importtime").stderr
    by_pkg: dict[str, int] = defaultdict(int)
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            by_pkg[m.group(2).split(".")[0]] += int(m.group(1))
    total = sum(by_pkg.values()) or 1
    return [(pkg, us / total) for pkg, us in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]]


def compare(baseline: str, jobs: dict[str, tuple[str, dict]], rounds: int, seed: int = 8) -> dict:
    """Median time of each job's code ÷ median time of ``baseline`` (plain environment),
    runs shuffled together round after round so that noise hits both alike."""
    rng = random.Random(seed)
    plain_env = _env({})
    _time(baseline, plain_env)  # warm the .pyc caches
    failed = {}
    for lid, (code, env) in list(jobs.items()):
        try:
            _time(code, env)
        except subprocess.CalledProcessError as exc:  # reported, not fatal: the other figures stand
            failed[lid] = exc.stderr.strip().splitlines()[-1][:200]
            jobs = {k: v for k, v in jobs.items() if k != lid}
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        order = [*jobs, *["<baseline>"] * 3]
        rng.shuffle(order)
        for lid in order:
            code, env = (baseline, plain_env) if lid == "<baseline>" else jobs[lid]
            samples[lid].append(_time(code, env))
    base = statistics.median(samples.pop("<baseline>"))
    return {"baseline_ms": base * 1000, "failed": failed,
            "functions": {lid: {"ratio": statistics.median(t) / base, "spread": (min(t) / base, max(t) / base)}
                          for lid, t in samples.items()}}


def breakdowns(functions: dict) -> dict:
    """functions: logical id -> runtime Function (module_path, env): the largest shares of its init's import time."""
    return {lid: import_breakdown(handler_code(fn), _env(fn.env)) for lid, fn in functions.items()}
