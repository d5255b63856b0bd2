"""A PostgreSQL database of its own for one benchmark run, migrated by `refit migrate`, and the
CPU a process of the run has used.

The quality, storage and upstream-cost benchmarks each run against a fresh database next to the
admin URL's, so that runs never see each other's rows, and drop it when done.
"""

import os
import subprocess
import uuid
from pathlib import Path

import psycopg


class Database:
    def __init__(self, admin_url, prefix):
        self.admin_url = admin_url
        self.tag = uuid.uuid4().hex[:10]
        self.name = f"{prefix}_{self.tag}"
        self.url = f"{admin_url.rsplit('/', 1)[0]}/{self.name}"

    def create(self, binary, env=None):
        """Creates the database and runs `refit migrate` on it."""
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {self.name}")
        subprocess.run([binary, "migrate"], env=dict(env or os.environ, DATABASE_URL=self.url),
                       check=True, stdout=subprocess.DEVNULL)

    def drop(self):
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def cpu_seconds(pid):
    """User + system CPU a process has used so far, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
