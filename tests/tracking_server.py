"""Test set-up: a throwaway PostgreSQL server and an ``mlflow server`` in front of it, both on 127.0.0.1.

PostgreSQL comes from Debian's packages (``apt-get install postgresql``; ``.ci/run`` installs it); its
binaries live in ``/usr/lib/postgresql/<major>/bin``. A missing install is an error, not a skip: CI has
it, so a missing server means a broken CI image. PostgreSQL refuses to run as root, so under root the
cluster is created and run as the ``postgres`` system user (``runuser``) in a fresh, world-traversable
temporary folder. The MLflow server proxies artifacts (``--serve-artifacts``) to an S3 bucket, here the
moto server of the test session. Every wait is bounded; a failure carries the server's log.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.runtime.ray_cluster import free_port

PG_USER = "postgres"  # system user made by Debian's package, and the database superuser we create
LOGIN_USER = "align"  # the password-protected role of ``start_postgres(password=...)``
START_TIMEOUT_S = 60


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as err:
        return f"<no log: {err}>"


def postgres_bin_dir() -> Path:
    """Debian's newest PostgreSQL binaries, or a RuntimeError saying how to install them."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        try:
            major = float(bin_dir.parent.name)
        except ValueError:
            continue
        if (bin_dir / "pg_ctl").exists():
            found.append((major, bin_dir))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "run `apt-get install postgresql` (.ci/run does this on CI)"
        )
    return max(found)[1]


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only, trust auth, database ``mlflow``."""

    def __init__(self, bin_dir: Path, root: Path, port: int, as_postgres: bool, password: str | None = None):
        self.bin_dir, self.root, self.port, self.as_postgres = bin_dir, root, port, as_postgres
        self.password = password
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.log = root / "postgres.log"
        self.uri = f"postgresql://{PG_USER}@127.0.0.1:{port}/mlflow"  # libpq / psycopg2.connect
        # For SQLAlchemy (MLflow's --backend-store-uri): SQLAlchemy 2.1 maps a bare postgresql:// to
        # psycopg 3, which we do not install; name the psycopg2 driver explicitly.
        self.sqlalchemy_uri = f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/mlflow"
        # With a password: a login role that owns the database and must give it over TCP (scram-sha-256).
        self.login_uri = f"postgresql+psycopg2://{LOGIN_USER}:{password}@127.0.0.1:{port}/mlflow" if password else ""

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", PG_USER, "--", *command]
        try:
            return subprocess.run(
                command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=True,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            )
        except subprocess.CalledProcessError as err:
            raise RuntimeError(
                f"{' '.join(command)} failed ({err.returncode}):\n{err.stdout}{err.stderr}\n"
                f"--- {self.log} ---\n{_tail(self.log)}"
            ) from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(command)} did not finish in {timeout:.0f} s\n{_tail(self.log)}") from None

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", PG_USER, "-E", "UTF8",
                  "--locale=C", "--no-sync", timeout=60)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",  # a throwaway cluster: speed over durability
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# align tests\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", timeout=45)
        try:
            self._create_database("mlflow")
            if self.password:
                self._require_password()
        except Exception:
            self.stop()
            raise
        return self

    def _require_password(self) -> None:
        """Role ``LOGIN_USER`` with ``self.password``, owner of ``mlflow``; TCP logins other than the
        set-up's own superuser need their password from now on."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE ROLE "{LOGIN_USER}" LOGIN PASSWORD %s', (self.password,))
                cursor.execute(f'ALTER DATABASE "mlflow" OWNER TO "{LOGIN_USER}"')
        finally:
            conn.close()
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PG_USER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self._run("pg_ctl", "reload", "-D", str(self.data), timeout=30)

    def _create_database(self, name: str) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres", connect_timeout=5
                )
                break
            except psycopg2.OperationalError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on 127.0.0.1:{self.port} refused connections: {err}\n{_tail(self.log)}"
                    ) from None
                time.sleep(0.2)
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self) -> None:
        if not self.root.exists():
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", timeout=45)
        except RuntimeError:
            self._kill_postmaster()
            raise
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        """Last resort when ``pg_ctl stop`` fails: the postmaster we started, by the pid it recorded."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster and its children
        except (OSError, ValueError, IndexError):
            pass

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_postgres(workdir: Path | None = None, password: str | None = None) -> PostgresServer:
    """Start a fresh PostgreSQL cluster; ``.uri`` is ``postgresql://postgres@127.0.0.1:<port>/mlflow``
    (``.sqlalchemy_uri`` the same with ``postgresql+psycopg2://``, for MLflow). With ``password``, the
    database belongs to the role ``align`` that logs in with it: ``.login_uri`` is
    ``postgresql+psycopg2://align:<password>@127.0.0.1:<port>/mlflow``.

    ``workdir`` is accepted for symmetry with the other helpers but not used for the cluster: pytest's
    temporary folders may be mode 0700 under root, which the ``postgres`` user cannot enter, so the
    cluster lives in its own ``tempfile.mkdtemp()`` folder (removed by ``stop``).
    """
    del workdir
    bin_dir = postgres_bin_dir()
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="align-pg-"))
    try:
        if as_postgres:
            try:
                account = pwd.getpwnam(PG_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, PostgreSQL needs the {PG_USER!r} system user, which Debian's "
                    "`apt-get install postgresql` creates"
                ) from None
            for parent in root.parents:  # the postgres user must be able to walk down to the folder
                if not os.stat(parent).st_mode & 0o001:
                    raise RuntimeError(f"{parent} is not world-traversable; set TMPDIR to a folder that is")
            root.chmod(0o755)
            for sub in ("sock",):
                (root / sub).mkdir()
            for path in (root, root / "sock"):
                os.chown(path, account.pw_uid, account.pw_gid)
        else:
            (root / "sock").mkdir()
        server = PostgresServer(bin_dir, root, free_port(), as_postgres, password)
        return server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


class MlflowServer:
    """``mlflow server`` as a child process in its own process group (uvicorn runs under it)."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path, log_file):
        self.process, self.port, self.log, self._log_file = process, port, log, log_file
        self.uri = f"http://127.0.0.1:{port}"

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        # The CLI may exit before its uvicorn workers: sweep what is left of the group we created.
        self._signal(signal.SIGKILL)
        self._log_file.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the group made by start_new_session: only our processes
        except ProcessLookupError:
            pass

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_mlflow_server(
    backend_uri: str, artifacts_destination: str, env: dict[str, str], log_dir: Path | None = None,
    timeout: float = 90,
) -> MlflowServer:
    """Start ``mlflow server`` on a free 127.0.0.1 port, proxying artifacts to ``artifacts_destination``.

    ``env`` is added to this process' environment: the S3 endpoint (``MLFLOW_S3_ENDPOINT_URL``) and
    credentials the server's S3 client should use. Waits for ``GET /health`` at most ``timeout`` s.
    """
    import httpx

    mlflow_bin = Path(sys.executable).parent / "mlflow"
    port = free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="align-mlflow-"))
    log = log_dir / f"mlflow-server-{port}.log"
    command = [
        str(mlflow_bin), "server",
        "--backend-store-uri", backend_uri,
        "--serve-artifacts", "--artifacts-destination", artifacts_destination,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    server_env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # No background job runner (it would start a separate consumer process the tests do not need).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **env,
    }
    log_file = log.open("wb")
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=server_env, start_new_session=True, cwd=log_dir
    )
    server = MlflowServer(process, port, log, log_file)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{server.uri}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            exited = process.poll() is not None
            reason = f"exited with {process.returncode}" if exited else f"not healthy within {timeout:.0f} s"
            server.stop()
            raise RuntimeError(f"mlflow server {reason}\n--- {log} ---\n{_tail(log)}")
        time.sleep(0.3)
