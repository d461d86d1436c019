"""A real single-node Slurm cluster with accounting, started from a temp dir, for tests.

Needs Debian's `slurm-wlm munge slurmdbd mariadb-server` (.ci/run installs them). Runs as root,
without systemd: munged, a MariaDB bound to 127.0.0.1, slurmdbd, slurmctld and slurmd, each
with its own socket/port/log/pid files under the cluster's folder, on free ports so that several
clusters can run on one machine. Accounting is what lets submitit see a cancelled job (without
it, submitit waits forever on one).

    python tests/slurm_cluster.py start /tmp/slurm    # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py start /tmp/slurm2 --nodes 2
    python tests/slurm_cluster.py stop /tmp/slurm

From Python: `with LocalSlurm(folder) as cluster: subprocess.run([...], env=cluster.env)`.

`LocalSlurm(folder, nodes=2)` (`start /tmp/slurm --nodes 2`) simulates a cluster of several
nodes (`NodeNetwork`): node1, node2, ... each run a slurmd in a network namespace of their own,
with their own address (10.213.<n>.2, .3, ...), hostname (a UTS namespace) and /etc/hosts
(the cluster folder's `hosts`, naming every node, bound over /etc/hosts in a mount namespace of
the node's own), joined by a bridge on this machine, whose address (10.213.<n>.1) is
slurmctld's. Traffic between ranks on two nodes crosses a real network hop (veth, bridge,
veth); nothing else than those addresses and loopback is used. The file system is shared, as a
cluster's home. `stop` kills what runs in the namespaces and deletes them and the bridge (also
from another process, which reads them back from network.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REQUIRED = ("sbatch", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sacctmgr")
MULTI_NODE = ("ip", "nsenter", "unshare")  # iproute2, util-linux
PASSWORD = "genlab-test-only"


def missing_tools(nodes: int = 1) -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    tools = REQUIRED + (MULTI_NODE if nodes > 1 else ())
    return [tool for tool in tools if shutil.which(tool, path=search) is None]


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


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class NodeNetwork:
    """Network namespaces for simulated nodes, joined by a bridge (see the module doc)."""

    def __init__(self, nodes: int, octet: int | None = None):
        self.nodes = nodes
        self.octet = octet if octet is not None else self._free_octet()
        self.bridge = f"glbr{self.octet}"
        self.names = [f"node{i + 1}" for i in range(nodes)]
        self.namespaces = [f"genlab{self.octet}{name}" for name in self.names]
        self.addresses = [f"10.213.{self.octet}.{i + 2}" for i in range(nodes)]
        self.host_address = f"10.213.{self.octet}.1"
        # What this object made (all of it when read back from network.json): a create() that
        # failed, e.g. on a name another cluster took at the same moment, removes only that.
        self.made: set[str] = set()

    @staticmethod
    def _free_octet() -> int:
        """A 10.213.<n>.0/24 that no interface, route or other cluster's namespace uses."""
        used = _ip("-4", "addr").stdout + _ip("-4", "route").stdout + _ip("netns").stdout
        start = os.getpid() % 200  # clusters started at once by parallel tests rarely collide
        for k in range(200):
            octet = 20 + (start + k) % 200
            if f"10.213.{octet}." not in used and f"genlab{octet}node" not in used:
                return octet
        raise RuntimeError("no free 10.213.<n>.0/24 subnet for the simulated nodes")

    def create(self, hosts_file: Path) -> None:
        prefix = f"10.213.{self.octet}"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.made.add(self.bridge)
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self.hosts_file = hosts_file
            hosts_file.write_text(
                "127.0.0.1 localhost\n"
                + "".join(f"{a} {n}\n" for a, n in zip(self.addresses, self.names, strict=True))
            )
            for i, (ns, addr) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
                veth = f"glve{self.octet}n{i + 1}"
                _ip("netns", "add", ns)
                self.made.add(ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as err:
            self.delete()
            raise RuntimeError(
                f"simulated nodes: `{' '.join(err.cmd)}` failed ({prefix}.0/24): "
                f"{err.stderr.strip()}"
            ) from None

    def run_in(self, i: int, *cmd: str) -> list[str]:
        """`cmd` on node i: in its network namespace, with a hostname of its own (the name gloo
        and NCCL resolve to find the address they offer the other ranks) and the nodes' hosts
        file over /etc/hosts in a mount namespace of its own (private: this machine's
        /etc/hosts is left alone). Not `ip netns exec`, which also mounts a fresh /sys without
        the cgroup file system slurmd needs."""
        inner = f"mount --bind {self.hosts_file} /etc/hosts && hostname {self.names[i]}"
        return ["nsenter", f"--net=/run/netns/{self.namespaces[i]}", "unshare", "--mount",
                "--uts", "sh", "-c", inner + ' && exec "$@"', "sh", *cmd]  # fmt: skip

    def processes(self) -> list[int]:
        pids = []
        for ns in self.namespaces:
            if ns not in self.made:
                continue
            out = _ip("netns", "pids", ns, check=False).stdout
            pids += [int(p) for p in out.split() if p.isdigit()]
        return pids

    def delete(self) -> None:
        for pid in self.processes():  # only what the cluster started there (slurmd, its jobs)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for ns in self.namespaces:
            if ns in self.made:
                _ip("netns", "del", ns, check=False)
        if self.bridge in self.made:
            _ip("link", "del", self.bridge, check=False)  # (the veths went with their namespaces)
        self.made.clear()

    def to_json(self) -> str:
        return json.dumps({"nodes": self.nodes, "octet": self.octet})

    @classmethod
    def from_json(cls, text: str) -> NodeNetwork:
        data = json.loads(text)
        network = cls(data["nodes"], data["octet"])
        network.made = {network.bridge, *network.namespaces}
        return network


class LocalSlurm:
    def __init__(
        self, root: str | Path, cpus: int | None = None, name: str = "genlab", nodes: int = 1
    ):
        self.root = Path(root).resolve()
        self.nodes = nodes
        self.network: NodeNetwork | None = None  # made by start() when nodes > 1
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
        for sub in ("state", "spool", *(f"spool/{n}" for n in self._node_names())):
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
        if self.network is None:
            ctld, nodes = "127.0.0.1", [("localhost", "127.0.0.1")]
        else:  # slurmctld on the bridge: reachable from this machine and from every node
            ctld = self.network.host_address
            nodes = list(zip(self.network.names, self.network.addresses, strict=True))
        node_lines = [
            f"NodeName={name} NodeAddr={addr} CPUs={self.cpus} RealMemory=20000 State=UNKNOWN"
            for name, addr in nodes
        ]
        names = ",".join(name for name, _ in nodes)
        (r / "slurm.conf").write_text(
            "\n".join(
                [
                    f"ClusterName={self.name}",
                    f"SlurmctldHost=localhost({ctld})",
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
                    f"SlurmdSpoolDir={r / 'spool' / '%n'}",  # one per slurmd
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.%n.pid'}",  # %n: the node's name
                    f"SlurmctldLogFile={r / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'slurmd.%n.log'}",
                    "KillWait=30",  # Slurm's default: genlab closes W&B within 20 s of a signal
                    "MinJobAge=30",
                    *node_lines,
                    f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _node_names(self) -> list[str]:
        return ["localhost"] if self.network is None else self.network.names

    def start(self) -> LocalSlurm:
        if missing_tools(self.nodes):
            raise RuntimeError(f"Slurm tools missing: {', '.join(missing_tools(self.nodes))}")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            return self._start()
        except BaseException:  # a daemon that did not come up: stop what did, then say why
            self.stop()
            raise

    def _start(self) -> LocalSlurm:
        if self.nodes > 1:
            self.network = NodeNetwork(self.nodes)
            # Written first: `stop` from another process (or after a crash) finds it.
            (self.root / "network.json").write_text(self.network.to_json())
            self.network.create(self.root / "hosts")
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
        if self.network is None:
            self._run("slurmd", "-f", str(r / "slurm.conf"), "-N", "localhost")
            self.pidfiles.append(r / "slurmd.localhost.pid")
        else:
            for i, node in enumerate(self.network.names):
                self._run(
                    *self.network.run_in(i, "slurmd", "-f", str(r / "slurm.conf"), "-N", node)
                )
                self.pidfiles.append(r / f"slurmd.{node}.pid")

        def all_idle() -> bool:
            states = self._run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
            return len(states) == self.nodes and all(s == "idle" for s in states)

        self._wait("the nodes", all_idle)
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
        network = self.network
        if network is None and (self.root / "network.json").exists():
            network = NodeNetwork.from_json((self.root / "network.json").read_text())
        if network is not None:
            network.delete()
            (self.root / "network.json").unlink(missing_ok=True)
            self.network = None

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
            *sorted(r.glob("slurmd.*.pid")),
        ]

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    count = 1
    if len(args) == 4 and args[2] == "--nodes" and args[3].isdigit():
        count, args = int(args[3]), args[:2]
    if len(args) != 2 or args[0] not in ("start", "stop"):
        print(__doc__)
        sys.exit(2)
    cluster = LocalSlurm(args[1], nodes=count)
    if args[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.root / 'slurm.conf'}")
    else:
        cluster.stop()
