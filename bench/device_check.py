"""The GPU readiness check in one call: install the missing wheels offline, run `pytest -m gpu`,
then bench/gpu_step.py at the 3B shape for vlrl and TRL, and write a JSON summary.

Two halves, because the GPU machine has no network (Python 3.12, torch + CUDA, transformers,
torchvision, accelerate, peft, pyarrow; no pydantic, math-verify, pycocotools, datasets or trl):

    python bench/device_check.py fetch                  # HERE, with network: wheels into .wheels/
    python bench/device_check.py run --out "$OUT"       # THERE, in the repository root
    python bench/device_check.py run --dry-run          # anywhere: check .wheels/, print the commands

`fetch` downloads the cp312 manylinux x86_64 wheels of PACKAGES, at the versions installed in
this environment (so the device runs what the CPU suite tested), with --no-deps: a package the
image already has is never replaced. `run` installs into a folder on PYTHONPATH only the wheels
whose package the device lacks, with src/ first for vlrl itself; transformers stays the device's
own, and tests/gpu skips, naming the versions, any family that needs a newer one. Each phase runs
under its own time limit (--pytest-timeout, --bench-timeout; together within the 10 minutes of
one device call), and the summary is written whatever failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What vlrl (and TRL, for the baseline) import that the device image lacks; None: this
# environment's version. trl is pyproject's [bench] pin, as it is usually not installed here.
PACKAGES = {
    "pydantic": None,
    "pydantic_core": None,
    "annotated_types": None,
    "typing_inspection": None,
    "math_verify": None,
    "latex2sympy2_extended": None,
    "antlr4_python3_runtime": None,
    "pycocotools": None,
    "datasets": None,
    "dill": None,
    "multiprocess": None,
    "trl": "1.16.0",
}
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# One device call runs at most 600 s: install, pytest and bench within 540, 60 for start-up and summary.
INSTALL_TIMEOUT, CALL_BUDGET = 60, 540
CARRY_LIMIT = 64 * 2**20  # what one device call carries, the project included
WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.*-(?P<platform>[^-]+)\.whl$")
TAGS_OK = ("none-any", "x86_64")  # pure Python, or built for the device's processor


def normalise(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427: runs of -_. become _)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned(name: str, version: str | None) -> str:
    """name==version, the version defaulting to the one installed here."""
    if version is None:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(
                f"device_check: {name} is not installed here, so its version is unknown"
            ) from None
    return f"{name}=={version}"


def fetch_command(wheels: Path) -> list[str]:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            "3.12", "--implementation", "cp", *platforms, "-d", str(wheels),
            *(pinned(n, v) for n, v in PACKAGES.items())]  # fmt: skip


def check_wheels(wheels: Path) -> dict[str, Path]:
    """{package: its wheel} in `wheels`: exactly one wheel per package of PACKAGES, each pure
    Python or built for x86-64, together within what one device call carries."""
    if not wheels.is_dir():
        raise SystemExit(
            f"device_check: no wheel folder {wheels} (run `python bench/device_check.py fetch` here)"
        )
    found: dict[str, list[Path]] = {}
    for path in sorted(wheels.glob("*.whl")):
        match = WHEEL.match(path.name)
        if match is None:
            raise SystemExit(f"device_check: {path}: not a wheel file name")
        if not any(tag in path.name for tag in TAGS_OK):
            raise SystemExit(f"device_check: {path}: neither pure Python nor built for x86_64")
        found.setdefault(normalise(match["name"]), []).append(path)
    missing = [n for n in PACKAGES if normalise(n) not in found]
    if missing:
        raise SystemExit(f"device_check: {wheels} has no wheel for {', '.join(missing)} (run fetch)")
    doubles = [p.name for ps in found.values() if len(ps) > 1 for p in ps]
    if doubles:
        raise SystemExit(f"device_check: {wheels}: more than one wheel of a package: {', '.join(doubles)}")
    size = sum(p.stat().st_size for ps in found.values() for p in ps)
    if size > CARRY_LIMIT // 2:  # half: the project travels in the same 64 MiB
        raise SystemExit(
            f"device_check: {wheels} holds {size / 2**20:.1f} MiB, over the 32 MiB left beside the project"
        )
    return {n: found[normalise(n)][0] for n in PACKAGES}


def lacking(packages: dict[str, Path]) -> dict[str, Path]:
    """The wheels whose package this Python does not have: only those are installed."""
    out = {}
    for name, wheel in packages.items():
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = wheel
    return out


def commands(args, wheels: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """The commands `run` executes, by phase."""
    python = sys.executable
    bench = [python, "bench/gpu_step.py", "--shape", "3b", "--steps", str(args.bench_steps), "--device",
             "cuda", "--json", str(out / "gpu_step.json")]  # fmt: skip
    return {
        "install": [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--target",
            str(args.site),
            *map(str, wheels.values()),
        ],  # fmt: skip
        "pytest": [
            python,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "-rs",
            "tests/gpu",
            "-p",
            "no:cacheprovider",
            f"--junitxml={out / 'pytest.xml'}",
        ],  # fmt: skip
        "bench": [*bench, *([] if args.no_trl else ["--trl"])],
    }


def timed(cmd: list[str], log: Path, timeout: float, env: dict) -> dict:
    """Run `cmd` with its output in `log`; {rc, seconds} (rc 124 when stopped at `timeout`)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "log": log.name}


