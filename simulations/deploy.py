"""`python -m fl_defense.simulations.deploy`: the same ServerApp and ClientApp under Flower's deployment engine.

A SuperLink and N SuperNodes run as separate processes on this machine, talking over TLS (a throwaway CA
and a server certificate for 127.0.0.1/localhost) with SuperNode authentication on (each SuperNode signs
with its own EC key, whose public half is registered with the SuperLink before the node starts). The app is
submitted with `flwr run`, exactly as it would be to a remote SuperLink; the script waits for results.json
to hold every round and then stops every process it started, also on an error or Ctrl-C.

With `--prepare-only` it just writes the certificates and keys (for other host names with `--san`), for a
deployment across machines (README, "Deployment").
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fl_defense.config import resolve
from fl_defense.errors import ConfigError
from fl_defense.simulations.fleet_gate import Gate, serve_in_thread
from fl_defense.simulations.flwr_local import stop as stop_home

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FEDERATION = "fl-defense-deploy"
DEFAULT_SANS = ("127.0.0.1", "localhost")
RUN_TIMEOUT_S = 3600.0
START_TIMEOUT_S = 60.0
STATUS_EVERY_S = 10.0  # each `flwr ls` costs a CPU second


class DeployError(RuntimeError):
    """A step of the deployment failed; the message names the step and its log."""


@dataclass(frozen=True)
class Material:
    """Where the certificates and SuperNode keys of one deployment are."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # OpenSSH private keys; the public key is beside each, with ".pub"


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_material(folder: Path, supernodes: int, sans: tuple[str, ...] = DEFAULT_SANS,
                  keep_ca_key: bool = False) -> Material:
    """A CA, a server certificate valid for `sans`, and one P-384 key pair per SuperNode. The CA's private key is
    written only with `keep_ca_key` (`--prepare-only`, for an operator who signs more later); else it never
    leaves memory, so nobody who reads the folder can issue a certificate the deployment trusts.

    Flower 1.41 wants the SuperNode's private key in OpenSSH format (`--auth-supernode-private-key`) and
    its public key in OpenSSH format for `flwr supernode register`; both must be on a NIST curve.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-defense throwaway CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))

    pem = serialization.Encoding.PEM
    if keep_ca_key:
        _write(folder / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), private=True)
    node_keys = []
    for i in range(supernodes):
        key = ec.generate_private_key(ec.SECP384R1())
        path = _write(folder / f"supernode-{i}", key.private_bytes(
            pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), private=True)
        _write(folder / f"supernode-{i}.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
        node_keys.append(path)
    return Material(
        ca_cert=_write(folder / "ca.crt", ca_cert.public_bytes(pem)),
        server_cert=_write(folder / "server.crt", server_cert.public_bytes(pem)),
        server_key=_write(folder / "server.key", server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), private=True),
        node_keys=node_keys,
    )


def free_port() -> int:
    """A TCP port nobody listens on now (each SuperNode needs its own Runtime API port, too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ppid_and_start(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) from /proc, or None if the process is gone (or a zombie, already dead); the start
    time tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


@dataclass
class Processes:
    """Every process this deployment started, and every descendant seen while they ran.

    Flower's SuperLink and SuperNodes start `flower-superexec` and app processes in sessions of their own
    (`start_new_session`), so killing our process groups is not enough: descendants are recorded as they
    appear (`track`) and stopped by pid, each checked against its start time.
    """

    started: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)  # pid -> start time
    gates: list[Gate] = field(default_factory=list)  # fleet gates served from this process
    home: Path | None = None  # the deployment's FLWR_HOME, which every process it started inherits

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            try:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                        start_new_session=True)
            except OSError as err:
                raise DeployError(f"could not start {name} ({cmd[0]}): {err}") from None
        self.started.append((name, proc, log))
        self.track()
        return proc

    def track(self) -> None:
        """Record the current descendants of the started processes."""
        parents = {p.pid for _, p, _ in self.started if p.poll() is None} | set(self.alive())
        table = {int(d): info for d in os.listdir("/proc") if d.isdigit() and (info := _ppid_and_start(int(d)))}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, start) in table.items():
                if ppid in parents and pid not in parents:
                    parents.add(pid)
                    self.seen.setdefault(pid, start)
                    grew = True
        for _, p, _ in self.started:
            if p.pid in table:
                self.seen.setdefault(p.pid, table[p.pid][1])

    def alive(self) -> list[int]:
        """Pids of recorded processes that still exist (same pid and start time)."""
        return [pid for pid, start in self.seen.items() if (info := _ppid_and_start(pid)) and info[1] == start]

    def check(self) -> None:
        """Fail with the log of the first started process that exited."""
        for name, proc, log in self.started:
            if proc.poll() is not None:
                raise DeployError(f"{name} exited with status {proc.returncode}; log: {log}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM everything recorded (groups and pids), then SIGKILL what is left after `grace_s`; then close the
        gates (the SuperNodes talk through them until they are gone)."""
        try:
            self._stop(grace_s)
            if self.home is not None:  # a descendant born after the last look, now orphaned, still has FLWR_HOME
                stop_home(self.home, grace_s)
        finally:
            for gate in self.gates:
                gate.shutdown()
                gate.server_close()

    def _stop(self, grace_s: float) -> None:
        self.track()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc, _ in reversed(self.started):
                if proc.poll() is None:
                    _signal_group(proc.pid, sig)
            for pid in self.alive():
                _signal(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                for _, proc, _ in self.started:
                    proc.poll()  # reap
                if not self.alive():
                    return
                time.sleep(0.2)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def flwr_env(home: Path) -> dict[str, str]:
    """Environment of every Flower command: a private FLWR_HOME, no telemetry, no update check, no `uv sync`."""
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "FLWR_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}


def write_federation(home: Path, address: str, ca_cert: Path) -> None:
    """The SuperLink connection `flwr` reads from FLWR_HOME/config.toml (pyproject federations are deprecated)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\naddress = "{address}"\n'
        f'root-certificates = "{ca_cert}"\n')


