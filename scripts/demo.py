"""`make demo`: a throwaway TLS cluster, a local dev issuer, one token login that
works and one that is refused.  Everything is removed at the end."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from pgcluster import Cluster, server_major

# the venv's pg-oauth: with the development package (devtools/), for the dev issuer
PG_OAUTH = [str(Path(sys.executable).parent / "pg-oauth")]
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


def masked(text: str) -> str:
    """Tokens are secrets, on a terminal too: show their first characters only."""
    return JWT.sub(lambda m: m.group(0)[:20] + "…", text)


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    shown = " ".join(shlex.quote(c) if not c.startswith("eyJ") else "$TOKEN" for c in cmd)
    print(f"$ {shown}", flush=True)
    out = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, check=False)
    text = masked((out.stdout + out.stderr).strip())
    if text:
        print("  " + text.replace("\n", "\n  "), flush=True)
    if check and out.returncode != 0:
        raise SystemExit(f"demo step failed: {shown}")
    return out.stdout.strip()


def main() -> int:
    keydir = tempfile.mkdtemp(prefix="pg_oauth-demo-issuer-")
    cluster = Cluster()
    issuer_proc = None
    try:
        step("1. A local development OIDC issuer on 127.0.0.1 (discovery + JWKS)")
        issuer_proc = subprocess.Popen(
            [*PG_OAUTH, "dev-issuer", "--dir", keydir, "--port", "0"],
            stdout=subprocess.PIPE, text=True)
        issuer_url = issuer_proc.stdout.readline().strip()
        print(f"  issuer: {issuer_url}")
        probe = ("import json,urllib.request;"
                 f"d=json.load(urllib.request.urlopen('{issuer_url}/.well-known/openid-configuration'));"
                 "print('discovery:', d['issuer'], d['jwks_uri'])")
        show(["python3", "-c", probe])

        step(f"2. A throwaway PostgreSQL {server_major()} cluster with TLS and pg_oauth preloaded")
        cluster.init().start()
        print(f"  data directory {cluster.data}, port {cluster.port}, runs as an unprivileged user")
        print("  postgresql.conf: shared_preload_libraries = 'pg_oauth', ssl = on")
        print("  pg_hba.conf:     host all postgres 127.0.0.1/32 scram-sha-256   # break-glass admin")
        print("                   hostssl all all 127.0.0.1/32 trust           # token logins")

        step("3. The DBA's SQL: the extension, one issuer, one role mapping")
        setup = f"""
            CREATE ROLE alice LOGIN;
            CREATE EXTENSION pg_oauth CASCADE;
            INSERT INTO oauth.issuers (issuer, audiences, allow_loopback_http)
                 VALUES ('{issuer_url}', '{{demo-db}}', true);  -- http on 127.0.0.1
            INSERT INTO oauth.role_map (issuer, claim, pattern, role)
                 VALUES ('{issuer_url}', 'email', '([a-z]+)@example\\.com', '\\1');
        """
        print("  " + "\n  ".join(line.strip() for line in setup.strip().splitlines()))
        cluster.sql(setup)
        cluster.wait_for_workers()

        step("4. A valid token for alice@example.com logs in as alice")
        token = show([*PG_OAUTH, "mint", "--dir", keydir, "--sub", "user-1234",
                      "--aud", "demo-db", "--claim", "email=alice@example.com",
                      "--lifetime", "300"])
        print(f"  token: {token[:24]}... ({len(token)} bytes)")
        query = ("SELECT current_user, oauth.claim('email') AS email, "
                 "oauth.claim('sub') AS subject")
        out = show(["psql", "-X", cluster.token_dsn("alice"), "-c", query],
                   env={"PGPASSWORD": token})
        if "alice@example.com" not in out:
            raise SystemExit("demo: the valid token did not log in")

        step("5. An expired token is refused, with its reason")
        expired = show([*PG_OAUTH, "mint", "--dir", keydir, "--sub", "user-1234",
                        "--aud", "demo-db", "--claim", "email=alice@example.com", "--expired"])
        res = subprocess.run(["psql", "-X", cluster.token_dsn("alice"), "-c", "SELECT 1"],
                             env={**os.environ, "PGPASSWORD": expired},
                             capture_output=True, text=True, check=False)
        print("$ PGPASSWORD=$EXPIRED psql ...")
        print("  " + res.stderr.strip().replace("\n", "\n  "))
        if res.returncode == 0 or "reason=expired" not in res.stderr:
            raise SystemExit("demo: the expired token was not refused as expected")

        step("6. What the server log says (the token itself is never logged)")
        for line in cluster.log_text().splitlines():
            if "pg_oauth" in line or "JWT authentication" in line or "reason=" in line:
                print("  " + line)
        print("\nDemo finished: one token login admitted, one refused. Cleaning up.")
        return 0
    finally:
        if issuer_proc:
            issuer_proc.terminate()
        cluster.destroy()
        shutil.rmtree(keydir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
