"""A real single-node Slurm cluster with accounting, started from a temp dir, for tests.

Needs Debian's `slurm-wlm munge slurmdbd mariadb-server` (.ci/run installs them). Runs as root,
without systemd: munged, a MariaDB bound to 127.0.0.1, slurmdbd, slurmctld and slurmd, each
with its own socket/port/log/pid files under the cluster's folder, on free ports so that several
clusters can run on one machine. Accounting is what lets submitit see a cancelled job (without
it, submitit waits forever on one).

    python tests/slurm_cluster.py start /tmp/slurm    # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop /tmp/slurm

From Python: `with LocalSlurm(folder) as cluster: subprocess.run([...], env=cluster.env)`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REQUIRED = ("sbatch", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sacctmgr")
PASSWORD = "genlab-test-only"


def missing_tools() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [tool for tool in REQUIRED if shutil.which(tool, path=search) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class LocalSlurm:
    def __init__(self, root: str | Path, cpus: int | None = None, name: str = "genlab"):
        self.root = Path(root).resolve()
        # At least 4 "CPUs" even on a 2-core machine (slurmd takes the configured count,
        # SlurmdParameters=config_overrides): two 2-task DDP test jobs then run at once.
        self.cpus = cpus or max(4, os.cpu_count() or 4)
        self.name = name
        self.procs: list[subprocess.Popen] = []
        self.pidfiles: list[Path] = []
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]),
            "SLURM_CONF": str(self.root / "slurm.conf"),
        }

    # -- helpers ---------------------------------------------------------------------------------
    def _run(self, *cmd, check=True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(cmd), env=self.env, check=check, capture_output=True, text=True, **kw
        )

    def _wait(self, what: str, ready, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.3)
        logs = "\n".join(
            f"--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(self.root.glob("*.log"))
        )
        raise RuntimeError(f"local Slurm: {what} did not come up in {timeout:.0f}s\n{logs}")

    # -- the daemons -----------------------------------------------------------------------------
    def _munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.munge_socket = d / "munge.socket"
        self._run(
            "munged",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--log-file={self.root / 'munged.log'}",
            f"--pid-file={d / 'munged.pid'}",
            f"--seed-file={d / 'munged.seed'}",
            "--force",
        )
        self.pidfiles.append(d / "munged.pid")
        self._wait("munged", self.munge_socket.exists)

    def _mariadb(self) -> None:
        d = self.root / "mysql"
        self.db_port = free_port()
        self.db_socket = self.root / "mysql.sock"
        self._run(
            "mariadb-install-db",
            f"--datadir={d}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        )
        log = open(self.root / "mariadb.log", "w")  # noqa: SIM115 (the daemon's, kept open)
        self.procs.append(
            subprocess.Popen(
                [
                    "mariadbd",
                    "--no-defaults",
                    f"--datadir={d}",
                    "--user=root",
                    f"--socket={self.db_socket}",
                    f"--port={self.db_port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={self.root / 'mariadb.pid'}",
                    "--innodb-buffer-pool-size=32M",
                    "--skip-log-bin",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        self._wait("MariaDB", self.db_socket.exists)
        sql = (
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{PASSWORD}';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
            "FLUSH PRIVILEGES;"
        )
        self._run("mariadb", "--no-defaults", f"--socket={self.db_socket}", "-uroot", "-e", sql)

    def _write_configs(self) -> None:
        r = self.root
        for sub in ("state", "spool"):
            (r / sub).mkdir(exist_ok=True)
        self.dbd_port, self.ctld_port, self.slurmd_port = free_port(), free_port(), free_port()
        dbd = r / "slurmdbd.conf"
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={self.dbd_port}",
                    "SlurmUser=root",
                    f"LogFile={r / 'slurmdbd.log'}",
                    f"PidFile={r / 'slurmdbd.pid'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.db_port}",
                    "StorageUser=slurm",
                    f"StoragePass={PASSWORD}",
                    "StorageLoc=slurm_acct_db",
                    "",
                ]
            )
        )
        os.chmod(dbd, 0o600)  # slurmdbd refuses a readable config (it holds a password)
        (r / "slurm.conf").write_text(
            "\n".join(
                [
                    f"ClusterName={self.name}",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={self.ctld_port}",
                    f"SlurmdPort={self.slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MpiDefault=none",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=localhost",
                    f"AccountingStoragePort={self.dbd_port}",
                    # slurmdbd ignores AuthInfo for this link: the munge socket goes here.
                    f"AccountingStoragePass={self.munge_socket}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'slurmd.log'}",
                    "KillWait=10",
                    "MinJobAge=30",
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=20000 "
                    "State=UNKNOWN",
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def start(self) -> LocalSlurm:
        if missing_tools():
            raise RuntimeError(f"Slurm tools missing: {', '.join(missing_tools())}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._munge()
        self._mariadb()
        self._write_configs()
        r = self.root
        self._run("slurmdbd")  # reads slurmdbd.conf beside $SLURM_CONF
        self.pidfiles.append(r / "slurmdbd.pid")
        self._wait(
            "slurmdbd",
            lambda: self._run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
        )
        self._run("sacctmgr", "-i", "add", "cluster", self.name, check=False)
        self._run("slurmctld", "-f", str(r / "slurm.conf"))
        self.pidfiles.append(r / "slurmctld.pid")
        self._run("slurmd", "-f", str(r / "slurm.conf"), "-N", "localhost")
        self.pidfiles.append(r / "slurmd.pid")
        self._wait("the node", lambda: "idle" in self._run("sinfo", "-h", check=False).stdout)
        return self

    def stop(self) -> None:
        if (self.root / "slurm.conf").exists():
            self._run("scancel", "--user=root", check=False)
            # Let the jobs' step daemons finish and report before slurmd goes away.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queue = self._run("squeue", "-h", check=False, timeout=10)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        pids = []
        for pidfile in reversed(self.pidfiles or self._known_pidfiles()):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        deadline = time.monotonic() + 15
        for pid in pids:  # a daemon still busy after 15 s is killed: nothing is left behind
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in self._own_step_daemons():  # a slurmstepd orphaned by its slurmd
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not self.procs:  # stopped from another process: MariaDB by its pid file
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.root / "mariadb.pid").read_text().strip()), signal.SIGTERM)

    def _own_step_daemons(self) -> list[int]:
        """slurmstepd processes of this cluster (their environment names its slurm.conf)."""
        mine = f"SLURM_CONF={self.root / 'slurm.conf'}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if not (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                    continue
                if mine in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def _known_pidfiles(self) -> list[Path]:
        r = self.root
        return [
            r / "munge" / "munged.pid",
            r / "slurmdbd.pid",
            r / "slurmctld.pid",
            r / "slurmd.pid",
        ]

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        print(__doc__)
        sys.exit(2)
    cluster = LocalSlurm(sys.argv[2])
    if sys.argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.root / 'slurm.conf'}")
    else:
        cluster.stop()
