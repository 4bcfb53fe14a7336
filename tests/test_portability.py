"""Windows, where VAST lives: the package must not depend on POSIX-only parts of Python.

Two checks. At run time, a fresh interpreter with the POSIX-only standard modules made
unimportable and the POSIX-only functions of ``os`` and ``signal`` removed imports every
module of the project and prints every command's ``--help``. In the source, no call of a
POSIX-only function hides inside a function body, where importing would not reach it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("membrane_py", "mock_vast_server")

#: standard modules that exist only on POSIX systems
POSIX_MODULES = ("fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "syslog",
                 "crypt", "spwd", "nis")
#: attributes of os and signal that Windows' Python lacks
POSIX_OS = ("fork", "forkpty", "setsid", "killpg", "getuid", "geteuid", "getgid", "getpgid",
            "setpgrp", "fchmod", "fchown", "mkfifo", "sync", "getloadavg", "register_at_fork")
POSIX_SIGNAL = ("SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD",
                "SIGPIPE", "SIGSTOP", "SIGCONT", "alarm", "setitimer", "pause", "siginterrupt")
#: keyword arguments of subprocess.Popen that Windows rejects
POSIX_KWARGS = ("preexec_fn", "start_new_session", "pass_fds")

# Third-party packages are imported first (they are tested on Windows by their authors and
# some probe os at import); then POSIX goes away and only the project's modules load.
_SCRIPT = """
import importlib, importlib.abc, os, pkgutil, signal, sys
for name in ("numpy", "scipy.ndimage", "skimage", "cv2", "torch", "onnx", "onnxruntime",
             "zarr", "tifffile", "h5py", "zmq", "dask", "distributed", "typer", "rich",
             "tqdm", "PySide6.QtWidgets", "pyqtgraph"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
BLOCKED = set({modules})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is POSIX-only")
        return None
sys.meta_path.insert(0, Block())
for name in BLOCKED:
    sys.modules.pop(name, None)
for attr in {os_attrs}:
    if hasattr(os, attr):
        delattr(os, attr)
for attr in {signal_attrs}:
    if hasattr(signal, attr):
        delattr(signal, attr)
failed = []
count = 0
for pkg in {packages}:
    root = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(root.__path__, pkg + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
            count += 1
        except Exception as exc:
            failed.append(f"{{info.name}}: {{type(exc).__name__}}: {{exc}}")
from typer.testing import CliRunner
from membrane_py.cli import app
import typer
runner = CliRunner()
group = typer.main.get_command(app)
def walk(cmd, path):
    result = runner.invoke(app, path + ["--help"])
    if result.exit_code != 0 or "Usage" not in result.output:
        failed.append(f"membrane {{' '.join(path)}} --help: exit {{result.exit_code}}")
    for name, sub in getattr(cmd, "commands", {{}}).items():
        walk(sub, path + [name])
walk(group, [])
print("imported", count)
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_and_every_help_prints_without_posix():
    script = _SCRIPT.format(modules=POSIX_MODULES, os_attrs=POSIX_OS,
                            signal_attrs=POSIX_SIGNAL, packages=PACKAGES)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    imported = int(proc.stdout.split("imported", 1)[1].split()[0])
    assert imported >= 60, proc.stdout  # the walk really reached the modules


def _posix_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each POSIX-only attribute, module or keyword used in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id == "os" and node.attr in POSIX_OS) or (
                    node.value.id == "signal" and node.attr in POSIX_SIGNAL):
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.keyword) and node.arg in POSIX_KWARGS:
            found.append((node.lineno, f"{node.arg}="))
        elif isinstance(node, ast.Constant) and node.value in ("fork", "forkserver"):
            found.append((node.lineno, f"start method {node.value!r}"))
    return found


def _platform_guarded(tree: ast.AST) -> set[int]:
    """Lines inside an ``if`` branch that tests ``sys.platform`` or ``os.name``: code there
    is allowed to be platform-specific because the other branch covers Windows."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(
                isinstance(n, ast.Attribute) and n.attr in ("platform", "name")
                and isinstance(n.value, ast.Name) and n.value.id in ("sys", "os")
                for n in ast.walk(node.test)):
            for sub in node.body + node.orelse:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def test_no_posix_only_calls_in_the_source():
    offences = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            guarded = _platform_guarded(tree)
            offences += [f"{path.relative_to(ROOT)}:{line}: {what}"
                         for line, what in _posix_uses(tree) if line not in guarded]
    assert not offences, "POSIX-only code without a Windows branch:\n" + "\n".join(offences)


def test_the_checks_catch_what_they_look_for():
    """The source check is only worth something if it flags a real POSIX-only call."""
    bad = ast.parse("import os, subprocess\ndef f():\n    os.fork()\n"
                    "    subprocess.Popen(['x'], start_new_session=True)\n")
    assert [w for _, w in _posix_uses(bad)] == ["os.fork", "start_new_session="]
    ok = ast.parse("import os, sys\nif sys.platform != 'win32':\n    os.fork()\n")
    uses = _posix_uses(ok)
    assert uses and all(line in _platform_guarded(ok) for line, _ in uses)
