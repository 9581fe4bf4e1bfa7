"""Shared fixtures: where the binaries under test and the reference data live.

INFERNO_BIN_DIR picks the build to test (make test points it at the
sanitized build); INFERNO_REFERENCE_DIR the ground truth (../shared/reference).
"""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bin_dir():
    d = pathlib.Path(os.environ.get("INFERNO_BIN_DIR", ROOT / "build" / "bin"))
    if not d.is_dir():
        pytest.fail(f"binaries not built: {d} (run make)")
    return d


@pytest.fixture(scope="session")
def tests_dir(bin_dir):
    return bin_dir.parent / "tests"


@pytest.fixture(scope="session")
def ref_dir():
    d = pathlib.Path(os.environ.get("INFERNO_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
    if not (d / "tinyA-f32.gguf").exists():
        pytest.fail(f"reference data missing: {d}")
    return d


def run(*args, skip_unsupported_kernels=False, **kw):
    """Runs a command, failing the test with its stderr when it fails. With
    skip_unsupported_kernels, a command given --kernels that the engine refuses
    because this CPU lacks that instruction set (its own check, in
    worker-cpu/kernels_*.c) skips the test instead: CI machines differ."""
    p = subprocess.run([str(a) for a in args], capture_output=True, **kw)
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace")
        if skip_unsupported_kernels and "not supported by this CPU" in err:
            pytest.skip(err.strip())
        pytest.fail(f"{args[0]} exited {p.returncode}: {err}")
    return p
