"""bench/device_check.py on the CPU: its wheel-folder checks, arguments, dry run and summary parts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from device_check import PACKAGES, fetch_command, main, pytest_counts

SCRIPT = [str(Path(__file__).resolve().parents[2] / "bench" / "device_check.py")]


def fake_wheels(folder, packages=PACKAGES):
    """One empty, correctly named wheel per package (the checks read names and sizes only)."""
    folder.mkdir(exist_ok=True)
    for name in packages:
        tag = "cp312-cp312-manylinux2014_x86_64" if name == "pydantic_core" else "py3-none-any"
        (folder / f"{name}-1.0-{tag}.whl").write_bytes(b"")
    return folder


def test_dry_run_checks_the_wheels_and_prints_every_command(tmp_path):
    """The real command line, as a session would call it: the install, pytest and bench commands."""
    wheels = fake_wheels(tmp_path / "w")
    proc = subprocess.run(
        [sys.executable, *SCRIPT, "run", "--dry-run", "--wheels", str(wheels)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{len(PACKAGES)} wheels, 0.0 MiB" in out
    assert "install: " in out and "--no-index --no-deps" in out and "trl-1.0-py3-none-any.whl" in out
    assert "pytest: " in out and "-m gpu" in out
    assert "bench: " in out and "gpu_step.py --shape 3b" in out and "--trl" in out


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        (lambda w: (w / "trl-1.0-py3-none-any.whl").unlink(), "has no wheel for trl"),
        (lambda w: (w / "trl-1.1-py3-none-any.whl").write_bytes(b""), "more than one wheel of a package"),
        (
            lambda w: (w / "dill-2.0-cp312-cp312-macosx_11_0_arm64.whl").write_bytes(b""),
            "neither pure Python",
        ),
        # 33 MiB (a sparse file): over the half of the 64 MiB carry the project leaves.
        (lambda w: (w / "datasets-1.0-py3-none-any.whl").open("wb").truncate(33 * 2**20), "over the 32 MiB"),
    ],
)
def test_a_bad_wheel_folder_is_refused_naming_the_problem(tmp_path, arrange, message):
    wheels = fake_wheels(tmp_path / "w")
    arrange(wheels)
    with pytest.raises(SystemExit, match=message):
        main(["run", "--dry-run", "--wheels", str(wheels)])


def test_missing_wheel_folder_says_to_fetch(tmp_path):
    with pytest.raises(SystemExit, match=r"no wheel folder .* \(run `python bench/device_check.py fetch`"):
        main(["run", "--dry-run", "--wheels", str(tmp_path / "none")])


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--dry-run", "--bench-steps", "1"],
        ["run", "--dry-run", "--pytest-timeout", "300", "--bench-timeout", "300"],  # 600 > 480 s
        ["run", "--dry-run", "--pytest-timeout", "0"],
        ["check"],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_run_without_out_or_dry_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="run needs --out"):
        main(["run", "--wheels", str(fake_wheels(tmp_path / "w"))])


def test_fetch_asks_pip_for_cp312_x86_64_wheels_at_this_environments_versions(tmp_path):
    import pydantic

    cmd = fetch_command(tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux2014_x86_64" in cmd
    assert f"pydantic=={pydantic.VERSION}" in cmd and "trl==1.16.0" in cmd


def test_pytest_counts_read_passes_skips_and_failures(tmp_path):
    xml = tmp_path / "p.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><skipped message="needs a CUDA device"/></testcase>'
        '<testcase classname="t" name="c"><failure message="assert 9 &lt;= 7"/></testcase>'
        '<testcase classname="t" name="d"><error message="fixture broke"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert pytest_counts(xml) == {
        "passed": 1,
        "skipped": ["t::b: needs a CUDA device"],
        "failed": ["t::c: assert 9 <= 7", "t::d: fixture broke"],
    }
    assert pytest_counts(tmp_path / "absent.xml") == {}
