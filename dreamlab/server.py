"""The team's MLflow tracking server: PostgreSQL for runs, artifacts served by the server,
MLflow's basic-auth app so that nobody without a password reads or writes runs.

    make server                       # or: python -m dreamlab.server [--dir DIR] [--host H] [--port P]

- Runs go to `DATABASE_URL` (a PostgreSQL URL, e.g. postgresql://user:pw@db:5432/mlflow)
  when it is set; otherwise to a PostgreSQL cluster created under DIR/pgdata (default
  outputs/server) on first start, reached through a Unix socket only, and stopped with the
  server.
- Artifacts are stored under DIR/artifacts and served by the server (clients upload and
  download through it: `mlflow-artifacts:/`), so clients need no shared disk.
- The admin account is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD when set, else
  `admin` with a generated password written to DIR/credentials (mode 600). Users and
  permissions: MLflow's auth REST API or `mlflow.server.get_app_client("basic-auth", ...)`.
- It binds 127.0.0.1 unless --host (or HOST) says otherwise; port 5000 unless --port / PORT.

Clients (dreamlab jobs on any launcher, compare, reproduce):

    export MLFLOW_TRACKING_URI=http://HOST:PORT MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=...
    python -m dreamlab -m +sweep=inception_tour hydra/launcher=parallel

Ctrl-C (or SIGTERM) stops the MLflow server and the PostgreSQL cluster this command started,
nothing else. Extra arguments after `--` go to `mlflow server` (e.g. -- --allowed-hosts ...).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .errors import DreamlabError

AUTH_INI = """\
[mlflow]
# Signed-in users may read and log to every experiment (a team's shared store); only the
# admin manages users. Requests without a valid password get 401 whatever this says.
default_permission = EDIT
database_uri = sqlite:///{auth_db}
admin_username = {user}
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def _pg_bin(name: str) -> str:
    """Debian keeps the server programs out of PATH, under /usr/lib/postgresql/VERSION/bin."""
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).is_file():
            return str(root / name)
    found = shutil.which(name)
    if found is None:
        raise DreamlabError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (or set "
                            f"DATABASE_URL to an existing PostgreSQL database)")
    return found


class Postgres:
    """A private cluster in `directory`, on a Unix socket there, no TCP port. initdb refuses
    to run as root, so as root it runs as the `postgres` user that Debian's package creates."""

    def __init__(self, directory: Path):
        self.dir = directory.resolve()
        self.data = self.dir / "pgdata"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.started = False

    def _run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.as_user + list(args), capture_output=True, text=True, timeout=timeout)

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.dir, "postgres")
            if self._run("test", "-w", str(self.dir)).returncode != 0:
                raise DreamlabError(f"as root, PostgreSQL runs as the postgres user, which cannot reach {self.dir} "
                                    f"(a parent folder is closed to it): give --dir a folder it can reach, "
                                    f"or set DATABASE_URL")
        if not (self.data / "PG_VERSION").is_file():
            out = self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "mlflow", "--auth=trust", "-E", "UTF8")
            if out.returncode != 0:
                raise DreamlabError(f"initdb failed in {self.data}: {out.stderr.strip().splitlines()[-1:]}")
        out = self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w",
                        "-t", "60", "-o", f"-c listen_addresses='' -k {self.dir}", "start")
        if out.returncode != 0:
            raise DreamlabError(f"PostgreSQL did not start (log: {self.dir / 'postgres.log'}): "
                                f"{(out.stderr or out.stdout).strip()[-300:]}")
        self.started = True
        exists = self._run(_pg_bin("psql"), "-h", str(self.dir), "-U", "mlflow", "-d", "postgres", "-tAc",
                           "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
        if exists.stdout.strip() != "1":
            made = self._run(_pg_bin("createdb"), "-h", str(self.dir), "-U", "mlflow", "mlflow")
            if made.returncode != 0:
                raise DreamlabError(f"createdb failed: {made.stderr.strip()}")
        return f"postgresql://mlflow@/mlflow?host={self.dir}"

    def stop(self) -> None:
        if self.started:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
            self.started = False


def _credentials(directory: Path) -> tuple[str, str]:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "admin"
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    saved = directory / "credentials"
    if password is None:
        if saved.is_file():
            user, password = saved.read_text().strip().split(":", 1)
        else:
            password = secrets.token_urlsafe(18)
            saved.write_text(f"{user}:{password}\n")
            saved.chmod(0o600)
    if len(password) < 12:
        raise DreamlabError("MLFLOW_TRACKING_PASSWORD must have at least 12 characters (MLflow's rule "
                            "for the admin account), or leave it unset to have one generated")
    return user, password


def _secret_key(directory: Path) -> str:
    """The auth app's CSRF key: kept in DIR/secret_key so restarts keep sessions valid."""
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = directory / "secret_key"
    if not path.is_file():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DreamlabError(f"mlflow server exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise DreamlabError(f"mlflow server did not answer at {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamlab.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("outputs/server"))
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 5000))
    parser.add_argument("mlflow_args", nargs="*", help="after --: more options of mlflow server")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    postgres = None
    server = None

    def stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        database = os.environ.get("DATABASE_URL")
        if not database:
            postgres = Postgres(directory)
            database = postgres.start()
        user, password = _credentials(directory)
        ini = directory / "basic_auth.ini"
        ini.write_text(AUTH_INI.format(auth_db=directory / "basic_auth.db", user=user, password=password))
        ini.chmod(0o600)
        (directory / "artifacts").mkdir(exist_ok=True)
        url = f"http://{args.host}:{args.port}"
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret_key(directory)}
        # The server's own client settings must not leak into it.
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database,
             "--artifacts-destination", str(directory / "artifacts"), "--serve-artifacts",
             "--app-name", "basic-auth", "--host", args.host, "--port", str(args.port), *args.mlflow_args],
            env=env)
        _wait_healthy(url, server, 180)
        shown = database.split("@")[-1] if "@" in database else database
        print(f"dreamlab: MLflow server on {url} (runs: {shown}; artifacts: {directory / 'artifacts'})\n"
              f"  clients: export MLFLOW_TRACKING_URI={url} MLFLOW_TRACKING_USERNAME={user} "
              f"MLFLOW_TRACKING_PASSWORD=<{'from ' + str(directory / 'credentials') if not os.environ.get('MLFLOW_TRACKING_PASSWORD') else 'yours'}>\n"
              f"  Ctrl-C stops it", flush=True)
        server.wait()
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    except DreamlabError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
