"""
A real rsyslogd on loopback, for tests of anything that speaks syslog.

```python
certificates = make_certificates(tmp_path / "pki")
with RsyslogServer(tmp_path / "rsyslog", certificates) as server:
    send_to("127.0.0.1", server.tcp_port)
    [message] = server.wait_for(lambda m: m.msgid == "audit_package")
    assert message.input == "tcp"
```

Debian's rsyslogd (packages ``rsyslog`` and ``rsyslog-gnutls``) runs in the
foreground with a configuration of its own in a temporary folder: no system
sockets (no imuxsock, no imklog), one UDP listener (imudp), one plain TCP
listener and one TLS listener (both imtcp, which detects octet-counted framing
by itself; TLS through the gtls driver with a server certificate signed by a
test CA). Every message received on those listeners is written as one JSON
object per line, with the raw message as received and the fields rsyslog
parsed from it.

Call :func:`require_rsyslogd` first: without rsyslogd the tests are skipped,
visibly, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
RSYSLOGD = "/usr/sbin/rsyslogd"
GTLS_DRIVER = "lmnsd_gtls.so"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Messages from this app name only tell the fixture that the UDP listener is
# up; they go to a file of their own.
_READY_APP_NAME = "rsyslog-fixture"
_START_TIMEOUT_SECONDS = 10.0


def require_rsyslogd() -> str:
    """The path of rsyslogd with TLS support, or skip (fail under CI=true)."""
    missing = []
    if not Path(RSYSLOGD).is_file():
        missing.append(f"{RSYSLOGD} (apt-get install rsyslog)")
    elif not _has_gtls_driver():
        missing.append(f"rsyslog's {GTLS_DRIVER} (apt-get install rsyslog-gnutls)")
    if shutil.which("openssl") is None:
        missing.append("openssl (apt-get install openssl)")
    if missing:
        message = "syslog tests need " + " and ".join(missing)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return RSYSLOGD


def _has_gtls_driver() -> bool:
    roots = [Path("/usr/lib/rsyslog"), *Path("/usr/lib").glob("*-linux-gnu*/rsyslog")]
    return any((root / GTLS_DRIVER).is_file() for root in roots)


@dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate for 127.0.0.1 and localhost, and a stranger CA."""

    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    #: A CA that signed nothing the server presents.
    other_ca_certificate: Path


def make_certificates(directory: Path) -> Certificates:
    """Generate short-lived EC keys and certificates with the openssl command."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*arguments: str | Path) -> None:
        subprocess.run(
            ["openssl", *map(str, arguments)],
            check=True,
            capture_output=True,
            cwd=directory,
            timeout=30,
        )

    for name in ("ca", "other-ca"):
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=cavra test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext",
        "-out", "server.pem",
    )  # fmt: skip
    return Certificates(
        ca_certificate=directory / "ca.pem",
        server_certificate=directory / "server.pem",
        server_key=directory / "server.key",
        other_ca_certificate=directory / "other-ca.pem",
    )


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as rsyslog received and parsed it."""

    #: The listener: "udp", "tcp" or "tls".
    input: str
    pri: int
    protocol_version: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    #: The MSG part as rsyslog parsed it (a byte order mark is kept).
    msg: str
    #: The message as received, framing removed.
    raw: str


