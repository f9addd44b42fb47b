"""The sandbox with the host as a non-root user (issue 26): the red-team suite once more, as ``nobody``.

CI runs as root, where every session gets a uid of its own and a hard process cap. A user's host is
usually not root: cells then run with the host's uid, RLIMIT_NPROC is soft only, and the network
namespace needs unprivileged user namespaces. When this test runs as root, it re-runs
tests/test_repl_redteam.py as ``nobody`` (``setpriv``, else ``runuser``) and checks the layers report
there (docs/sandbox.md, "Running as a non-root host"). As a non-root user it has nothing to add
(the suite itself already runs non-root) and skips.

``nobody`` must be able to read the checkout and run an interpreter with this environment's
packages. The interpreter of this process is used when ``nobody`` can run it; otherwise (a venv whose
interpreter lives under a private home, as with pyenv in /root) a small venv of a system interpreter
of the same Python version is made in /tmp whose ``.pth`` points at this environment's packages.
Where none of that is possible the test skips and says which path ``nobody`` cannot reach.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the packages, and a session: the interpreter must also start the sandbox's own process
PROBE = ("import warnings; warnings.simplefilter('ignore'); import pytest; from repl import Sandbox\n"
         "with Sandbox() as sb:\n    assert sb.run('1 + 1').value == '2'")


def _as_nobody() -> list[str]:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user 'nobody' on this machine")
    group = next((g for g in ("nogroup", "nobody") if _group_exists(g)), None)
    if group and shutil.which("setpriv"):
        return [shutil.which("setpriv"), "--reuid=nobody", f"--regid={group}", "--clear-groups", "--"]
    if shutil.which("runuser"):
        return [shutil.which("runuser"), "-u", "nobody", "--"]
    pytest.skip("neither setpriv nor runuser is installed: cannot re-run the suite as 'nobody'")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _run(runas: list[str], argv: list[str], home: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    return subprocess.run(runas + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _unreachable(path: Path) -> Path | None:
    """The first folder on the way to ``path`` that 'nobody' cannot enter (others have no x bit)."""
    for p in [*reversed(path.parents), path]:
        try:
            if p.is_dir() and not os.stat(p).st_mode & 0o001:
                return p
        except OSError:
            return p
    return None


def _shim_venv(runas: list[str], work: Path) -> tuple[str | None, str]:
    """A venv in ``work`` made from a system interpreter 'nobody' can run, that sees this
    environment's packages and the checkout through a .pth file. (python, why not)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for base in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.path.exists(base):
            continue
        if _run(runas, [base, "-c", "print(1)"], str(work)).returncode != 0:
            tried.append(f"{base} (not runnable by nobody)")
            continue
        venv = work / "venv"
        made = subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                              timeout=120, check=False)
        if made.returncode != 0:
            tried.append(f"{base} (venv failed: {made.stderr.strip()[-200:]})")
            continue
        site = venv / "lib" / version / "site-packages"
        paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(ROOT)}
        (site / "latent_briefing_nonroot.pth").write_text("\n".join(sorted(paths)) + "\n")
        for d, _dirs, files in os.walk(work):  # readable by nobody whatever the umask; never through a link
            os.chmod(d, 0o755)
            for f in files:
                path = os.path.join(d, f)
                if not os.path.islink(path):  # bin/python links to the system interpreter: leave it alone
                    os.chmod(path, 0o644)
        return str(venv / "bin" / "python"), ""
    return None, "no system " + version + " that nobody can run" + (f" ({'; '.join(tried)})" if tried else "")


@pytest.fixture(scope="module")
def nobody():
    if os.getuid() != 0:
        pytest.skip("the host is not root: the red-team suite already runs as a non-root user")
    runas = _as_nobody()
    blocked = _unreachable(ROOT)
    if blocked is not None:
        pytest.skip(f"'nobody' cannot enter {blocked} (mode {oct(os.stat(blocked).st_mode & 0o777)}), on the "
                    f"way to the checkout {ROOT}: run the suite from a checkout others can read")
    work = Path(tempfile.mkdtemp(prefix="lb-nonroot-", dir="/tmp"))
    try:
        os.chmod(work, 0o755)
        python = sys.executable
        probe = _run(runas, [python, "-c", PROBE], str(work))
        if probe.returncode != 0:
            why_direct = (probe.stderr.strip().splitlines() or ["?"])[-1]
            python, why = _shim_venv(runas, work)
            if python is None:
                pytest.skip(f"'nobody' cannot run {sys.executable} ({why_direct}) and {why}")
            probe = _run(runas, [python, "-c", PROBE], str(work))
            if probe.returncode != 0:
                pytest.skip(f"'nobody' cannot import the sandbox's packages: {probe.stderr.strip()[-300:]}")
        basetemp = work / "pytest"
        basetemp.mkdir()
        os.chmod(basetemp, 0o777)
        yield runas, python, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_layers_report_as_non_root(nobody):
    runas, python, work = nobody
    code = "import repl; r = repl.layers(); print(r.text()); print(r.model_dump_json())"
    proc = _run(runas, [python, "-c", code], str(work), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *text, last = proc.stdout.strip().splitlines()
    print("\n".join(text))
    report = json.loads(last)
    assert report["uid"] == pwd.getpwnam("nobody").pw_uid
    state = {la["name"]: la for la in report["layers"]}
    assert not state["uid"]["active"] and "not root" in state["uid"]["detail"]
    assert not state["rlimit_nproc"]["active"] and "soft" in state["rlimit_nproc"]["detail"]
    assert all(state[n]["active"] for n in ("policy", "process", "rlimits")), state
    for name in ("network", "landlock", "seccomp"):  # active, or missing with a reason
        assert state[name]["active"] or state[name]["detail"], state[name]


@pytest.mark.slow  # about 45 s: `make test` (CI) runs it, the fast tier (-m "not slow") does not
def test_redteam_suite_as_non_root(nobody):
    runas, python, work = nobody
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(work / "pytest" / "run"),
            "-W", "ignore::RuntimeWarning", "tests/test_repl_redteam.py"]
    proc = _run(runas, argv, str(work), timeout=600)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    print(f"red-team suite as nobody: {summary}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary
