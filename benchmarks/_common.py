"""What the benchmarks share: a private network namespace, free loopback ports, git
worktrees of the code under test, and starting the node from one (its imports checked)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
NS_FLAG = "PACS_NODE_BENCH_NETNS"
# Runs the node's CLI from whatever ``pacs_node`` the path finds first (PYTHONPATH = a
# worktree) and says where its packages came from, as the first line of the node's log.
LAUNCHER = ("import sys, pacs_node.cli, storage; "
            "print('bench-import', pacs_node.cli.__file__, storage.__file__, flush=True); "
            "sys.argv[0] = 'pacs-node'; sys.exit(pacs_node.cli.main())")


def in_private_netns() -> None:
    """Re-execute the running script inside ``unshare -n`` with only loopback up."""
    if os.environ.get(NS_FLAG) == "1":
        return
    os.environ[NS_FLAG] = "1"
    cmd = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "bash",
           sys.executable, str(Path(sys.argv[0]).resolve()), *sys.argv[1:]]
    os.execvp("unshare", cmd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(*args: str) -> str:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout.strip()


def node_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def check_imports(src: Path, packages: tuple[str, ...] = ("pacs_node", "storage")) -> None:
    """Stop unless the venv's interpreter, with PYTHONPATH and cwd ``src``, imports
    ``packages`` from ``src`` (and not the editable install in REPO)."""
    code = (f"import json, {', '.join(packages)}; print(json.dumps("
            f"[m.__file__ for m in ({', '.join(packages)},)]))")
    r = subprocess.run([str(PYTHON), "-c", code], cwd=src, env=node_env(src),
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        sys.exit(f"importing the packages from {src} failed:\n{r.stdout}{r.stderr}")
    wrong = [f for f in json.loads(r.stdout.splitlines()[-1])
             if not Path(f).is_relative_to(src)]
    if wrong:
        sys.exit(f"with PYTHONPATH={src} these modules come from elsewhere: {wrong}")


def version(cmd: list[str], pattern: str) -> str:
    """The version a tool prints, or "?"."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return "?"
    m = re.search(pattern, out)
    return m.group(1) if m else "?"