class RsyslogServer:
    """
    rsyslogd listening on free loopback ports, writing what it receives to a file.

    Use it as a context manager; leaving stops rsyslogd (SIGTERM, then SIGKILL
    after five seconds).
    """

    def __init__(self, directory: Path, certificates: Certificates) -> None:
        self.directory = directory
        self.certificates = certificates
        self.udp_port = _free_port(socket.SOCK_DGRAM)
        self.tcp_port = _free_port(socket.SOCK_STREAM)
        self.tls_port = _free_port(socket.SOCK_STREAM)
        self.output = directory / "messages.jsonl"
        self._ready_file = directory / "ready.log"
        self._log_file = directory / "rsyslogd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RsyslogServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration, start rsyslogd and wait for every listener."""
        rsyslogd = require_rsyslogd()
        work = self.directory / "work"
        work.mkdir(parents=True, exist_ok=True)
        config = self.directory / "rsyslog.conf"
        config.write_text(self._configuration(work))
        with self._log_file.open("wb") as log_output:
            self._process = subprocess.Popen(
                [rsyslogd, "-n", "-f", str(config), "-i", str(work / "rsyslogd.pid")],
                stdin=subprocess.DEVNULL,
                stdout=log_output,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop rsyslogd; harmless if it was never started or already stopped."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def messages(self) -> list[ReceivedMessage]:
        """Every message written so far, in the order rsyslog wrote them."""
        if not self.output.exists():
            return []
        received = []
        for line in self.output.read_bytes().decode("utf-8").splitlines():
            # rsyslog writes a line in one go, but a read may catch it halfway.
            try:
                fields = json.loads(line)
            except json.JSONDecodeError:
                continue
            received.append(ReceivedMessage(**{**fields, "pri": int(fields["pri"])}))
        return received

    def wait_for(
        self,
        predicate: Callable[[ReceivedMessage], bool],
        *,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[ReceivedMessage]:
        """
        Wait until ``count`` written messages match ``predicate``, and return them.

        Fails the test, with rsyslogd's own log, when they do not all arrive
        within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [message for message in self.messages() if predicate(message)]
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if len(found) < count:
            pytest.fail(
                f"rsyslog wrote {len(found)} of {count} expected messages within "
                f"{timeout:g} s; its log:\n{self.log_text()}"
            )
        return found

    def log_text(self) -> str:
        """What rsyslogd printed about itself (errors and warnings)."""
        if not self._log_file.exists():
            return ""
        return self._log_file.read_text(errors="replace")

    def _configuration(self, work: Path) -> str:
        fields = (
            ("input", "inputname"),
            ("pri", "pri"),
            ("protocol_version", "protocol-version"),
            ("timestamp", "timereported"),
            ("hostname", "hostname"),
            ("app_name", "app-name"),
            ("procid", "procid"),
            ("msgid", "msgid"),
            ("structured_data", "structured-data"),
            ("msg", "msg"),
            ("raw", "rawmsg"),
        )
        properties = "\n".join(
            f'  property(outname="{outname}" name="{name}" format="jsonf"'
            + (' dateFormat="rfc3339"' if name == "timereported" else "")
            + ")"
            for outname, name in fields
        )
        return f"""
global(
  workDirectory="{work}"
  maxMessageSize="256k"
  defaultNetstreamDriverCAFile="{self.certificates.ca_certificate}"
  defaultNetstreamDriverCertFile="{self.certificates.server_certificate}"
  defaultNetstreamDriverKeyFile="{self.certificates.server_key}"
)
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="{LOOPBACK}" port="{self.udp_port}" name="udp")
input(type="imtcp" address="{LOOPBACK}" port="{self.tcp_port}" name="tcp")
input(type="imtcp" address="{LOOPBACK}" port="{self.tls_port}" name="tls"
      streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="anon")

template(name="capture" type="list" option.jsonf="on") {{
{properties}
}}

if $app-name == "{_READY_APP_NAME}" then {{
  action(type="omfile" file="{self._ready_file}")
  stop
}}
if $inputname == ["udp", "tcp", "tls"] then {{
  action(type="omfile" file="{self.output}" template="capture")
}}
"""

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        pending = {self.tcp_port, self.tls_port}
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"rsyslogd exited with {self._process.returncode}:\n"
                    f"{self.log_text()}"
                )
            for port in list(pending):
                with socket.socket() as probe:
                    probe.settimeout(0.2)
                    if probe.connect_ex((LOOPBACK, port)) == 0:
                        pending.discard(port)
            # UDP has no handshake: the listener is up once a marker arrives.
            if not pending and self._udp_marker_arrived():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"rsyslogd did not listen within {_START_TIMEOUT_SECONDS:g} s:\n"
                    f"{self.log_text()}"
                )
            time.sleep(0.05)

    def _udp_marker_arrived(self) -> bool:
        if self._ready_file.exists() and self._ready_file.stat().st_size:
            return True
        marker = f"<134>1 - - {_READY_APP_NAME} - ready - listening".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
            datagram.sendto(marker, (LOOPBACK, self.udp_port))
        return False


def _free_port(kind: socket.SocketKind) -> int:
    # The port is free now; another process could take it before rsyslogd
    # binds it, which on a test machine is rare enough to accept.
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]