def pytest_counts(xml: Path) -> dict:
    """Passed / failed / skipped counts and the skip reasons and failures from a JUnit file."""
    if not xml.is_file():
        return {}
    cases = ET.parse(xml).getroot().iter("testcase")
    out: dict = {"passed": 0, "failed": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            out["failed"].append(f"{name}: {(bad.get('message') or '')[:300]}")
        elif (skip := case.find("skipped")) is not None:
            out["skipped"].append(f"{name}: {skip.get('message')}")
        else:
            out["passed"] += 1
    return out


def environment() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }


def run(args) -> dict:
    out = Path(args.out) if args.out else None
    if not args.dry_run and out is None:
        raise SystemExit("device_check: run needs --out (the folder the summary goes to), or --dry-run")
    wheels = check_wheels(Path(args.wheels))
    out = out or Path("OUT")
    todo = commands(args, lacking(wheels) if not args.dry_run else wheels, out)
    if args.dry_run:
        size = sum(p.stat().st_size for p in wheels.values()) / 2**20
        print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.wheels}; the commands, from {ROOT}:")
        for phase, cmd in todo.items():
            print(f"  {phase}: {shlex.join(cmd)}")
        return {"dry_run": True, "commands": todo}
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(args.site), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    summary: dict = {"installed": sorted(lacking(wheels))}
    phases = [("install", INSTALL_TIMEOUT), ("pytest", args.pytest_timeout), ("bench", args.bench_timeout)]
    for phase, limit in phases:
        summary[phase] = timed(todo[phase], out / f"{phase}.log", limit, env)
        if phase == "install" and summary[phase]["rc"] != 0:
            break
    sys.path[:0] = [str(ROOT / "src"), str(args.site)]
    summary["environment"] = environment()
    summary["pytest"] = summary.get("pytest", {}) | pytest_counts(out / "pytest.xml")
    if (out / "gpu_step.json").is_file():
        summary["gpu_step"] = json.loads((out / "gpu_step.json").read_text())
    (out / "device_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the wheels (here, with network)")
    r = sub.add_parser(
        "run", help="install, pytest -m gpu, gpu_step at 3B, JSON summary (on the GPU machine)"
    )
    for q in (f, r):
        q.add_argument("--wheels", default=str(ROOT / ".wheels"), help="the wheel folder (git-ignored)")
    r.add_argument("--out", help="folder for device_check.json and the logs (the device tool's $OUT)")
    r.add_argument("--dry-run", action="store_true", help="check the wheels and print the commands only")
    r.add_argument("--site", default="/tmp/vlrl-site", help="where the wheels are installed")
    r.add_argument("--pytest-timeout", type=int, default=210, help="seconds for pytest -m gpu")
    r.add_argument("--bench-timeout", type=int, default=270, help="seconds for gpu_step.py (vlrl + TRL)")
    r.add_argument("--bench-steps", type=int, default=3, help="gpu_step.py --steps (at least 2)")
    r.add_argument("--no-trl", action="store_true", help="vlrl only in the benchmark")
    args = p.parse_args(argv)
    if args.command == "run":
        if args.bench_steps < 2:
            p.error("--bench-steps must be at least 2: gpu_step.py's first step is a warm-up")
        budget = CALL_BUDGET - INSTALL_TIMEOUT
        if (
            min(args.pytest_timeout, args.bench_timeout) <= 0
            or args.pytest_timeout + args.bench_timeout > budget
        ):
            p.error(f"--pytest-timeout and --bench-timeout must be positive and sum to at most {budget} s "
                    "(one device call runs at most 600 s, install and summary included)")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.command == "fetch":
        Path(args.wheels).mkdir(parents=True, exist_ok=True)
        subprocess.run(fetch_command(Path(args.wheels)), check=True)
        check_wheels(Path(args.wheels))
        return {"fetched": args.wheels}
    return run(args)


if __name__ == "__main__":
    main()
