"""A secret and mutual TLS: what to give nodes and clients on a network you do not trust.

    python examples/secure_cluster.py

The secret authenticates both sides (it never travels: each proves it knows it) and every message after
that; TLS adds privacy. Both sides present a certificate and verify the other's against ``cafile``.
This example makes a throw-away CA and one certificate for both sides; make yours with your own CA (see
docs/security.md). A client with the wrong secret is refused, and says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _local import example_nodes

import dispy
from dispy_core.testing.certs import make_ca_and_leaf


def checksum(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dispy-tls-") as tmp:
        cafile, certfile, keyfile = (str(path) for path in make_ca_and_leaf(Path(tmp), "dispy-example"))
        tls_node = ["--certfile", certfile, "--keyfile", keyfile, "--cafile", cafile]
        with example_nodes(1, tls_node) as where:
            tls = dict(certfile=certfile, keyfile=keyfile, cafile=cafile)
            with dispy.JobCluster(checksum, nodes=where.nodes, secret=where.secret, **tls) as cluster:
                job = cluster.submit(b"private data, encrypted on the wire")
                print(f"over TLS with the right secret: {job()}")
                assert job.status == dispy.DispyJob.Finished

            with dispy.JobCluster(checksum, nodes=where.nodes, secret="a wrong secret", first_node_timeout=10,
                                  **tls) as intruder:
                job = intruder.submit(b"anything")
                job()
                failed = intruder.status()["failed_nodes"]
            print(f"with a wrong secret the job ends Abandoned ({job.status == job.Abandoned}); the node's reason: "
                  f"{next(iter(failed.values()))}")
            assert job.status == dispy.DispyJob.Abandoned and "authentication" in str(failed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
