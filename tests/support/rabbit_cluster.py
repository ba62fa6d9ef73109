"""A RabbitMQ cluster of its own for a test: N nodes on loopback, never the machine's broker.

Each node has its own name, AMQP and distribution ports, data, log and config files, and
the whole cluster its own Erlang cookie (in a HOME of its own) and its own epmd on a port
of its own: nothing is shared with the broker on 5672 but the installed program. Every
process is started here and stopped here by its PID (`rabbitmq-server` runs with
RABBITMQ_ALLOW_INPUT, so it execs the Erlang VM: the PID is the node's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import terminate

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


def cluster_available() -> bool:
    return SERVER.exists() and CTL.exists() and shutil.which("epmd") is not None


class Node:
    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.name = f"sqc{index}-{cluster.tag}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = cluster.dir / f"node{index}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            **self.cluster.env(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_MNESIA_DIR": str(self.dir / "mnesia" / "data"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
            "RABBITMQ_CONFIG_FILE": str(self.cluster.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.cluster.dir / "advanced.config"),
            "RABBITMQ_ALLOW_INPUT": "1",
            "RABBITMQ_SERVER_START_ARGS": "-noinput",
        }

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "console.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(SERVER)],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )

    def kill(self) -> None:
        """kill -9 of the node's VM, as a crash or a power cut would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        terminate(self.proc, timeout=60)

    def answers(self) -> bool:
        """The node accepts TCP on its AMQP port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        logs = [*sorted((self.dir / "log").glob("*.log")), self.dir / "console.log"]
        out = []
        for path in logs:
            if path.exists():
                out.append(f"-- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(out)


class RabbitCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.dir = base
        self.epmd_port = free_port()
        self.epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [Node(self, i + 1) for i in range(size)]

    @property
    def url(self) -> str:
        """`[amqp] url` naming every node."""
        return ",".join(node.url for node in self.nodes)

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.dir / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _write_files(self) -> None:
        home = self.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("# this cluster's own (empty)\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "advanced.config").write_text("[].\n")
        peers = "\n".join(
            f"cluster_formation.classic_config.nodes.{i} = {node.name}"
            for i, node in enumerate(self.nodes, 1)
        )
        (self.dir / "rabbitmq.conf").write_text(
            "cluster_formation.peer_discovery_backend = classic_config\n"
            f"{peers}\n"
            "cluster_formation.randomized_startup_delay_range.min = 0\n"
            "cluster_formation.randomized_startup_delay_range.max = 1\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def start(self, timeout: float = 240.0) -> None:
        """The first node alone, then the others, which join it; returns once all run."""
        self._write_files()
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        first, *others = self.nodes
        first.start()
        self.wait_running([first], timeout)
        for node in others:
            node.start()
        self.wait_running(self.nodes, timeout)

    def wait_running(self, nodes: list[Node], timeout: float = 180.0) -> None:
        """Until every node answers and the cluster lists them all as running."""
        deadline = time.monotonic() + timeout
        names = {node.name for node in nodes}
        while True:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"{node.name} exited:\n{node.log_tail()}")
            if all(node.answers() for node in nodes) and names <= self.running_nodes(nodes[0]):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(node.log_tail() for node in nodes)
                raise TimeoutError(f"cluster not running after {timeout}s:\n{tails}")
            time.sleep(1.0)

    def running_nodes(self, via: Node) -> set[str]:
        done = subprocess.run(
            [str(CTL), "-n", via.name, "cluster_status", "--formatter", "json"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            return set()
        return set(json.loads(done.stdout).get("running_nodes", []))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        terminate(self.epmd, timeout=10)