def flwr(args: list[str], what: str, log: Path, env: dict[str, str], timeout_s: float = 120.0) -> str:
    """Run one `flwr` CLI command; its output goes to `log` and is returned; a failure is one DeployError."""
    cmd = [str(BIN / "flwr"), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, timeout=timeout_s, text=True)
    except subprocess.TimeoutExpired as err:
        log.write_text(f"$ {shlex.join(cmd)}\n{err.stdout or ''}{err.stderr or ''}")
        raise DeployError(f"{what} timed out after {timeout_s:.0f} s; log: {log}") from None
    log.write_text(f"$ {shlex.join(cmd)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise DeployError(f"{what} failed (exit status {done.returncode}); log: {log}")
    return done.stdout


def _json_out(stdout: str, what: str, log: Path) -> dict:
    """The JSON object `flwr ... --format json` prints (after any plain lines)."""
    try:
        return json.loads(stdout[stdout.index("{"):])
    except ValueError:
        raise DeployError(f"{what} printed no JSON; log: {log}") from None


def submitted_run_id(stdout: str, log: Path) -> int:
    """The run id `flwr run --format json` printed; its `{"success": false, ...}` (exit status 0) is a DeployError."""
    reply = _json_out(stdout, "flwr run", log)
    if not reply.get("success", True) or "run-id" not in reply:
        raise DeployError(f"flwr run refused the app: {str(reply.get('error-message', reply))[:300]}; log: {log}")
    return int(reply["run-id"])


def run_status(run_id: int, env: dict[str, str], logs: Path) -> str:
    """The run's status as the SuperLink reports it: pending, starting, running, finished:completed, ..."""
    log = logs / "flwr-ls.log"
    listing = flwr(["ls", FEDERATION, "--run-id", str(run_id), "--format", "json"],
                   f"asking the SuperLink for run {run_id}'s status", log, env)
    return str(_json_out(listing, "flwr ls", log)["runs"][0]["status"])


def _wait_listening(port: int, procs: Processes, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    name, _, log = procs.started[-1]
    raise DeployError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s; log: {log}")


def _rounds_done(results: Path) -> int:
    try:
        return len([r for r in json.loads(results.read_text())["rounds"] if r["round"] > 0])
    except (OSError, ValueError, KeyError):
        return 0


def _interrupt(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


@contextmanager
def deployment(work: Path) -> Iterator[Processes]:
    """Processes that are all stopped when the block ends, however it ends (SIGTERM becomes KeyboardInterrupt so
    that the cleanup runs when the script itself is terminated)."""
    procs = Processes()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield procs
    finally:
        procs.stop()
        signal.signal(signal.SIGTERM, previous)
        if left := procs.alive():
            print(f"deploy: could not stop pids {left}; see logs in {work / 'logs'}", file=sys.stderr)


@dataclass(frozen=True)
class Finished:
    """A finished deployed run, while its SuperLink still runs (for checks against the live SuperLink): `port` is
    the fleet gate the SuperNodes use, `control_port` the SuperLink's own, on loopback."""

    results: dict
    port: int
    control_port: int
    material: Material
    env: dict[str, str]
    logs: Path


def start_supernode(procs: Processes, name: str, port: int, ca_cert: Path, key: Path, node_config: str,
                    log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """A SuperNode on this machine, connecting over TLS to the SuperLink on 127.0.0.1:`port`, signing with
    `key`; returns it and the port of its own Runtime API (one per SuperNode, so several can share a machine)."""
    runtime_port = free_port()
    proc = procs.start(name, [
        str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(key), "--node-config", node_config,
        "--host", "127.0.0.1", "--port", str(runtime_port),
    ], log, env)
    return proc, runtime_port


def run_deployment(work: Path, out: Path, supernodes: int, rounds: int, overrides: dict[str, str],
                   procs: Processes, run_timeout_s: float = RUN_TIMEOUT_S) -> Finished:
    """Start the SuperLink (on loopback) and its fleet gate, the SuperNodes (through the gate), register the nodes'
    keys and submit the app (on the SuperLink's own port, as its operator), wait for its results."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    material = make_material(work / "certs", supernodes)
    home = work / "flwr-home"
    env = flwr_env(home)
    procs.home = home
    control = free_port()
    write_federation(home, f"127.0.0.1:{control}", material.ca_cert)

    procs.start("flower-superlink", [
        str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(material.ca_cert),
        "--ssl-certfile", str(material.server_cert), "--ssl-keyfile", str(material.server_key),
        "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(control),
        "--database", str(work / "superlink.db"), "--disable-runtime-dependency-installation",
    ], logs / "superlink.log", env)
    _wait_listening(control, procs)
    gate = Gate(("127.0.0.1", 0), ("127.0.0.1", control), material.server_cert, material.server_key,
                material.ca_cert)
    procs.gates.append(gate)
    serve_in_thread(gate)
    port = gate.port

    for i, key in enumerate(material.node_keys):
        flwr(["supernode", "register", f"{key}.pub", FEDERATION, "--name", f"partition-{i}"],
             f"registering SuperNode {i}'s public key", logs / f"register-{i}.log", env)
    runtime_ports = [start_supernode(procs, f"flower-supernode {i}", port, material.ca_cert, key,
                                     f"partition-id={i} num-partitions={supernodes}", logs / f"supernode-{i}.log",
                                     env)[1]
                     for i, key in enumerate(material.node_keys)]

    run_config = {"num-clients": str(supernodes), "clients-per-round": str(supernodes), "rounds": str(rounds),
                  **overrides, "out-dir": json.dumps(str(out))}
    run_log = logs / "flwr-run.log"
    submitted = flwr(["run", str(ROOT), FEDERATION, "--format", "json",
                      "--run-config", " ".join(f"{k}={v}" for k, v in run_config.items())],
                     "submitting the app with flwr run", run_log, env)
    run_id = submitted_run_id(submitted, run_log)
    for p in runtime_ports:  # they started while `flwr run` built and sent the app
        _wait_listening(p, procs)

    results = await_results(run_id, out, rounds, procs, env, logs, run_timeout_s)
    return Finished(results, port, control, material, env, logs)


def await_results(run_id: int, out: Path, rounds: int, procs: Processes, env: dict[str, str], logs: Path,
                  timeout_s: float) -> dict[str, Any]:
    """The run's results once every round is written and the SuperLink says it completed; a DeployError when a
    process dies, the SuperLink reports the run ended otherwise, or `timeout_s` passes."""
    results = out / "results.json"
    deadline = time.monotonic() + timeout_s
    last_status = time.monotonic()
    while True:
        procs.check()
        procs.track()
        if time.monotonic() > deadline:
            raise DeployError(f"run {run_id} did not finish {rounds} rounds in {timeout_s:.0f} s; logs: {logs}")
        # Ask the SuperLink now and then (to notice a failed run), and every second once the results are written.
        written = _rounds_done(results) >= rounds and (out / "checkpoints" / "final.pt").exists()
        if written or time.monotonic() - last_status > STATUS_EVERY_S:
            last_status = time.monotonic()
            status = run_status(run_id, env, logs)
            if status == "finished:completed" and written:
                break
            if status.startswith("finished"):
                log = logs / "serverapp.log"
                flwr(["log", str(run_id), FEDERATION, "--show"], f"fetching run {run_id}'s log", log, env)
                raise DeployError(f"run {run_id} ended ({status}) after {_rounds_done(results)} of {rounds} "
                                  f"rounds; ServerApp log: {log}")
        time.sleep(0.5 if written else 1.0)
    return dict(json.loads(results.read_text()))


def check_overrides(overrides: dict[str, str]) -> None:
    """The `--set` values as the ServerApp will read them (TOML values), checked before any process starts."""
    values = {}
    for key, value in overrides.items():
        try:
            values[key] = tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            values[key] = value  # a bare word: Flower's run config reads it as a string
    resolve(values)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fl_defense.simulations.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--supernodes", type=int, default=2, help="SuperNodes (= clients, one partition each)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="results folder (default runs/deploy-<time>)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for certificates, keys, FLWR_HOME, the SuperLink database and logs "
                   "(default: a fresh temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override, TOML value (strings quoted: attack='blended'); repeatable")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the CA, server certificate and SuperNode keys to --work/certs")
    p.add_argument("--san", action="append", default=[], metavar="NAME",
                   help="with --prepare-only: a host name or IP of the SuperLink to put in its certificate "
                   "(repeatable; 127.0.0.1 and localhost are always in it, for the SuperLink's own ServerApp runner)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.supernodes < 1 or args.rounds < 1:
        print("deploy: --supernodes and --rounds must be >= 1", file=sys.stderr)
        return 2
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key in {"num-clients", "clients-per-round", "rounds", "out-dir"}:
            print(f"deploy: --set {item!r}: expected KEY=VALUE, not one of num-clients, clients-per-round, "
                  "rounds, out-dir (use --supernodes, --rounds, --out)", file=sys.stderr)
            return 2
        overrides[key] = value
    try:
        check_overrides(overrides)
    except ConfigError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 2
    work = (args.work or Path(tempfile.mkdtemp(prefix="fl-defense-deploy-"))).resolve()
    if args.prepare_only:
        sans = DEFAULT_SANS + tuple(n for n in args.san if n not in DEFAULT_SANS)
        m = make_material(work / "certs", args.supernodes, sans, keep_ca_key=True)
        print(f"CA {m.ca_cert}; server certificate {m.server_cert} and key {m.server_key}; SuperNode keys "
              + ", ".join(str(k) for k in m.node_keys) + " (public keys: the same names + .pub)")
        return 0
    out = (args.out or ROOT / "runs" / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    print(f"deploy: {args.supernodes} SuperNodes, {args.rounds} rounds; work folder {work}; results {out}",
          flush=True)
    try:
        with deployment(work) as procs:
            results = run_deployment(work, out, args.supernodes, args.rounds, overrides, procs).results
    except DeployError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deploy: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work / "certs", ignore_errors=True)  # this run's keys: useless once its processes stopped
    last = results["rounds"][-1]
    print(f"deploy: run finished: round {last['round']} BA {last['ba']:.4f} ASR {last['asr']:.4f}; "
          f"results {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
